"""Device shadow rules, pure (in the manner of AWS IoT Device Shadow).

The controller owns *desired*, the device owns *reported*; each side only moves its own
document forward and ignores anything not newer than what it has, so re-delivery and
reordering of any message is harmless. Documents are JSON objects; nested objects merge.
"""

import json
from typing import Any

from shared.json_guard import JsonShapeError, check_shape
from shared.messages import MAX_DOCUMENT_DEPTH, MAX_DOCUMENT_ELEMENTS, MAX_PAYLOAD_BYTES

JsonObject = dict[str, Any]

# A desired document travels whole in one MQTT message: it must decode on the device
# (shared.messages limits) with room for the envelope.
MAX_SHADOW_DEPTH = MAX_DOCUMENT_DEPTH
MAX_SHADOW_ELEMENTS = MAX_DOCUMENT_ELEMENTS
MAX_SHADOW_BYTES = MAX_PAYLOAD_BYTES - 4096


class ShadowError(ValueError):
    """A patch or merged document the shadow cannot hold; ``reason`` is one of
    ``not_object``, ``not_json``, ``too_deep``, ``too_many_elements``, ``too_large``,
    ``nul_character`` (PostgreSQL stores no NUL in JSON)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def check_document(value: Any, what: str) -> None:
    """``ShadowError`` unless ``value`` is a JSON object within the shadow's depth, element
    and size limits (checked iteratively: any nesting is safe to hand in)."""
    if not isinstance(value, dict):
        raise ShadowError("not_object", f"the {what} is not a JSON object")
    try:
        check_shape(value, max_depth=MAX_SHADOW_DEPTH, max_elements=MAX_SHADOW_ELEMENTS)
    except JsonShapeError as e:
        reason = "not_json" if e.reason == "bad_json" else e.reason
        raise ShadowError(reason, f"the {what}: {e.detail}") from e
    try:
        size = len(json.dumps(value, separators=(",", ":"), allow_nan=False).encode())
    except (TypeError, ValueError) as e:
        raise ShadowError("not_json", f"the {what} holds a value JSON cannot carry: {e}") from e
    if size > MAX_SHADOW_BYTES:
        raise ShadowError(
            "too_large", f"the {what} is {size} bytes as JSON, the limit is {MAX_SHADOW_BYTES}"
        )


def merge_patch(document: JsonObject, patch: JsonObject) -> JsonObject:
    """RFC 7396 JSON merge patch: ``None`` deletes a key, objects merge, the rest replaces.

    The patch and the result are checked against the shadow's limits (``ShadowError``);
    the merge itself walks an explicit stack, so no input makes it recurse.
    """
    check_document(patch, "patch")
    result = dict(document)
    stack: list[tuple[JsonObject, JsonObject]] = [(result, patch)]
    while stack:
        target, part = stack.pop()
        for key, value in part.items():
            if value is None:
                target.pop(key, None)
            elif isinstance(value, dict):
                current = target.get(key)
                child = dict(current) if isinstance(current, dict) else {}
                target[key] = child
                stack.append((child, value))
            else:
                target[key] = value
    check_document(result, "merged document")
    return result


def delta(desired: JsonObject, reported: JsonObject) -> JsonObject:
    """What desired asks for that reported does not show yet (nested objects compared deeply).

    Keys only in reported are not part of the delta: the device may report more than the
    controller asks for. Iterative, so a stored document of any depth is safe.
    """
    out: JsonObject = {}
    stack: list[tuple[JsonObject, JsonObject, JsonObject, JsonObject | None, str]] = []
    stack.append((desired, reported, out, None, ""))
    finished: list[tuple[JsonObject, JsonObject | None, str]] = []
    while stack:
        want_doc, have_doc, sink, parent, name = stack.pop()
        finished.append((sink, parent, name))
        for key, want in want_doc.items():
            have = have_doc.get(key)
            if isinstance(want, dict) and isinstance(have, dict):
                sub: JsonObject = {}
                sink[key] = sub
                stack.append((want, have, sub, sink, key))
            elif key not in have_doc or have != want:
                sink[key] = want
    # Children were created before their contents were known: drop the empty ones, deepest
    # first (a parent emptied by this is dropped in turn, as the recursive form did).
    for sink, parent, name in reversed(finished):
        if parent is not None and not sink:
            del parent[name]
    return out


def is_newer(incoming_version: int, current_version: int | None) -> bool:
    """Apply a document only if its version is above the one already applied."""
    return current_version is None or incoming_version > current_version
