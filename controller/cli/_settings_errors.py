"""Controller configuration errors as an operator reads them: one line per problem, naming
where the value came from (the YAML file or the ``EDGEFLEET_*`` variable) and the key, like
the agent's ``invalid config`` lines; no pydantic class names, no documentation links, and
never the offending value (it may be a secret)."""

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

# pydantic's wording for a few error types, replaced by what the operator should do.
_MESSAGES = {
    "extra_forbidden": "unknown key (docs/configuration.md lists the keys)",
    "missing": "required, but not set",
}
_PREFIXES = ("Value error, ", "Assertion failed, ")


def _key(loc: Sequence[int | str]) -> str:
    return ".".join(str(part) for part in loc)


def _depth_in_file(values: Mapping[str, Any] | None, loc: Sequence[int | str]) -> int:
    """How many leading parts of ``loc`` the file holds (``len(loc)``: the key itself)."""
    node: Any = values
    for depth, part in enumerate(loc):
        in_mapping = isinstance(node, Mapping) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if not (in_mapping or in_list):
            return depth
        node = node[part]
    return len(loc)


def _env_name(loc: Sequence[int | str], environ: Mapping[str, str]) -> str | None:
    """The ``EDGEFLEET_*`` variable that set ``loc`` (or its parent), if one is set."""
    for end in range(len(loc), 0, -1):
        name = "EDGEFLEET_" + "__".join(str(part) for part in loc[:end]).upper()
        if name in {key.upper() for key in environ}:
            return name
    return None


def _message(error: ErrorDetails) -> str:
    text = _MESSAGES.get(error["type"], error["msg"])
    for prefix in _PREFIXES:
        text = text.removeprefix(prefix)
    return text


def settings_error_lines(
    error: ValidationError,
    config: Path | None,
    file_values: Mapping[str, Any] | None,
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    """One ``SOURCE: KEY: what is wrong`` line per problem in ``error``: SOURCE is the config
    file when it holds the key, else the environment variable that set it; a check of
    several keys at once names them in its message and has no KEY part."""
    env = os.environ if environ is None else environ
    lines: list[str] = []
    for detail in error.errors(include_url=False, include_input=False):
        loc = detail["loc"]
        depth = _depth_in_file(file_values, loc) if config is not None else 0
        variable = _env_name(loc, env) if loc else None
        where: str | None
        if (bool(loc) and depth == len(loc)) or variable is None:
            where = None if config is None else str(config)
        else:
            where = variable
        parts = [p for p in (where, _key(loc) or None, _message(detail)) if p]
        lines.append(": ".join(parts))
    return lines


__all__ = ["settings_error_lines"]
