"""The corpus's types: a template, a hand-written row and the row written to the JSONL files."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LEVELS = ("restricted", "internal", "public")
LANGS = ("en", "de", "fr", "es", "nl")


@dataclass(frozen=True)
class Template:
    """One prompt shape of one part: ``pattern`` with ``{{field:arg}}`` slots (see
    :mod:`.fill`) that a seeded value generator fills in, ``count`` times.
    """

    tid: str
    cls: str
    level: str
    categories: tuple[str, ...]
    lang: str
    fmt: str
    pattern: str
    count: int = 4


@dataclass(frozen=True)
class Handwritten:
    """One row written by hand (it belongs to exactly one part, like a template)."""

    cls: str
    level: str
    categories: tuple[str, ...]
    lang: str
    fmt: str
    text: str
    values: tuple[str, ...] = ()
    """The personal or secret values in ``text`` (for the redaction leak check)."""


@dataclass
class Row:
    """One labelled prompt as written to ``tuning.jsonl`` / ``heldout.jsonl``."""

    id: str
    text: str
    level: str
    categories: list[str]
    cls: str
    lang: str
    fmt: str
    source: str
    template: str
    checks: list[list[str]] = field(default_factory=list)
    values: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The row as its JSON object (``class`` and ``format`` spelled out)."""
        return {
            "id": self.id,
            "text": self.text,
            "level": self.level,
            "categories": self.categories,
            "class": self.cls,
            "lang": self.lang,
            "format": self.fmt,
            "source": self.source,
            "template": self.template,
            "checks": self.checks,
            "values": self.values,
        }


def t(
    tid: str,
    cls: str,
    cats: str,
    lang: str,
    fmt: str,
    pattern: str,
    count: int = 4,
    level: str = "restricted",
) -> Template:
    """Shorthand for a :class:`Template`: ``cats`` is a space-separated category list."""
    return Template(tid, cls, level, tuple(cats.split()), lang, fmt, pattern, count)


def pub(tid: str, cls: str, lang: str, fmt: str, pattern: str, count: int = 6) -> Template:
    """A public template (no categories)."""
    return Template(tid, cls, "public", (), lang, fmt, pattern, count)


def h(
    cls: str,
    cats: str,
    lang: str,
    fmt: str,
    text: str,
    level: str = "restricted",
    values: tuple[str, ...] = (),
) -> Handwritten:
    """Shorthand for a :class:`Handwritten` row (``values``: its personal/secret values)."""
    return Handwritten(cls, level, tuple(cats.split()), lang, fmt, text, values)
