"""The internal level: confidentiality markers and internal hosts.

Categories ``internal_marker`` (configured phrases such as "confidential") and
``internal_host`` (names under internal DNS suffixes or configured company domains, RFC
1918 addresses). The marker and host patterns are built from the
:class:`~edge_agent.routing.sensitivity.config.SensitivityConfig`.
"""

from __future__ import annotations

import re
from typing import Final

from edge_agent.routing.sensitivity.config import SensitivityConfig
from edge_agent.routing.sensitivity.matching import Hit, Scan, bounded, escape
from edge_agent.routing.sensitivity.terms import entries

_KEEP_BEFORE: Final = re.compile(
    r"\b(?:keep|kept|keeping|remain|remains|stay|stays|treat|treated|be)\b"
    r"(?:\s+[\w'-]+){0,4}\s*\Z"
)


_VERSION_BEFORE: Final = re.compile(
    r"\b(?:version|ver|release|firmware|fw|build|v)\.?\s*\Z", re.IGNORECASE
)


PRIVATE_IP_RULE = (
    r"\b(?:10\.[0-9]{1,3}|192\.168|172\.(?:1[6-9]|2[0-9]|3[01]))\.[0-9]{1,3}\.[0-9]{1,3}\b"
)


_CODE_LABELS: Final[frozenset[str]] = frozenset(entries("code_labels.txt"))
"""First labels of dotted names in code ("self.x.local"), not hosts (``data/code_labels.txt``)."""


def marker_pattern(config: SensitivityConfig) -> str:
    """The RE2 pattern of the configured internal keywords, longest first."""
    alts = [
        bounded(escape(k), k)
        for k in sorted(config.internal_keywords, key=len, reverse=True)
        if k.strip()
    ]
    return "(?i:" + "|".join(alts) + ")"


def host_pattern(config: SensitivityConfig) -> str:
    """The RE2 pattern of host names under the configured internal suffixes and domains
    ("" when there are none)."""
    label = r"[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?"
    alts: list[str] = []
    suffixes = [s.strip(".").lower() for s in config.internal_host_suffixes if s.strip(".")]
    if suffixes:
        alts.append(r"(?:" + label + r"\.)+(?:" + "|".join(escape(s) for s in suffixes) + r")")
    domains = [d.strip(".").lower() for d in config.internal_domains if d.strip(".")]
    if domains:
        alts.append(r"(?:" + label + r"\.)*(?:" + "|".join(escape(d) for d in domains) + r")")
    if not alts:
        return ""
    return r"(?i)\b(?:" + "|".join(alts) + r")\b"


def on_marker(sc: Scan, m: Hit) -> None:
    s, e = m.span()
    text = sc.text
    if text[s - 1 : s] in ("'", '"', "`") and text[e : e + 1] == text[s - 1 : s]:
        return  # the word is mentioned ("the word 'confidential'"), not used as a marker
    if text[s:e].lower() == "confidential":
        before = text[max(0, s - 60) : s].lower()
        if _KEEP_BEFORE.search(before):
            return  # "keep customer data confidential": about secrecy, not a marker
    sc.add("internal_marker", s, e)


def on_host(sc: Scan, m: Hit) -> None:
    s, e = m.span()
    text = sc.text
    nxt = text[e : e + 1]
    if nxt in ("(", "_", "[", "=") or (nxt == "." and text[e + 1 : e + 2].isalpha()):
        return
    first_label = text[s:e].split(".", 1)[0].lower()
    if first_label in _CODE_LABELS and text[max(0, s - 3) : s] != "://":
        return
    if text[max(0, s - 1) : s] in (".", "_"):
        return
    sc.add("internal_host", s, e)


def on_private_ip(sc: Scan, m: Hit) -> None:
    s, e = m.span()
    text = sc.text
    prev = text[s - 1 : s] if s else ""
    if prev in (".", "v", "V") or prev.isalnum():
        return
    if text[e : e + 1] == "." and text[e + 1 : e + 2].isdigit():
        return
    address = text[s:e]
    if address.endswith(".0") and text[e : e + 1] == "/":
        return  # a network in CIDR notation, not a host
    if _VERSION_BEFORE.search(text, max(0, s - 24), s):
        return
    if all(0 <= int(p) <= 255 for p in address.split(".")):
        sc.add("internal_host", s, e)


__all__ = [
    "PRIVATE_IP_RULE",
    "host_pattern",
    "marker_pattern",
    "on_host",
    "on_marker",
    "on_private_ip",
]
