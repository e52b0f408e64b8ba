"""Canonical JSON: one byte string per value, so signatures and dedupe keys are stable.

Keys sorted, no insignificant whitespace, UTF-8, no NaN/Infinity (they are not JSON).
"""

import json
from typing import Any


def canonical_json(value: Any) -> bytes:
    """Encode ``value`` as canonical JSON bytes; raises ``ValueError`` for NaN or Infinity."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")
