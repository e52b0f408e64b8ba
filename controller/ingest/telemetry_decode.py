"""A fast decoder for telemetry batches, the bulk of what ingest receives.

``shared.messages.decode_signed`` validates with pydantic and builds a ``Record`` model per
record: ~8 µs a record, most of a batched ingest's CPU. Here a telemetry payload is
decoded by msgspec into frozen structs with the same constraints (~1.3 µs a record), and
what msgspec cannot express (one epoch, increasing seqs, storable times, the body's
depth and size bounds) is checked after it.

It is a fast path only: it returns None for anything it does not accept exactly as
pydantic would, and the caller then decodes with ``decode_signed``, so every refusal keeps
its reason and detail, and every payload it accepts decodes to the same values
(tests/test_telemetry_decode.py compares the two on generated payloads). What it leaves to
the full decoder: payloads holding ``NaN``, ``Infinity`` or ``\\u0000`` (as
``shared.messages._validate`` does), times with more than 6 fractional digits (msgspec
rounds them, pydantic truncates), a missing ``v`` or ``ts`` (pydantic fills defaults),
lax forms pydantic accepts (``1.0`` for an integer, a time without seconds), record bodies
that are not flat, and every defect.

The message it returns is a ``TelemetryBatch`` built without validation whose records are
``RecordFrame`` structs, not ``Record`` models: they have the same fields, values and
types (read-only), which is all ingest reads (``controller.ingest.telemetry_store``'s
``RecordFields``). Such a batch never leaves ingest (it is not re-encoded or dumped).
"""

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from shared.message_signing import SIGNATURE_OVERHEAD, SignedPayload, split
from shared.messages import (
    MAX_BATCH_RECORDS,
    MAX_DOCUMENT_ELEMENTS,
    MAX_INT64,
    MAX_PAYLOAD_BYTES,
    TelemetryBatch,
)
from shared.topics import TOPIC_ROOT, is_valid_device_id

__all__ = ["RecordFrame", "decode_telemetry"]

_Count = Annotated[int, Meta(ge=0, le=MAX_INT64)]
_Time = Annotated[datetime, Meta(tz=True)]
_TELEMETRY_SUFFIX = "/telemetry"
_EMPTY: dict[str, Any] = {}


class RecordFrame(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One outbox record as ``shared.messages.Record`` defines it (same names, bounds)."""

    epoch: _Count
    seq: _Count
    kind: Literal["metric", "event"]
    # ``\\Z``, not ``$``: Python's ``$`` also matches before a final newline, pydantic's
    # (Rust) does not.
    name: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[a-z0-9_.]+\Z")]
    at: _Time
    body: dict[str, Any] = _EMPTY


class _Batch(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    v: Literal[1]
    type: Literal["telemetry"]
    device_id: Annotated[str, Meta(min_length=1, max_length=63)]
    ts: _Time
    records: Annotated[list[RecordFrame], Meta(min_length=1, max_length=MAX_BATCH_RECORDS)]


_DECODER = msgspec.json.Decoder(_Batch)
# A fraction of a second with 7 digits or more: msgspec rounds it to microseconds where
# pydantic truncates. The cheap search finds candidates (a body float such as 0.1234567
# too), the precise one (a time's ``:SS.fffffff``) decides.
_LONG_FRACTION = re.compile(rb"\.\d{7}")
_LONG_TIME_FRACTION = re.compile(rb"\d:\d\d\.\d{7}")
# What a flat body may hold; anything nested goes to the full decoder's bounded walk.
_SCALARS = frozenset((str, int, float, bool, type(None)))


def _refuse_bytes(payload: bytes) -> bool:
    """True when ``payload`` holds something only the full decoder judges correctly."""
    return (
        b"NaN" in payload
        or b"Infinity" in payload
        or b"\\u0000" in payload
        or (
            _LONG_FRACTION.search(payload) is not None
            and _LONG_TIME_FRACTION.search(payload) is not None
        )
    )


def _plain(batch: _Batch) -> bool:
    """True when the batch passes what msgspec cannot check: one epoch, strictly increasing
    seqs, times storable in UTC (years 1-9999) and flat bodies (depth 1, and a 64 KiB
    payload cannot hold ``MAX_DOCUMENT_ELEMENTS`` values in one; msgspec refuses numbers
    beyond a double)."""
    records = batch.records
    epoch = records[0].epoch
    previous = -1
    scalars = _SCALARS
    try:
        batch.ts.astimezone(UTC)
        for r in records:
            if r.epoch != epoch or r.seq <= previous:
                return False
            previous = r.seq
            r.at.astimezone(UTC)
            for value in r.body.values():
                if type(value) not in scalars:
                    return False
    except OverflowError:
        return False
    return True


assert MAX_PAYLOAD_BYTES // 4 < MAX_DOCUMENT_ELEMENTS  # a flat body is within bounds


def decode_telemetry(
    topic: str, payload: bytes
) -> tuple[TelemetryBatch, SignedPayload | None] | None:
    """The telemetry batch on ``topic`` and its split-off signature (None: unsigned), or
    None when the full decoder must judge the payload (anything but a plain, valid
    telemetry batch of the device the topic names). Raises nothing."""
    if (
        not topic.endswith(_TELEMETRY_SUFFIX)
        or len(payload) > MAX_PAYLOAD_BYTES + SIGNATURE_OVERHEAD
    ):
        return None
    try:
        signed = split(payload)
    except Exception:
        return None
    body = payload if signed is None else signed.body
    if not body or len(body) > MAX_PAYLOAD_BYTES or _refuse_bytes(body):
        return None
    parts = topic.split("/")
    if (
        len(parts) != 4
        or f"{parts[0]}/{parts[1]}" != TOPIC_ROOT
        or not is_valid_device_id(parts[2])
    ):
        return None
    try:
        batch = _DECODER.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError, ValueError):
        return None
    if batch.device_id != parts[2] or not _plain(batch):
        return None
    # Built without validation (it was validated above); ``records`` holds ``RecordFrame``
    # structs where the model declares ``Record``: see the module docstring.
    message = TelemetryBatch.model_construct(
        v=1,
        type="telemetry",
        device_id=batch.device_id,
        ts=batch.ts,
        records=batch.records,  # type: ignore[arg-type]
    )
    return message, signed
