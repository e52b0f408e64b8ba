"""What the detector says: the :class:`Level`, the :class:`Finding` items and the
:class:`Verdict`, and the level of each built-in category."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Final


class Level(IntEnum):
    """How far a request may travel: the higher, the closer to the device it stays."""

    PUBLIC = 0
    INTERNAL = 1
    RESTRICTED = 2

    @property
    def label(self) -> str:
        """The lower-case name used in configuration and logs: ``"public"`` ..."""
        return self.name.lower()

    @classmethod
    def parse(cls, value: str) -> Level:
        """``Level.parse("internal") is Level.INTERNAL``; case-insensitive, raises ValueError."""
        try:
            return cls[value.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown sensitivity level {value!r}") from None


@dataclass(frozen=True, slots=True)
class Finding:
    """One detected item: its category and span ``text[start:end]``, never the text itself.

    ``message`` is the index of the text in :meth:`SensitivityDetector.classify_messages`
    (always 0 for :meth:`SensitivityDetector.classify`). ``certain`` is False for a finding
    the detector raised to fail closed without being sure of its extent or kind (a number
    that could be a phone number, a token after a credential word): such a finding keeps
    the request restricted, and redaction never replaces it (the request stays local).
    """

    category: str
    start: int
    end: int
    message: int = 0
    certain: bool = True


@dataclass(frozen=True, slots=True)
class Verdict:
    """The level of a request and the findings that raised it (empty when public)."""

    level: Level
    findings: tuple[Finding, ...] = ()

    @property
    def categories(self) -> tuple[str, ...]:
        """Sorted unique categories of the findings."""
        return tuple(sorted({f.category for f in self.findings}))


CATEGORY_LEVELS: Final[Mapping[str, Level]] = {
    "aws_access_key": Level.RESTRICTED,
    "api_token": Level.RESTRICTED,
    "jwt": Level.RESTRICTED,
    "private_key": Level.RESTRICTED,
    "connection_string": Level.RESTRICTED,
    "password": Level.RESTRICTED,
    "payment_card": Level.RESTRICTED,
    "iban": Level.RESTRICTED,
    "national_id": Level.RESTRICTED,
    "passport": Level.RESTRICTED,
    "email": Level.RESTRICTED,
    "phone": Level.RESTRICTED,
    "street_address": Level.RESTRICTED,
    "health": Level.RESTRICTED,
    "date_of_birth": Level.RESTRICTED,
    "person_name": Level.RESTRICTED,
    "internal_marker": Level.INTERNAL,
    "internal_host": Level.INTERNAL,
}
"""Built-in categories and their levels."""

__all__ = ["CATEGORY_LEVELS", "Finding", "Level", "Verdict"]
