"""Identifiers with their check digits computed here (valid) or broken on purpose (decoys).

Every function takes a :class:`random.Random` so the corpus is deterministic. The corpus
test validates the results with python-stdnum (and an independent ICAO 9303 check for MRZ
lines), so a mistake here shows up there rather than as a mislabelled row.
"""

from __future__ import annotations

import random
import string
import unicodedata

DIGITS = string.digits
UPPER = string.ascii_uppercase


def digits(rng: random.Random, n: int, first: str = DIGITS) -> str:
    """``n`` random digits, the first drawn from ``first``."""
    return rng.choice(first) + "".join(rng.choice(DIGITS) for _ in range(n - 1))


# --- Dutch BSN (11-proof) -----------------------------------------------------------------


def bsn_sum(number: str) -> int:
    """The 11-proof sum of a 9-digit BSN (weights 9..2 and -1)."""
    return sum(int(d) * w for d, w in zip(number, (9, 8, 7, 6, 5, 4, 3, 2, -1), strict=True))


def bsn(rng: random.Random, valid: bool = True) -> str:
    """A 9-digit BSN that passes the 11-proof (or, with ``valid=False``, fails it)."""
    while True:
        head = digits(rng, 8, "123456")
        check = sum(int(d) * w for d, w in zip(head, (9, 8, 7, 6, 5, 4, 3, 2), strict=True)) % 11
        if check == 10:
            continue
        if valid:
            return head + str(check)
        return head + str((check + rng.randint(1, 9)) % 10)


# --- German Steuer-ID (IdNr, ISO 7064 mod 11,10) --------------------------------------------


def mod_11_10_check(number: str) -> str:
    """ISO 7064 mod 11,10 check digit."""
    check = 5
    for n in number:
        check = (((check or 10) * 2) % 11 + int(n)) % 10
    return str((1 - ((check or 10) * 2) % 11) % 10)


def steuer_id(rng: random.Random, valid: bool = True) -> str:
    """An 11-digit IdNr: one digit twice or thrice in the first ten, check digit last."""
    while True:
        repeat = rng.choice((2, 3))
        pool = rng.sample(DIGITS, 11 - repeat)
        first_ten = pool + [pool[0]] * (repeat - 1)
        rng.shuffle(first_ten)
        head = "".join(first_ten)
        if head[0] == "0":
            continue
        check = mod_11_10_check(head)
        if not valid:
            check = str((int(check) + rng.randint(1, 9)) % 10)
        return head + check


# --- Spanish DNI / NIE ------------------------------------------------------------------------

DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"


def dni(rng: random.Random, valid: bool = True) -> str:
    """A DNI: 8 digits and the mod-23 letter."""
    num = digits(rng, 8, "1234567")
    letter = DNI_LETTERS[int(num) % 23]
    if not valid:
        letter = DNI_LETTERS[(int(num) + rng.randint(1, 22)) % 23]
    return num + letter


def nie(rng: random.Random, valid: bool = True) -> str:
    """An NIE: X/Y/Z, 7 digits and the mod-23 letter."""
    prefix = rng.choice("XYZ")
    num = digits(rng, 7)
    letter = DNI_LETTERS[int(str("XYZ".index(prefix)) + num) % 23]
    if not valid:
        letter = DNI_LETTERS[(DNI_LETTERS.index(letter) + rng.randint(1, 22)) % 23]
    return prefix + num + letter


# --- French NIR -------------------------------------------------------------------------------


def nir(rng: random.Random, valid: bool = True) -> str:
    """A 15-digit NIR (sex, year, month, department, commune, order, key 97 - n mod 97)."""
    dept = f"{rng.choice([d for d in range(1, 96) if d != 20]):02d}"
    body = (
        rng.choice("12")
        + f"{rng.randint(40, 99):02d}"
        + f"{rng.randint(1, 12):02d}"
        + dept
        + f"{rng.randint(1, 900):03d}"
        + f"{rng.randint(1, 999):03d}"
    )
    key = 97 - int(body) % 97
    if not valid:
        key = (key + rng.randint(1, 50)) % 97 or 1
    return body + f"{key:02d}"


def nir_spaced(number: str) -> str:
    """The usual written form: ``1 84 12 75 108 123 45``."""
    n = number
    return f"{n[0]} {n[1:3]} {n[3:5]} {n[5:7]} {n[7:10]} {n[10:13]} {n[13:]}"


# --- UK NINO and US SSN -----------------------------------------------------------------------

