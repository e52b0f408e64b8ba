"""People: person names and dates of birth.

Categories ``person_name`` and ``date_of_birth`` (restricted). A person name is a finding
only where it sits next to health, contact, identity or financial data about that person;
a date is a date of birth only where words announce it as one.
"""

from __future__ import annotations

from typing import Final

from edge_agent.routing.sensitivity.matching import Handler

RULES: Final[list[tuple[str, str, Handler]]] = []
"""This family's rules as (name, RE2 pattern, handler), in the order the scanner runs them."""

__all__ = ["RULES"]
