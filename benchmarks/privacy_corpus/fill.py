"""Fill a template's ``{{field:arg}}`` slots with values from a :class:`~.values.Gen`.

A slot is ``{{kind}}``, ``{{kind:arg}}`` or ``{{kind:arg#n}}`` (no whitespace after the
braces, so Jinja's ``{{ x }}`` in a decoy stays literal). The same slot text gets the same
value everywhere in one row; ``#2`` asks for a second, independent value of the same kind.
Values derived from a person (``user``, ``email``, ``oemail``, ``mrz``, ``basic``) use the
row's ``name`` slot of the same language, so "Anna Meier" and "a.meier@..." agree.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from benchmarks.privacy_corpus.values import MAIL_HOSTS, Gen

# Slots whose value is personal data or a secret (``pid``: a patient or record number,
# drawn like ``num``): recorded in the row's ``values`` so a check of what left the device
# (``eval_privacy --through-agent --redact``) can look for them.
SENSITIVE = frozenset(
    (
        *("name", "first", "last", "user", "email", "oemail", "addr", "dob", "phone", "uphone"),
        *("bsn", "steuer", "dni", "nie", "nir", "nino", "ssn", "iban", "card", "pass", "mrz"),
        *("pw", "pin", "key", "aws_secret", "token", "hex", "jwt", "pem", "jwk", "basic", "pid"),
    )
)

SLOT = re.compile(r"\{\{([a-z_0-9]+)(?::([^{}#\s]*))?(?:#(\d))?\}\}")


def _simple(g: Gen) -> dict[str, Callable[[str], str]]:
    return {
        "first": lambda a: g.first(a or "en"),
        "last": lambda a: g.last(a or "en"),
        "addr": lambda a: g.address(a),
        "city": lambda a: g.rng.choice(g.pool.cities[a])[0],
        "dob": lambda a: g.date(g.birth_date(), a or "en"),
        "date": lambda a: g.date(g.recent_date(), a or "en"),
        "phone": lambda a: g.phone(a, valid=True),
        "uphone": lambda a: g.phone(a, valid=False),
        "bsn": lambda a: g.bsn(a != "bad"),
        "steuer": lambda a: g.steuer_id(a != "bad", spaced=a == "s"),
        "dni": lambda a: g.dni(a != "bad"),
        "nie": lambda a: g.nie(a != "bad"),
        "nir": lambda a: g.nir(a != "bad", spaced=a != "c"),
        "nino": lambda a: g.nino(spaced=a == "s"),
        "ssn": lambda a: g.ssn(a != "bad"),
        "iban": lambda a: g.iban(a.split("-")[0], "bad" not in a, "c" not in a.split("-")[1:]),
        "card": lambda a: g.card(a != "bad"),
        "pass": lambda a: g.passport_number(a),
        "pw": lambda a: g.password(),
        "pin": lambda a: g.pin(),
        "key": lambda a: g.key(a),
        "aws_secret": lambda a: g.aws_secret(),
        "token": lambda a: g.token(int(a or 32)),
        "hex": lambda a: g.hex(int(a or 40)),
        "pem": lambda a: g.pem(a.replace("_", " ") if a else None),
        "jwk": lambda a: g.jwk(int(a) if a else None),
        "jwt": lambda a: g.jwt(f"user-{g.num(1000, 99999)}"),
        "uuid": lambda a: g.uuid(),
        "semver": lambda a: g.semver(),
        "part": lambda a: g.part_number(),
        "ts": lambda a: g.timestamp(),
        "doc_ip": lambda a: g.doc_ip(),
        "priv_ip": lambda a: g.private_ip(),
        "num": lambda a: str(g.num(*(int(x) for x in a.split("-")))),
        "pid": lambda a: str(g.num(*(int(x) for x in a.split("-")))),
        "pick": lambda a: g.pick(a.split("|")),
        "pickw": lambda a: g.pick(a.split("|")).replace("_", " "),
    }


def fill(g: Gen, pattern: str) -> str:
    """``pattern`` with every slot replaced (consistently within this row); the sensitive
    values go to ``g.values``."""
    cache: dict[str, str] = {}
    simple = _simple(g)

    def person(lang: str) -> str:
        key = f"name:{lang}"
        if key not in cache:
            cache[key] = g.name(lang)
        return cache[key]

    def user(lang: str) -> str:
        key = f"user:{lang}"
        if key not in cache:
            cache[key] = g.username(person(lang))
        return cache[key]

    def password() -> str:
        if "pw" not in cache:
            cache["pw"] = g.password()
        return cache["pw"]

    derived: dict[str, Callable[[str], str]] = {
        "name": person,
        "user": user,
        "email": lambda a: f"{user(a or 'en')}@{g.pick(MAIL_HOSTS)}",
        "oemail": lambda a: g.obfuscated_email(person(a or "en"), a or None),
        "mrz": lambda a: g.mrz(a.split("-")[0], person(a.split("-")[1])),
        "basic": lambda a: g.basic(user(a or "en"), password()),
        "pw": lambda a: password(),
    }

    def replace(m: re.Match[str]) -> str:
        kind, arg, nth = m.group(1), m.group(2) or "", m.group(3)
        key = m.group(0)
        if key in cache:
            return cache[key]
        if kind in derived and not nth:
            value = derived[kind](arg)
        elif kind in simple:
            value = simple[kind](arg)
        elif kind == "name":
            value = g.name(arg or "en")
        else:
            raise KeyError(f"unknown slot {key}")
        cache[key] = value
        if kind in SENSITIVE and value not in g.values:
            g.values.append(value)
        return value

    return SLOT.sub(replace, pattern)