NINO_FIRST = "ABCEGHJKLMNOPRSTWXYZ"
NINO_SECOND = "ABCEGHJKLMNPRSTWXYZ"
NINO_BAD_PREFIXES = {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"}


def nino(rng: random.Random) -> str:
    """A UK National Insurance number with an allocatable prefix (never the example QQ)."""
    while True:
        prefix = rng.choice(NINO_FIRST) + rng.choice(NINO_SECOND)
        if prefix not in NINO_BAD_PREFIXES:
            return prefix + digits(rng, 6) + rng.choice("ABCD")


def ssn(rng: random.Random, valid: bool = True) -> str:
    """A US SSN (area not 000/666/9xx, group not 00, serial not 0000), ``AAA-GG-SSSS``."""
    if not valid:
        area = rng.choice(("000", "666", f"9{rng.randint(0, 99):02d}"))
        return f"{area}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"
    area_no = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area_no:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


# --- Payment cards (Luhn) and IBAN (mod 97) -----------------------------------------------------


def luhn_check(body: str) -> str:
    """The Luhn check digit for ``body``."""
    total = 0
    for i, d in enumerate(reversed(body)):
        n = int(d)
        if i % 2 == 0:
            n *= 2
            if n > 9:
                n -= 9
        total += n
    return str((10 - total % 10) % 10)


def card(rng: random.Random, valid: bool = True) -> str:
    """A card number (Visa, Mastercard, Amex, Discover) grouped as printed on the card."""
    brand = rng.choice(("visa", "mc", "mc2", "amex", "discover"))
    prefix, length = {
        "visa": ("4", 16),
        "mc": (str(rng.randint(51, 55)), 16),
        "mc2": (str(rng.randint(2221, 2720)), 16),
        "amex": (rng.choice(("34", "37")), 15),
        "discover": ("6011", 16),
    }[brand]
    body = prefix + digits(rng, length - len(prefix) - 1)
    check = luhn_check(body)
    if not valid:
        check = str((int(check) + rng.randint(1, 9)) % 10)
    number = body + check
    if length == 15:
        return f"{number[:4]} {number[4:10]} {number[10:]}"
    return " ".join(number[i : i + 4] for i in range(0, 16, 4))


def _iban_numeric(text: str) -> int:
    return int("".join(str(int(c, 36)) for c in text))


def _es_ccc(rng: random.Random) -> str:
    weights = (1, 2, 4, 8, 5, 10, 9, 7, 3, 6)

    def dc(part: str) -> str:
        d = 11 - sum(int(c) * w for c, w in zip(part, weights, strict=True)) % 11
        return "1" if d == 10 else "0" if d == 11 else str(d)

    bank_branch, account = digits(rng, 8), digits(rng, 10)
    return bank_branch + dc("00" + bank_branch) + dc(account) + account


def _fr_rib(rng: random.Random) -> str:
    bank, branch, account = digits(rng, 5), digits(rng, 5), digits(rng, 11)
    key = 97 - (89 * int(bank) + 15 * int(branch) + 3 * int(account)) % 97
    return bank + branch + account + f"{key:02d}"


def _be_bban(rng: random.Random) -> str:
    head = digits(rng, 10)
    return head + f"{int(head) % 97 or 97:02d}"


def _letters(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(UPPER) for _ in range(n))


BBANS = {
    "DE": lambda rng: digits(rng, 18),
    "NL": lambda rng: _letters(rng, 4) + digits(rng, 10),
    "GB": lambda rng: _letters(rng, 4) + digits(rng, 14),
    "IE": lambda rng: _letters(rng, 4) + digits(rng, 14),
    "AT": lambda rng: digits(rng, 16),
    "CH": lambda rng: digits(rng, 17),
    "ES": _es_ccc,
    "FR": _fr_rib,
    "BE": _be_bban,
}


def iban(rng: random.Random, country: str, valid: bool = True, grouped: bool = True) -> str:
    """An IBAN of ``country`` whose mod-97 check holds (or, ``valid=False``, does not)."""
    bban = BBANS[country](rng)
    check = 98 - _iban_numeric(bban + country + "00") % 97
    if not valid:
        check = (check + rng.randint(1, 90)) % 97 or 2
        if check < 2:
            check += 2
    number = f"{country}{check:02d}{bban}"
    if not grouped:
        return number
    return " ".join(number[i : i + 4] for i in range(0, len(number), 4))


# --- Passports and ICAO 9303 MRZ ------------------------------------------------------------------


def mrz_check(field: str) -> str:
    """ICAO 9303 check digit (weights 7, 3, 1; ``<`` is 0, letters 10..35)."""
    total = 0
    for i, c in enumerate(field):
        v = 0 if c == "<" else int(c, 36)
        total += v * (7, 3, 1)[i % 3]
    return str(total % 10)


def passport_number(rng: random.Random, country: str) -> str:
    """A passport number in the national shape of ``country``."""
    alnum = "CFGHJKLMNPRTVWXYZ0123456789"
    shapes = {
        "DEU": lambda: rng.choice("CFGHJK") + "".join(rng.choice(alnum) for _ in range(8)),
        "USA": lambda: digits(rng, 9, "5"),
        "GBR": lambda: digits(rng, 9, "12345"),
        "FRA": lambda: digits(rng, 2) + _letters(rng, 2) + digits(rng, 5),
        "ESP": lambda: _letters(rng, 3) + digits(rng, 6),
        "NLD": lambda: "N" + rng.choice("WXYZ") + digits(rng, 6) + digits(rng, 1),
        "ITA": lambda: _letters(rng, 2) + digits(rng, 7),
    }
    return shapes[country]()


def mrz_name(text: str) -> str:
    """A name in MRZ letters: ASCII capitals, ``<`` for spaces and hyphens."""
    text = text.replace("ß", "ss").replace("Ä", "Ae").replace("ä", "ae").replace("ö", "oe")
    text = text.replace("ü", "ue").replace("Ö", "Oe").replace("Ü", "Ue")
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(c if c.isalpha() else "<" for c in ascii_text.upper())


def mrz_td3(
    rng: random.Random, country: str, surname: str, given: str, dob: str, sex: str
) -> tuple[str, str, str]:
    """Two 44-character TD3 lines with valid check digits, and the document number.

    ``dob`` is ``YYMMDD``. The expiry date is random in 2027-2035.
    """
    number = passport_number(rng, country)
    doc = (number + "<" * 9)[:9]
    expiry = f"{rng.randint(27, 35):02d}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    personal = "<" * 14
    line1 = (f"P<{country}{mrz_name(surname)}<<{mrz_name(given)}" + "<" * 44)[:44]
    part_doc = doc + mrz_check(doc)
    part_dob = dob + mrz_check(dob)
    part_exp = expiry + mrz_check(expiry)
    part_pers = personal + mrz_check(personal)
    composite = mrz_check(part_doc + part_dob + part_exp + part_pers)
    line2 = part_doc + country + part_dob + sex + part_exp + part_pers + composite
    return line1, line2, number
