"""E-mail addresses written to dodge scrapers: ``jane [at] acme [dot] com``.

Category ``email`` (restricted). Forms: ``name [at] host [dot] tld`` (brackets, braces,
parentheses or angle brackets around "at"/"@"/"ät"/"arroba"/"chez" and around
"dot"/"punkt"/"point"/"punto"/"punt"/"."), ``name(at)host.tld``, ``name[@]host``, ``name @
host . com`` (spaces around the "@"), ``name@host[dot]com``, and ``name at host dot com``
(the words "at" and "dot"; ``jane dot doe at mail dot org`` too). The plain-word form
with a real dot, ``name at host.com``, counts only when the name has a separator or digits
(``jane.doe at acme.de``, ``lvogel37 at web.de``) or "AT" is written in capitals:
"look at github.com" and "available at pypi.org" are prose.

A top-level domain after a plain "." must be a common one (``data/email_tlds.txt``), so
that ``look at main.py`` or ``x @ w.T`` are not addresses; after a spelled-out "dot" any
two to six letters do. Addresses at reserved example domains are placeholders, as in
:mod:`.contact`.
"""

from __future__ import annotations

import re
from typing import Final

from edge_agent.routing.sensitivity.matching import Handler, Hit, Scan
from edge_agent.routing.sensitivity.terms import entries

# RE2 finds the distinctive middle of an address (cheap, ASCII); Python's ``re`` then
# reads the whole address from a window around it.
_AT_TOKEN: Final = r"(?:at|ät|@|arroba|chez|apenstaartje|a)"  # noqa: S105 (not a password)
_DOT_TOKEN: Final = r"(?:dot|punkt|point|punto|punt|\.)"  # noqa: S105
_RE2_DOT: Final = (
    r"(?:[ \t]*[\[({<\-][ \t]*"
    + _DOT_TOKEN
    + r"[ \t]*[\])}>\-][ \t]*|[ \t]+(?:dot|punkt|point|punto|punt)"
    r"[ \t]+|\.|[ \t]+\.[ \t]*|\.[ \t]+)"
)
OBFUSCATED_RULE = (
    r"(?i)[a-z0-9._%+\-](?:[ \t]*[\[({<][ \t]*" + _AT_TOKEN + r"[ \t]*[\])}>][ \t]*"
    r"|[ \t]*-(?:at|ät)-[ \t]*"
    r"|[ \t]*@[ \t]+)[a-z0-9\-]+" + _RE2_DOT + r"[a-z]"
    r"|(?i)[a-z0-9]@[a-z0-9\-]+(?:[ \t]*[\[({][ \t]*" + _DOT_TOKEN + r"[ \t]*[\])}][ \t]*|[ \t]+"
    r"(?:dot|punkt|point|punto|punt)[ \t]+|[ \t]+\.[ \t]*|\.[ \t]+)[a-z]"
    r"|(?i)[a-z0-9][ \t]+(?:at|ät|arroba|chez|apenstaartje)[ \t]+[a-z0-9\-]+[ \t]+"
    r"(?:dot|punkt|point|punto|punt)[ \t]+[a-z]"
    r"|[A-Za-z0-9]+[._\-][A-Za-z0-9]+[ \t]+(?i:at)[ \t]+[A-Za-z0-9\-]+\.[A-Za-z]"
    r"|[A-Za-z0-9][ \t]+AT[ \t]+[A-Za-z0-9\-]+\.[A-Za-z]"
    r"|[a-z0-9][ \t]+at[ \t]+[a-z0-9\-]+\.(?:com|de|fr|es|nl|org|net|eu|ch|at|be|it|pt|io|"
    r"me|co\.uk|uk|pl|se|dk|no|fi)\b"
)
"""The middle of an obfuscated address (a rule of the set; the handler reads the rest)."""

_L: Final = r"[\w%+\-]+(?:(?:\.|[ \t]+(?:dot|punkt|point|punto|punt)[ \t]+)[\w%+\-]+)*"
_H: Final = r"[^\W_][\w\-]*"
_AT: Final = (
    r"(?:[ \t]*(?:\[[ \t]*" + _AT_TOKEN + r"[ \t]*\]|\([ \t]*" + _AT_TOKEN + r"[ \t]*\)|"
    r"\{[ \t]*" + _AT_TOKEN + r"[ \t]*\}|<[ \t]*" + _AT_TOKEN + r"[ \t]*>|-(?:at|ät)-)[ \t]*"
    r"|[ \t]+(?:at|ät|arroba|chez|apenstaartje)[ \t]+|[ \t]*@[ \t]*)"
)
_DOT: Final = (
    r"(?:[ \t]*(?:\[[ \t]*" + _DOT_TOKEN + r"[ \t]*\]|\([ \t]*" + _DOT_TOKEN + r"[ \t]*\)|"
    r"\{[ \t]*"
    + _DOT_TOKEN
    + r"[ \t]*\}|<[ \t]*"
    + _DOT_TOKEN
    + r"[ \t]*>|-(?:dot|punkt|point|punto|punt)-)"
    r"[ \t]*|[ \t]+(?:dot|punkt|point|punto|punt)[ \t]+"
    r"|\.|[ \t]+\.[ \t]+|[ \t]+\.(?=[a-z])|\.[ \t]+(?=[a-z]{2,6}\b))"
)
_ADDRESS: Final = re.compile(
    r"(?i)(?<![\w.%+\-])(?P<local>"
    + _L
    + r")(?P<at>"
    + _AT
    + r")(?P<host>"
    + _H
    + r"(?:"
    + _DOT
    + _H
    + r")*)(?P<dot>"
    + _DOT
    + r")(?P<tld>[a-z]{2,6})(?![\w\-])"
)
"""A whole obfuscated address, read from the window around the set's match."""

