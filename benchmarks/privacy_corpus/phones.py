"""Phone numbers that libphonenumber calls possible, valid or not, in national notations.

A random subscriber number is usually *possible* (its length fits the country) but not
*valid* (no operator range holds it). Those are the numbers the issue saw leak: the class
``phone_unallocated`` uses only them; ``phone`` uses numbers libphonenumber calls valid.
Each number is drawn at random and kept only when ``phonenumbers`` parses the written
notation back to the same number with the wanted possible/valid verdict, so the label is
what libphonenumber says about exactly the text in the row.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import phonenumbers


@dataclass(frozen=True)
class Plan:
    """How one country writes its numbers."""

    cc: int
    trunk: str
    lengths: tuple[int, ...]
    leads: str


PLANS: dict[str, Plan] = {
    "DE": Plan(49, "0", (10, 11), "1234568"),
    "FR": Plan(33, "0", (9,), "1234679"),
    "NL": Plan(31, "0", (9,), "1234567"),
    "GB": Plan(44, "0", (10,), "1237"),
    "ES": Plan(34, "", (9,), "6789"),
    "IT": Plan(39, "", (9, 10), "03"),
    "US": Plan(1, "1", (10,), "23456789"),
    "BE": Plan(32, "0", (8, 9), "2345649"),
    "CH": Plan(41, "0", (9,), "2345679"),
    "AT": Plan(43, "0", (10, 11), "1236"),
    "PL": Plan(48, "", (9,), "12345678"),
    "SE": Plan(46, "0", (9,), "1234567"),
    "IE": Plan(353, "0", (9,), "12458"),
    "PT": Plan(351, "", (9,), "29"),
    "AU": Plan(61, "0", (9,), "2378"),
}

NOTATIONS = ("intl", "intl", "e164", "intl00", "intl_trunk", "national", "national", "paren")


def _groups(rng: random.Random, nsn: str) -> list[str]:
    out: list[str] = []
    rest = nsn
    while rest:
        take = len(rest) if len(rest) <= 4 else rng.choice((2, 3, 3, 4))
        if 0 < len(rest) - take < 2:
            take = len(rest) - 2
        out.append(rest[:take])
        rest = rest[take:]
    return out


def write(rng: random.Random, region: str, nsn: str, notation: str) -> str:
    """``nsn`` (national significant number) of ``region`` in ``notation``."""
    plan = PLANS[region]
    sep = rng.choice((" ", " ", "-", ".")) if notation == "national" else " "
    groups = _groups(rng, nsn)
    if region == "FR" and notation in ("national", "intl"):
        groups = [nsn[0]] + [nsn[i : i + 2] for i in range(1, 9, 2)]
    if region == "US" and notation in ("national", "paren"):
        return (
            f"({nsn[:3]}) {nsn[3:6]}-{nsn[6:]}"
            if notation == "paren"
            else f"{nsn[:3]}-{nsn[3:6]}-{nsn[6:]}"
        )
    if notation == "e164":
        return f"+{plan.cc}{nsn}"
    if notation == "intl":
        return f"+{plan.cc} " + " ".join(groups)
    if notation == "intl00":
        return f"00{plan.cc} " + " ".join(groups)
    if notation == "intl_trunk" and plan.trunk == "0":
        return f"+{plan.cc} (0){groups[0]} " + " ".join(groups[1:])
    if notation == "paren" and plan.trunk:
        return f"({plan.trunk}{groups[0]}) " + " ".join(groups[1:])
    if plan.trunk and plan.trunk != "1":
        groups[0] = plan.trunk + groups[0]
    return sep.join(groups)


def phone(rng: random.Random, region: str, valid: bool) -> str:
    """A written phone number of ``region``: possible, and valid or not as asked."""
    plan = PLANS[region]
    for _ in range(20000):
        nsn = rng.choice(plan.leads) + "".join(
            rng.choice("0123456789") for _ in range(rng.choice(plan.lengths) - 1)
        )
        text = write(rng, region, nsn, rng.choice(NOTATIONS))
        try:
            parsed = phonenumbers.parse(text, region)
        except phonenumbers.NumberParseException:
            continue
        if str(parsed.national_number) != nsn.lstrip("0") and region != "IT":
            continue
        if not phonenumbers.is_possible_number(parsed):
            continue
        if phonenumbers.is_valid_number(parsed) == valid:
            return text
    raise RuntimeError(f"no {'valid' if valid else 'unallocated'} number for {region}")
