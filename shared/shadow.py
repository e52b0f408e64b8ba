"""Device shadow rules, pure (in the manner of AWS IoT Device Shadow).

The controller owns *desired*, the device owns *reported*; each side only moves its own
document forward and ignores anything not newer than what it has, so re-delivery and
reordering of any message is harmless. Documents are JSON objects; nested objects merge.
"""

from typing import Any

JsonObject = dict[str, Any]


def merge_patch(document: JsonObject, patch: JsonObject) -> JsonObject:
    """RFC 7396 JSON merge patch: ``None`` deletes a key, objects merge, the rest replaces."""
    result = dict(document)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge_patch(result[key], value)
        elif isinstance(value, dict):
            result[key] = merge_patch({}, value)
        else:
            result[key] = value
    return result


def delta(desired: JsonObject, reported: JsonObject) -> JsonObject:
    """What desired asks for that reported does not show yet (nested objects compared deeply).

    Keys only in reported are not part of the delta: the device may report more than the
    controller asks for.
    """
    out: JsonObject = {}
    for key, want in desired.items():
        have = reported.get(key)
        if isinstance(want, dict) and isinstance(have, dict):
            sub = delta(want, have)
            if sub:
                out[key] = sub
        elif key not in reported or have != want:
            out[key] = want
    return out


def is_newer(incoming_version: int, current_version: int | None) -> bool:
    """Apply a document only if its version is above the one already applied."""
    return current_version is None or incoming_version > current_version
