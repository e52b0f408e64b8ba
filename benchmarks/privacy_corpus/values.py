"""The value generator a template renders with: names and places from its part's pool,
identifiers, secrets, dates and decoy values, all from one seeded ``random.Random``.

Identifiers that carry a check digit are recorded with :meth:`Gen.note` so the corpus test
can validate them with python-stdnum / phonenumbers independently of this code.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid
from collections.abc import Sequence
from typing import TypeVar

from benchmarks.privacy_corpus import ids, phones, secrets_gen
from benchmarks.privacy_corpus.pools import Pool

T = TypeVar("T")

MONTHS = {
    "en": "January February March April May June July August September October November December",
    "de": "Januar Februar März April Mai Juni Juli August September Oktober November Dezember",
    "fr": "janvier février mars avril mai juin juillet août septembre octobre novembre décembre",
    "es": "enero febrero marzo abril mayo junio julio agosto septiembre octubre noviembre "
    "diciembre",
    "nl": "januari februari maart april mei juni juli augustus september oktober november december",
}

MAIL_HOSTS = (
    "gmail.com",
    "posteo.de",
    "web.de",
    "gmx.net",
    "orange.fr",
    "free.fr",
    "hotmail.es",
    "outlook.com",
    "ziggo.nl",
    "kpnmail.nl",
    "yahoo.co.uk",
    "proton.me",
    "icloud.com",
    "t-online.de",
    "laposte.net",
    "telefonica.net",
    "xs4all.nl",
    "btinternet.com",
)

OBFUSCATIONS = (
    ("{u} [at] {h} [dot] {t}", "en"),
    ("{u}(at){h}(dot){t}", "en"),
    ("{u} at {h} dot {t}", "en"),
    ("{u}{{at}}{h}{{dot}}{t}", "en"),
    ("{u} AT {h} DOT {t}", "en"),
    ("{u} [ät] {h} [punkt] {t}", "de"),
    ("{u} (at) {h} (punkt) {t}", "de"),
    ("{u} arobase {h} point {t}", "fr"),
    ("{u} [arobase] {h} [point] {t}", "fr"),
    ("{u} arroba {h} punto {t}", "es"),
    ("{u} (arroba) {h} (punto) {t}", "es"),
    ("{u} apenstaartje {h} punt {t}", "nl"),
    ("{u}@{h} . {t}", "en"),
    ("{u} @ {h} . {t}", "en"),
)


class Gen:
    """Seeded values for one row; ``checks`` collects the identifiers to validate and
    ``values`` every personal or secret value the row's slots were filled with."""

    def __init__(self, rng: random.Random, pool: Pool) -> None:
        self.rng = rng
        self.pool = pool
        self.checks: list[list[str]] = []
        self.values: list[str] = []

    def note(self, kind: str, value: str, *extra: str) -> str:
        """Record an identifier for the corpus test and return it."""
        self.checks.append([kind, value, *extra])
        return value

    def pick(self, options: Sequence[T]) -> T:
        """One of ``options``."""
        return self.rng.choice(options)

    def num(self, low: int, high: int) -> int:
        """A random integer in ``[low, high]``."""
        return self.rng.randint(low, high)

    # --- people and places -------------------------------------------------------------

    def first(self, lang: str = "en") -> str:
        """A first name of the pool's ``lang`` names."""
        return self.rng.choice(self.pool.first[lang])

    def last(self, lang: str = "en") -> str:
        """A last name of the pool's ``lang`` names."""
        return self.rng.choice(self.pool.last[lang])

    def name(self, lang: str = "en") -> str:
        """First and last name."""
        return f"{self.first(lang)} {self.last(lang)}"

    def username(self, name: str) -> str:
        """A login derived from ``name`` (``j.hoffmann``, ``jhoffmann83`` ...)."""
        ascii_name = ids.mrz_name(name).lower().replace("<", " ").split()
        first, last = ascii_name[0], ascii_name[-1]
        style = self.rng.randrange(4)
        if style == 0:
            return f"{first[0]}.{last}"
        if style == 1:
            return f"{first[0]}{last}{self.rng.randint(1, 99)}"
        if style == 2:
            return f"{first}.{last}"
        return f"{first}_{last[:3]}"

    def email(self, name: str) -> str:
        """An address at a real mail provider (never a reserved example domain)."""
        return f"{self.username(name)}@{self.rng.choice(MAIL_HOSTS)}"

    def obfuscated_email(self, name: str, lang: str | None = None) -> str:
        """An address written to dodge scrapers (``anna [at] posteo [dot] de`` ...)."""
        options = [o for o, lg in OBFUSCATIONS if lang is None or lg in (lang, "en")]
        host, tld = self.rng.choice(MAIL_HOSTS).rsplit(".", 1)
        return self.rng.choice(options).format(u=self.username(name), h=host, t=tld)

    def street(self, country: str) -> str:
        """A street name of ``country`` from the pool."""
        return self.rng.choice(self.pool.streets[country])

    def postcode(self, shape: str) -> str:
        """A postcode following ``shape`` (9 = digit, A = letter)."""
        out = []
        for c in shape:
            if c == "9":
                out.append(str(self.rng.randint(0, 9)))
            elif c == "A":
                out.append(self.rng.choice("BCDEGHJKLMNPRSTVWXZ"))
            else:
                out.append(c)
        return "".join(out)

    def address(self, country: str) -> str:
        """A residential address written the way ``country`` writes it."""
        city, shape = self.rng.choice(self.pool.cities[country])
        street, no, code = self.street(country), self.rng.randint(1, 180), self.postcode(shape)
        if country == "NL":
            code = code[:4] + " " + code[4:]
        if country == "FR":
            return f"{no} {street}, {code} {city}"
        if country == "ES":
            floor = self.rng.choice(("1º A", "2º B", "3º izda.", "bajo", "4º dcha."))
            return f"{street}, {no}, {floor}, {code} {city}"
        if country == "IT":
            return f"{street} {no}, {code} {city}"
        if country == "PL":
            return f"{street} {no}/{self.rng.randint(1, 40)}, {code} {city}"
        if country == "PT":
            return f"{street}, {no} {self.rng.choice(('1º Esq.', '2º Dto.', 'R/C'))}, {code} {city}"
        if country == "SE":
            return f"{street} {no}, {code} {city}"
        return f"{street} {no}, {code} {city}"

    # --- dates --------------------------------------------------------------------------

    def birth_date(self) -> dt.date:
        """A date of birth between 1940 and 2006."""
        start = dt.date(1940, 1, 1).toordinal()
        return dt.date.fromordinal(self.rng.randint(start, dt.date(2006, 12, 31).toordinal()))

    def recent_date(self) -> dt.date:
        """A date in 2019-2026 (events, invoices, releases: not birthdays)."""
        start = dt.date(2019, 1, 1).toordinal()
        return dt.date.fromordinal(self.rng.randint(start, dt.date(2026, 12, 31).toordinal()))

    def date(self, d: dt.date, lang: str) -> str:
        """``d`` in one of the usual numeric or written forms of ``lang`` (or ``iso``)."""
        if lang == "iso":
            return d.isoformat()
        month = MONTHS[lang].split()[d.month - 1]
        forms = {
            "en": (
                f"{d.day} {month} {d.year}",
                f"{month} {d.day}, {d.year}",
                d.isoformat(),
                f"{d.month:02d}/{d.day:02d}/{d.year}",
                f"{d.day:02d}/{d.month:02d}/{d.year}",
            ),
            "de": (
                f"{d.day:02d}.{d.month:02d}.{d.year}",
                f"{d.day}. {month} {d.year}",
                f"{d.day}.{d.month}.{d.year}",
            ),
            "fr": (f"{d.day:02d}/{d.month:02d}/{d.year}", f"{d.day} {month} {d.year}"),
            "es": (
                f"{d.day:02d}/{d.month:02d}/{d.year}",
                f"{d.day} de {month} de {d.year}",
                f"{d.day:02d}-{d.month:02d}-{d.year}",
            ),
            "nl": (f"{d.day:02d}-{d.month:02d}-{d.year}", f"{d.day} {month} {d.year}"),
        }
        return self.rng.choice(forms[lang])

    # --- identifiers (noted for the corpus test) ----------------------------------------

    def phone(self, region: str, valid: bool = False) -> str:
        """A phone number of ``region``: by default possible but not valid."""
        kind = "phone_valid" if valid else "phone_possible_not_valid"
        return self.note(kind, phones.phone(self.rng, region, valid), region)

    def bsn(self, valid: bool = True) -> str:
        """A Dutch BSN (11-proof) or, ``valid=False``, one that fails it."""
        return self.note("bsn" if valid else "bsn_invalid", ids.bsn(self.rng, valid))

    def steuer_id(self, valid: bool = True, spaced: bool = False) -> str:
        """A German Steuer-ID (IdNr)."""
        v = self.note("steuer_id" if valid else "steuer_id_invalid", ids.steuer_id(self.rng, valid))
        return f"{v[:2]} {v[2:5]} {v[5:8]} {v[8:]}" if spaced else v

    def dni(self, valid: bool = True) -> str:
        """A Spanish DNI."""
        return self.note("dni" if valid else "dni_invalid", ids.dni(self.rng, valid))

    def nie(self, valid: bool = True) -> str:
        """A Spanish NIE."""
        return self.note("nie" if valid else "nie_invalid", ids.nie(self.rng, valid))

    def nir(self, valid: bool = True, spaced: bool = True) -> str:
        """A French NIR."""
        v = self.note("nir" if valid else "nir_invalid", ids.nir(self.rng, valid))
        return ids.nir_spaced(v) if spaced else v

    def nino(self, spaced: bool = False) -> str:
        """A UK National Insurance number."""
        v = self.note("nino", ids.nino(self.rng))
        return f"{v[:2]} {v[2:4]} {v[4:6]} {v[6:8]} {v[8]}" if spaced else v

    def ssn(self, valid: bool = True) -> str:
        """A US SSN."""
        return self.note("ssn" if valid else "ssn_invalid", ids.ssn(self.rng, valid))

    def iban(self, country: str, valid: bool = True, grouped: bool = True) -> str:
        """An IBAN (valid or with a broken check)."""
        v = ids.iban(self.rng, country, valid, grouped)
        return self.note("iban" if valid else "iban_invalid", v)

    def card(self, valid: bool = True) -> str:
        """A payment card number (Luhn-valid or not)."""
        return self.note("card" if valid else "card_invalid", ids.card(self.rng, valid))

    def passport_number(self, country: str) -> str:
        """A passport number in the national shape of ``country`` (ISO alpha-3)."""
        return ids.passport_number(self.rng, country)

    def mrz(self, country: str, name: str, birth: dt.date | None = None) -> str:
        """Two TD3 MRZ lines for ``name`` with valid check digits (noted)."""
        given, surname = name.split(" ", 1)
        birth = birth or self.birth_date()
        dob = birth.strftime("%y%m%d")
        line1, line2, _ = ids.mrz_td3(self.rng, country, surname, given, dob, self.pick("MF"))
        self.note("mrz", line2)
        return f"{line1}\n{line2}"

    # --- secrets -------------------------------------------------------------------------

    def password(self) -> str:
        """A realistic password."""
        return secrets_gen.password(self.rng)

    def pin(self) -> str:
        """A PIN."""
        return secrets_gen.pin(self.rng)

    def key(self, kind: str) -> str:
        """A cloud/API key of ``kind``."""
        return secrets_gen.cloud_key(self.rng, kind)

    def aws_secret(self) -> str:
        """An AWS secret access key."""
        return secrets_gen.aws_secret(self.rng)

    def token(self, n: int = 32) -> str:
        """A high-entropy token without a vendor prefix."""
        return secrets_gen.opaque_token(self.rng, n)

    def hex(self, n: int = 40) -> str:
        """Random lowercase hex (also the decoy git hash / SHA-256)."""
        return secrets_gen.hex_token(self.rng, n)

    def jwt(self, subject: str) -> str:
        """A JWT."""
        return secrets_gen.jwt(self.rng, subject)

    def pem(self, label: str | None = None) -> str:
        """A PEM / OpenSSH private key block."""
        return secrets_gen.pem(self.rng, label or self.pick(tuple(secrets_gen.PEM_HEADS)))

    def jwk(self, indent: int | None = None) -> str:
        """A private JWK as JSON."""
        return json.dumps(secrets_gen.jwk_private(self.rng), indent=indent)

    def basic(self, user: str, secret: str) -> str:
        """HTTP Basic credentials."""
        return secrets_gen.basic_auth(user, secret)

    # --- decoy values ---------------------------------------------------------------------

    def uuid(self) -> str:
        """A random-looking UUID (version 4 layout)."""
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def semver(self) -> str:
        """A semantic version."""
        base = f"{self.num(0, 14)}.{self.num(0, 40)}.{self.num(0, 30)}"
        return base + self.pick(("", "", "-rc.1", "-beta.2", "+build.417"))

    def part_number(self) -> str:
        """A part / serial number."""
        a = self.rng.choice
        return self.pick(
            (
                f"{self.num(1000, 9999)}-{a('ABCDEFGH')}{self.num(1, 9)}-{self.num(0, 9999):04d}",
                f"SN{self.num(10**9, 10**10 - 1)}",
                f"{a('XYZKQ')}{a('ABCD')}{self.num(10, 99)}-{self.num(1000, 9999)}"
                f"-{a('RTUV')}{self.num(1, 9)}",
            )
        )

    def timestamp(self) -> str:
        """An ISO 8601 timestamp in 2024-2026."""
        d = self.recent_date()
        return f"{d.isoformat()}T{self.num(0, 23):02d}:{self.num(0, 59):02d}:{self.num(0, 59):02d}Z"

    def doc_ip(self) -> str:
        """An address from the documentation ranges (RFC 5737 / RFC 3849)."""
        return self.pick(
            (
                f"192.0.2.{self.num(1, 254)}",
                f"198.51.100.{self.num(1, 254)}",
                f"203.0.113.{self.num(1, 254)}",
                f"2001:db8::{self.num(1, 0xFFFF):x}",
                f"2001:db8:{self.num(1, 0xFFFF):x}::{self.num(1, 0xFF):x}",
            )
        )

    def private_ip(self) -> str:
        """An RFC 1918 address."""
        return self.pick(
            (
                f"10.{self.num(0, 255)}.{self.num(0, 255)}.{self.num(1, 254)}",
                f"192.168.{self.num(0, 255)}.{self.num(1, 254)}",
                f"172.{self.num(16, 31)}.{self.num(0, 255)}.{self.num(1, 254)}",
            )
        )