_TLDS: Final[frozenset[str]] = frozenset(entries("email_tlds.txt"))
_PLAIN_NAME: Final = re.compile(r"[\w]+(?:[._\-]\w+)+|\w*[A-Za-z]\w*[0-9]+\w*")
_RESERVED_TLDS: Final = ("example", "test", "invalid", "localhost")


def reserved_domain(domain: str) -> bool:
    """``example.com``/``.net``/``.org`` and their subdomains, and the reserved top-level
    domains ``.example``, ``.test``, ``.invalid``, ``.localhost`` (RFC 2606, RFC 6761):
    no mailbox there belongs to anyone."""
    d = domain.lower().rstrip(".")
    if d == "localhost" or d.rsplit(".", 1)[-1] in _RESERVED_TLDS:
        return True
    return any(d == r or d.endswith("." + r) for r in ("example.com", "example.net", "example.org"))


_DOT_SPLIT: Final = re.compile(r"(?i)\s*(?:\[\s*(?:dot|punkt|point|punto|punt|\.)\s*\]|"
                               r"\(\s*(?:dot|punkt|point|punto|punt|\.)\s*\)|"
                               r"\{\s*(?:dot|punkt|point|punto|punt|\.)\s*\}|"
                               r"\s(?:dot|punkt|point|punto|punt)\s|\.)\s*")  # fmt: skip


def on_obfuscated(sc: Scan, m: Hit) -> None:
    """An address written to dodge scrapers: read it whole, check its domain and name."""
    s, e = m.span()
    text = sc.text
    pos, hi = max(0, s - 120), min(len(text), e + 120)
    while (a := _ADDRESS.search(text, pos, hi)) is not None and a.start() < e:
        if a.end() > s and _is_obfuscated_address(a, _mail_word_near(text, a.start(), a.end())):
            sc.add("email", a.start(), a.end())
            return
        pos = a.start() + 1  # "me at jonas dot weber at ...": try the next start


_MAIL_WORD: Final = re.compile(
    r"(?i)\b(?:e-?mail|mail|mailbox|inbox|correo|courriel|adresse\s+mail|mailadresse|"
    r"schreib|write\s+(?:to\s+)?me|[ée]cri[st]|escr[ií]be|contact|kontakt|contacto|reach)"
)
"""Words that say an address nearby is a mailbox ("my email", "schreib mir", "escríbeme")."""


_NOT_A_NAME: Final[frozenset[str]] = frozenset(
    entries("credential_stopwords.txt")
) | frozenset(
    ("me", "us", "him", "them", "online", "available", "hosted", "live", "found", "located",
     "based", "work", "works", "working", "download", "look", "see", "read", "docs", "up",
     "out", "here", "there", "sign", "signup", "login", "buy", "order", "book", "apply",
     "register", "visit", "find", "info", "details", "more", "page", "site", "website")
)  # fmt: skip
"""Words before "at host.tld" that are no mailbox's name."""


def _mail_word_near(text: str, s: int, e: int) -> bool:
    """A mail word within 40 characters of ``text[s:e]``, on its line."""
    lo = max(text.rfind("\n", 0, s) + 1, s - 40)
    eol = text.find("\n", e)
    hi = min(e + 40, len(text) if eol == -1 else eol)
    return _MAIL_WORD.search(text, lo, s) is not None or _MAIL_WORD.search(text, e, hi) is not None


def _is_obfuscated_address(a: re.Match[str], mail_word: bool = False) -> bool:
    at, dot, tld = a.group("at"), a.group("dot"), a.group("tld").lower()
    spelled_at = at.strip() not in ("@", "at", "AT", "ät", "arroba", "chez")
    spelled_dot = dot.strip() != "."
    plain = not (spelled_at or spelled_dot or (at.strip() == "@" and at != "@"))
    if (
        plain
        and at.strip() != "AT"
        and not _PLAIN_NAME.fullmatch(a.group("local"))
        and not (mail_word and a.group("local").lower() not in _NOT_A_NAME)
    ):  # "jane at acme.com (my email)", not "download it at python.org, then email me"
        return False  # "name at host.tld" needs a separator or digits in the name, or "AT"
    if at == "@" and not spelled_dot and dot == ".":
        return False  # a plain address: the e-mail rule's
    if tld not in _TLDS and not (spelled_dot and dot.strip()[:1] in "[({"):
        return False
    host = ".".join(p for p in _DOT_SPLIT.split(a.group("host")) if p) + "." + tld
    return not reserved_domain(host)


RULES: Final[list[tuple[str, str, Handler]]] = [("obfuscated", OBFUSCATED_RULE, on_obfuscated)]
"""This family's rules as (name, RE2 pattern, handler)."""

__all__ = ["OBFUSCATED_RULE", "RULES", "on_obfuscated", "reserved_domain"]
