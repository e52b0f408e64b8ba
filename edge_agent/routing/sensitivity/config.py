"""What the detector treats as internal or restricted beyond its built-in rules."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from edge_agent.routing.sensitivity.terms import entries

DEFAULT_INTERNAL_KEYWORDS: Final[tuple[str, ...]] = entries("internal_keywords.txt")
"""Phrases that mark a text as company-internal (case-insensitive, whole words)."""

DEFAULT_INTERNAL_SUFFIXES: Final[tuple[str, ...]] = entries("internal_suffixes.txt")
"""DNS suffixes that only resolve inside an organisation (``*.corp``, ``*.internal`` ...)."""


@dataclass(frozen=True)
class SensitivityConfig:
    """What the detector treats as internal or restricted beyond its built-in rules.

    * ``internal_keywords``: phrases (case-insensitive, whole words, any whitespace between
      words) that make a text internal. "confidential" right after "keep/kept/remain/stay"
      ("keep customer data confidential") is a sentence about secrecy, not a marker, and is
      ignored.
    * ``internal_domains``: company domains (``"acme.com"``); the domain and its sub-domains
      are internal hosts.
    * ``internal_host_suffixes``: DNS suffixes (without the leading dot) that are internal.
    * ``private_ips_internal``: RFC 1918 addresses (10/8, 172.16/12, 192.168/16) are
      internal hosts.
    * ``extra_restricted_patterns`` / ``extra_internal_patterns``: category -> Python ``re``
      pattern; every match is a finding of that category at that level.
    * ``disabled_categories``: built-in categories to switch off (for example
      ``{"street_address"}`` on a device whose prompts are mostly shipping labels that the
      operator has cleared for the cloud).
    * ``stop_at_restricted``: stop scanning a text at the first restricted finding. The
      level is the same; the findings are then only those found so far. For callers that
      need the level only (routing), this bounds the cost of texts full of personal data.
    """

    internal_keywords: tuple[str, ...] = DEFAULT_INTERNAL_KEYWORDS
    internal_domains: tuple[str, ...] = ()
    internal_host_suffixes: tuple[str, ...] = DEFAULT_INTERNAL_SUFFIXES
    private_ips_internal: bool = True
    extra_restricted_patterns: Mapping[str, str] = field(default_factory=dict)
    extra_internal_patterns: Mapping[str, str] = field(default_factory=dict)
    disabled_categories: frozenset[str] = frozenset()
    stop_at_restricted: bool = False


__all__ = ["DEFAULT_INTERNAL_KEYWORDS", "DEFAULT_INTERNAL_SUFFIXES", "SensitivityConfig"]
