"""Bounded JSON for untrusted input: size, nesting depth, element count and finite numbers.

``json.loads`` recurses once per nesting level, so 3,000 ``[`` in a 6 KB message raise
``RecursionError`` (not ``ValueError``) and kill whatever thread called it. Here the parse
is pydantic-core's Rust parser (jiter), which refuses nesting past its own bound with a
``ValueError`` and never recurses in Python; the parsed value is then walked with an
explicit stack (no recursion either) against our tighter limits. Every refusal is a
``JsonShapeError`` with a short ``reason`` and a readable text.

Pure: no I/O, no framework; used by the MQTT decoder, the HTTP body guards and the YAML
loaders alike.
"""

import math
from typing import Any

from pydantic_core import from_json

__all__ = [
    "MAX_DEPTH",
    "MAX_ELEMENTS",
    "JsonShapeError",
    "check_shape",
    "loads_bounded",
]

# Our own documents nest at most ~8 levels (a telemetry window's sketch inside a row inside a
# record body inside a batch); 32 leaves room and stays far below any recursive consumer's
# limit (json.dumps, SQLAlchemy's JSON type, Jinja) downstream.
MAX_DEPTH = 32
# A 64 KiB message holds at most ~32k scalars; a config or API body no more than this.
MAX_ELEMENTS = 50_000


class JsonShapeError(ValueError):
    """Input that is not JSON, or JSON beyond the size, depth or element limits.

    ``reason`` is one of ``bad_json``, ``oversized``, ``too_deep``, ``too_many_elements``,
    ``nul_character``.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def check_shape(
    value: Any,
    *,
    max_depth: int = MAX_DEPTH,
    max_elements: int = MAX_ELEMENTS,
    allow_nul: bool = False,
) -> None:
    """Refuse ``value`` (parsed JSON) nested deeper than ``max_depth`` containers, holding
    more than ``max_elements`` values, a non-finite float (JSON has none; a ``1e400``
    parses to infinity, which no database stores) or a string or key with a NUL character
    (valid JSON, but PostgreSQL stores it in neither text nor jsonb) unless ``allow_nul``
    (for documents stored as JSON text, whose readers deal with it). Iterative: any depth
    is safe."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    seen = 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        if seen > max_elements:
            raise JsonShapeError("too_many_elements", f"more than {max_elements} values")
        if isinstance(item, str):
            if not allow_nul and "\x00" in item:
                raise JsonShapeError("nul_character", "a string holds a NUL character")
        elif isinstance(item, dict):
            if depth > max_depth:
                raise JsonShapeError("too_deep", f"nested deeper than {max_depth} levels")
            for key, v in item.items():
                if not allow_nul and "\x00" in key:
                    raise JsonShapeError("nul_character", "a key holds a NUL character")
                stack.append((v, depth + 1))
        elif isinstance(item, list):
            if depth > max_depth:
                raise JsonShapeError("too_deep", f"nested deeper than {max_depth} levels")
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise JsonShapeError("bad_json", "a number is out of range (beyond a double)")


def loads_bounded(
    data: bytes | str,
    *,
    max_bytes: int,
    max_depth: int = MAX_DEPTH,
    max_elements: int = MAX_ELEMENTS,
    allow_nul: bool = False,
) -> Any:
    """Parse untrusted JSON within limits; raises ``JsonShapeError`` and nothing else.

    Refuses NaN and Infinity (not JSON), invalid UTF-8 and lone surrogate escapes (neither
    can be stored), and duplicate keys keep the last value as ``json.loads`` does.
    """
    size = len(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    if size > max_bytes:
        raise JsonShapeError("oversized", f"{size} bytes, the limit is {max_bytes}")
    try:
        value = from_json(data, allow_inf_nan=False)
    except ValueError as e:
        text = str(e)
        if "recursion limit" in text:
            raise JsonShapeError("too_deep", f"nested deeper than {max_depth} levels") from e
        raise JsonShapeError("bad_json", f"not UTF-8 JSON ({text[:200]})") from e
    check_shape(value, max_depth=max_depth, max_elements=max_elements, allow_nul=allow_nul)
    return value
