"""The detector's term lists, keyword tables and cue words, read from ``data/``.

The lists live in the package as data files so that they can be read and reviewed (and
extended) without reading the rules. Each is read once, when the module that uses it is
imported, through :mod:`importlib.resources` (so an installed wheel or a packed image
reads them the same way as a checkout).

* ``*.txt``: one entry per line, in file order; surrounding whitespace is stripped, and
  blank lines and lines that start with ``#`` are skipped.
* ``*.json``: an object whose members are lists of strings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from typing import Final

_PACKAGE: Final = __name__.rpartition(".")[0]


def _read(name: str) -> str:
    return resources.files(_PACKAGE).joinpath("data", name).read_text(encoding="utf-8")


def entries(name: str) -> tuple[str, ...]:
    """The entries of the text file ``data/<name>``, in file order."""
    lines = (line.strip() for line in _read(name).splitlines())
    return tuple(line for line in lines if line and not line.startswith("#"))


def pairs(name: str) -> dict[str, str]:
    """The entries of ``data/<name>`` as ``key value`` pairs (split at the first space)."""
    result: dict[str, str] = {}
    for entry in entries(name):
        key, _space, value = entry.partition(" ")
        result[key] = value.strip()
    return result


def word_lists(name: str) -> Mapping[str, tuple[str, ...]]:
    """The lists of strings in the JSON object of ``data/<name>``, by member name."""
    doc = json.loads(_read(name))
    if not isinstance(doc, dict):
        raise ValueError(f"data/{name}: expected a JSON object")
    lists: dict[str, tuple[str, ...]] = {}
    for key, value in doc.items():
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"data/{name}: {key!r} is not a list of strings")
        lists[key] = tuple(value)
    return lists


def alternation(name: str) -> str:
    """The entries of ``data/<name>`` (RE2 fragments) joined as alternatives: ``a|b|c``."""
    return "|".join(entries(name))


__all__ = ["alternation", "entries", "pairs", "word_lists"]
