"""Personal contact data: e-mail addresses, phone numbers and street addresses.

Categories ``email``, ``phone`` and ``street_address`` (all restricted). This module has
the e-mail rule (addresses at reserved example domains, RFC 2606/6761, are placeholders
and stay public); :mod:`.phones` has the phone rule, :mod:`.addresses` the street
addresses and :mod:`.obfuscated` e-mail addresses written to dodge scrapers. ``RULES``
carries the e-mail, address and phone rules.
"""

from __future__ import annotations

import re
from typing import Final

from edge_agent.routing.sensitivity import addresses, phones
from edge_agent.routing.sensitivity.matching import Handler, Hit, Scan
from edge_agent.routing.sensitivity.obfuscated import reserved_domain

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


RULES: Final[list[tuple[str, str, Handler]]] = [
    ("email", EMAIL_RULE, on_email),
    *addresses.RULES,
    *phones.RULES,
]
"""This family's rules as (name, RE2 pattern, handler), in the order the scanner runs them."""

__all__ = ["EMAIL_RULE", "RULES", "on_email"]
