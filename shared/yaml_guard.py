"""Bounded YAML for every file we read: size, nesting depth, element count, no aliases.

PyYAML's scanner and parser are iterative (a state stack), but its composer and
constructor recurse once per nesting level: 3,000 ``[`` raise ``RecursionError``. Aliases
make a few hundred bytes expand to billions of nodes ("billion laughs"). So the limits are
enforced on the event stream, as the composer pulls each event and before it builds
anything: an alias or anchor is refused outright (our configs never need one), a
collection opened past ``max_depth`` or a value past ``max_elements`` stops the load.
PyYAML's constructors then call ``int()``, ``datetime()`` and ``base64`` on scalars, which
raise ``ValueError`` for ``2001-13-45`` or a 5,000-digit integer, so every failure of a
load becomes the one ``YamlShapeError`` naming the file and what is wrong.

Pure apart from ``read_yaml_file``'s bounded read; imports no framework.
"""

import math
from pathlib import Path
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    Event,
    ScalarEvent,
)

from shared.json_guard import MAX_DEPTH

__all__ = [
    "MAX_YAML_BYTES",
    "MAX_YAML_DEPTH",
    "MAX_YAML_ELEMENTS",
    "YamlShapeError",
    "load_yaml_bounded",
    "read_yaml_file",
]

# Our largest YAML file (a controller config with every section) is a few KiB.
MAX_YAML_BYTES = 1024 * 1024
MAX_YAML_DEPTH = MAX_DEPTH
MAX_YAML_ELEMENTS = 50_000


class YamlShapeError(ValueError):
    """A YAML document that is not YAML or is beyond a limit; the text names the source.

    ``reason`` is one of ``bad_yaml``, ``oversized``, ``too_deep``, ``too_many_elements``,
    ``alias``.
    """

    def __init__(self, source: str, reason: str, detail: str) -> None:
        super().__init__(f"{source}: {detail}")
        self.source = source
        self.reason = reason
        self.detail = detail


class _Refused(Exception):
    """Raised inside the loader (not a YAMLError, so it is never mistaken for bad syntax)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that checks each event as the composer takes it, before composing it."""

    def __init__(self, stream: str, *, max_depth: int, max_elements: int) -> None:
        super().__init__(stream)
        self._max_depth = max_depth
        self._max_elements = max_elements
        self._depth = 0
        self._elements = 0

    def get_event(self) -> Event:
        event: Event = super().get_event()  # type: ignore[no-untyped-call]
        if isinstance(event, AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused("alias", f"anchors and aliases are not allowed ({_where(event)})")
        if isinstance(event, CollectionStartEvent):
            self._depth += 1
            if self._depth > self._max_depth:
                raise _Refused(
                    "too_deep", f"nested deeper than {self._max_depth} levels ({_where(event)})"
                )
        elif isinstance(event, CollectionEndEvent):
            self._depth -= 1
        if isinstance(event, ScalarEvent | CollectionStartEvent):
            self._elements += 1
            if self._elements > self._max_elements:
                raise _Refused("too_many_elements", f"more than {self._max_elements} values")
        return event


def _has_non_finite(value: Any) -> bool:
    """Does ``value`` (keys included) hold an infinite or NaN float? Iterative; the event
    checks already bounded its size."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
        elif isinstance(item, float) and not math.isfinite(item):
            return True
    return False


def _where(event: Event) -> str:
    mark = event.start_mark
    return "at the start" if mark is None else f"line {mark.line + 1}, column {mark.column + 1}"


def load_yaml_bounded(
    data: bytes | str,
    *,
    source: str,
    max_bytes: int = MAX_YAML_BYTES,
    max_depth: int = MAX_YAML_DEPTH,
    max_elements: int = MAX_YAML_ELEMENTS,
) -> Any:
    """The single YAML document in ``data`` (``None`` when empty), safely constructed;
    raises ``YamlShapeError`` (naming ``source``) and nothing else."""
    size = len(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    if size > max_bytes:
        raise YamlShapeError(source, "oversized", f"larger than the limit of {max_bytes} bytes")
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise YamlShapeError(source, "bad_yaml", f"not UTF-8 text ({e.reason})") from e
    try:
        # Constructing the loader already reads the text (and refuses control characters).
        loader = _BoundedLoader(data, max_depth=max_depth, max_elements=max_elements)
    except yaml.YAMLError as e:
        raise YamlShapeError(source, "bad_yaml", f"not valid YAML: {e}") from e
    loader.name = source  # PyYAML's error marks say "in <name>, line N"
    try:
        value = loader.get_single_data()
    except _Refused as e:
        raise YamlShapeError(source, e.reason, e.detail) from e
    except yaml.YAMLError as e:
        raise YamlShapeError(source, "bad_yaml", f"not valid YAML: {e}") from e
    except Exception as e:
        # Last resort: PyYAML's constructors call int(), datetime() and base64 on the
        # scalars, which raise ValueError (2001-13-45, a 5,000-digit integer) and others.
        raise YamlShapeError(source, "bad_yaml", f"a value cannot be read: {e}") from e
    finally:
        loader.dispose()
    if _has_non_finite(value):  # .inf / .nan: no setting of ours is infinite
        raise YamlShapeError(source, "bad_yaml", "a number is infinite or NaN")
    return value


def read_yaml_file(
    path: Path,
    *,
    max_bytes: int = MAX_YAML_BYTES,
    max_depth: int = MAX_YAML_DEPTH,
    max_elements: int = MAX_YAML_ELEMENTS,
) -> Any:
    """``load_yaml_bounded`` of the file ``path``, reading at most ``max_bytes + 1`` bytes
    (a huge or endless file is refused without being read whole). ``OSError`` when it
    cannot be read; ``YamlShapeError`` for its content."""
    with path.open("rb") as f:
        data = f.read(max_bytes + 1)
    return load_yaml_bounded(
        data, source=str(path), max_bytes=max_bytes, max_depth=max_depth, max_elements=max_elements
    )
