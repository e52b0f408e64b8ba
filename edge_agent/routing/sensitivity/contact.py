"""Personal contact data: e-mail addresses, phone numbers and street addresses.

Categories ``email``, ``phone`` and ``street_address`` (all restricted). Phone numbers
are found by their format or after a word that announces one (``data/phone_words.txt``);
``phonenumbers`` checks those written with a country code or in the French format.
"""

from __future__ import annotations

import re
from typing import Final

import phonenumbers

from edge_agent.routing.sensitivity.identifiers import DATE_LIKE, digits_of
from edge_agent.routing.sensitivity.matching import Handler, Hit, Scan
from edge_agent.routing.sensitivity.obfuscated import reserved_domain
from edge_agent.routing.sensitivity.terms import alternation

EMAIL_RULE = r"[\pL\pN._%+\-]+@[\pL\pN][\pL\pN\-]*(?:\.[\pL\pN][\pL\pN\-]*)*\.[A-Za-z]{2,}\b"


_LOGIN_WORDS: Final = re.compile(r"ssh|scp|sftp|rsync|mosh|telnet")


_LOGIN_BEFORE: Final = re.compile(
    r"\b(?:ssh|scp|sftp|rsync|mosh|telnet)\b(?:\s+-{1,2}[\w=-]+(?:\s+\S+)?)*\s+\Z"
)


def on_email(sc: Scan, m: Hit) -> None:
    s, e = m.span()
    text = sc.text
    local = text[s : text.index("@", s)]
    if local in ("git", "noreply") or local.startswith("."):
        return
    if reserved_domain(text[text.index("@", s) + 1 : e]):
        return  # example.com, *.test, *.invalid, localhost: no one's mailbox
    lead = text[max(0, s - 40) : s]
    if lead.endswith("://") or (_LOGIN_WORDS.search(lead) and _LOGIN_BEFORE.search(lead)):
        return  # user@host of a URL or an ssh/scp/rsync login, not a mailbox
    sc.add("email", s, e)


PHONE_RULE = (
    r"(?P<intl>(?:\+|\b00)[1-9][0-9]{0,2}[ .\-]?(?:\(0?[0-9]{1,4}\)[ .\-]?)?[0-9]{1,5}"
    r"(?:[ .\-]?[0-9]{2,5}){1,4}\b)"
    r"|(?P<nanp>(?:\([2-9][0-9]{2}\) ?|\b[2-9][0-9]{2}[\-.])[2-9][0-9]{2}[\-.][0-9]{4}\b)"
    r"|(?P<fr>\b0[1-9](?:[ .][0-9]{2}){4}\b)"
    r"|(?P<trunk>\(0[1-9][0-9]{0,3}\) ?[0-9]{3,4}[ .\-]?[0-9]{3,4}\b)"
    r"|(?i:\b(?:" + alternation("phone_words.txt") + r")\b)"
    r"[^0-9+\n]{0,48}?(?P<ctx>\+?\(?[0-9][0-9 ().\-]{5,18}[0-9])"
)


def _phone_plus_ok(candidate: str) -> bool:
    number = "+" + candidate[2:] if candidate.startswith("00") else candidate
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(parsed)


def _phone_region_ok(candidate: str, region: str) -> bool:
    try:
        parsed = phonenumbers.parse(candidate, region)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(parsed)


def on_phone(sc: Scan, m: Hit) -> None:
    kind: str | None = m.kind
    if kind is None:
        return
    s, e = m.span(kind)
    text = sc.text
    value = text[s:e]
    if kind == "intl":
        before = text[max(0, s - 2) : s]
        if before[-1:].isalnum() or (before[-1:] == " " and before[:1].isdigit()):
            return  # "x+1 ..." or a group inside a longer number ("3704 0044 0532")
        if _phone_plus_ok(value):
            sc.add("phone", s, e)
    elif kind == "nanp":
        if text[s - 1 : s] in (".", "-") or (
            text[e : e + 1] in (".", "-") and text[e + 1 : e + 2].isdigit()
        ):
            return
        sc.add("phone", s, e)
    elif kind == "fr":
        if _phone_region_ok(value, "FR"):
            sc.add("phone", s, e)
    elif kind == "trunk":  # "(02) 9374 4000", "(030) 901820": a trunk code in brackets
        if 8 <= len(digits_of(value)) <= 12:
            sc.add("phone", s, e)
    elif kind == "ctx":
        if s - m.span()[0] > 48:
            return  # the phone word is too far from the number
        digits = digits_of(value)
        if not 7 <= len(digits) <= 15 or DATE_LIKE.search(value):
            return
        if value.count(".") >= 3:
            return  # a dotted version or address, not a phone number
        if value.startswith("+") and not _phone_plus_ok(value):
            return
        sc.add("phone", s, e)


_STREET_SUFFIX_EN: Final = "(?:" + alternation("street_suffixes.txt") + ")"
"""Street-type words that end an English address (``data/street_suffixes.txt``)."""
ADDRESS_RULE = (
    r"(?P<en>\b[0-9]{1,5}[A-Za-z]?,? (?:(?:[A-Z][A-Za-z'\-]*\.?|[0-9]{1,3}(?:st|nd|rd|th)) ){1,4}"
    + _STREET_SUFFIX_EN
    + r"\b\.?)"
    r"|(?P<de>\b[A-ZÄÖÜ][a-zäöüß\-]+(?:straße|strasse|str\.|weg|gasse|allee|platz|ring|damm|"
    r"ufer|straat|laan|gracht|plein|kade) ?[0-9]{1,4}[a-z]?\b)"
    r"|(?P<de2>\b[A-ZÄÖÜ][a-zäöüß\-]+ (?:Straße|Strasse|Str\.|Weg|Allee|Platz|Gasse|Ring) "
    r"[0-9]{1,4}[a-z]?\b)"
    r"|(?P<fr>\b[0-9]{1,4}(?: ?(?:bis|ter))?,? (?i:rue|avenue|av\.|boulevard|bd|place|all[ée]e|"
    r"chemin|impasse|quai|cours) (?:(?:de la|de l'|du|des|de|d'|la|le|l')\s?)?[A-ZÉÈ][\w'\-]+)"
    r"|(?P<es>\b(?:Calle|C/|Avenida|Avda\.|Plaza|Paseo|Via|Viale|Piazza|Corso) "
    r"(?:(?:de la|del|de|della|dei|di) )?[A-Z][\w'\-]+(?: [A-Z][\w'\-]+){0,2},? "
    r"(?:n\.? ?|nº ?|no\.? ?)?[0-9]{1,4}\b)"
)


def on_address(sc: Scan, m: Hit) -> None:
    kind: str | None = m.kind
    s, e = m.span(kind)
    if kind == "en":
        words = sc.text[s:e].split()
        if words[0].rstrip(",").isdigit() and int(words[0].rstrip(",")) == 0:
            return
        # "Dr"/"St" as the suffix needs a street-like word before it ("12 Oak Dr")
        if words[-1].rstrip(".") in ("Dr", "St") and len(words) < 3:
            return
    sc.add("street_address", s, e)


RULES: Final[list[tuple[str, str, Handler]]] = [
    ("email", EMAIL_RULE, on_email),
    ("address", ADDRESS_RULE, on_address),
    ("phone", PHONE_RULE, on_phone),
]
"""This family's rules as (name, RE2 pattern, handler), in the order the scanner runs them."""

__all__ = [
    "ADDRESS_RULE",
    "EMAIL_RULE",
    "PHONE_RULE",
    "RULES",
    "on_address",
    "on_email",
    "on_phone",
]
