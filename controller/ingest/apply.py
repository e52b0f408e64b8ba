"""Applying received device messages to the registry, in batches, one transaction each.

Malformed, spoofed or oversized messages become dead letters with their reason (never their
payload, which may hold anything) and are counted; they never stop the batch.

Two steps: ``classify`` (decode and check one message; raises only ``ProtocolError``, no
database) and ``apply_decoded`` (write a batch of classified messages in the caller's
transaction). The MQTT shell classifies on arrival, so refusals never reach the writer's
transaction; ``apply_batch`` does both for callers that hold raw messages.
"""

import functools
import json
import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import TextualSelect, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from controller.devices.liveness import (
    Decision,
    Liveness,
    is_overdue,
    on_birth,
    on_death,
    on_heartbeat,
)
from controller.devices.shadows import DeviceShadow, apply_reported
from controller.devices.tables import Device, DeviceStatusEvent
from controller.ingest.plausibility import (
    REASON as IMPLAUSIBLE,
)
from controller.ingest.plausibility import (
    Bound,
    Bounds,
    check_advance,
    check_heartbeat,
    check_telemetry,
)
from controller.ingest.signatures import (
    SignatureRules,
    default_rules,
    refuse_unverified,
    remember_session,
)
from controller.ingest.tables import RejectedMessage
from controller.ingest.telemetry_decode import decode_telemetry
from controller.ingest.telemetry_store import PendingRecords, PreparedRows, prepare_rows
from controller.settings import PlausibilitySettings
from controller.telemetry.tables import TelemetryRecord
from shared.errors import ProtocolError
from shared.message_signing import SignedPayload
from shared.messages import (
    Ack,
    AnyMessage,
    Birth,
    CertIssued,
    CertRequest,
    Challenge,
    ControllerKeys,
    Death,
    Desired,
    Heartbeat,
    Quote,
    Reported,
    TelemetryBatch,
    decode_signed,
)
from shared.topics import TOPIC_ROOT, is_valid_device_id

if TYPE_CHECKING:
    from controller.attestation.service import AttestationService, Outbound
    from controller.pki.renewal import RenewalService

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Received:
    """One message as it came off the broker."""

    topic: str
    payload: bytes
    received_at: datetime


class IngestStats:
    """Thread-safe counters for what ingest accepted, ignored and rejected."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.accepted = 0
        self.batches = 0
        self.records_inserted = 0
        self.records_duplicate = 0
        self.reported = 0
        self.duplicates = 0
        self.stale = 0
        self.quotes = 0
        self.certificates_issued = 0
        self.db_errors = 0
        self.dropped_queue_full = 0
        # Exceptions caught by the last-resort guards of paho callbacks (defects of ours).
        self.callback_errors = 0
        # Rejections counted but not stored as dead letters (rate-limited, or pruned by
        # the caps), see controller/ingest/limits.py.
        self.rejections_dropped = 0
        # Devices asked to publish their birth again (a MAC under a session never heard).
        self.rebirths_requested = 0
        self.rejected: Counter[str] = Counter()

    def add(self, field: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, field, getattr(self, field) + n)

    def add_rejected(self, reason: str) -> None:
        """Count one refused message (the reader's path: no Counter per message)."""
        with self._lock:
            self.rejected[reason] += 1

    def merge(self, outcome: Counter[str]) -> None:
        """Add a committed batch's outcome (``rejected:<reason>`` keys count rejects)."""
        with self._lock:
            for key, n in outcome.items():
                if key.startswith("rejected:"):
                    self.rejected[key.removeprefix("rejected:")] += n
                else:
                    setattr(self, key, getattr(self, key) + n)

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {
                "accepted": self.accepted,
                "batches": self.batches,
                "records_inserted": self.records_inserted,
                "records_duplicate": self.records_duplicate,
                "reported": self.reported,
                "duplicates": self.duplicates,
                "stale": self.stale,
                "quotes": self.quotes,
                "certificates_issued": self.certificates_issued,
                "db_errors": self.db_errors,
                "dropped_queue_full": self.dropped_queue_full,
                "callback_errors": self.callback_errors,
                "rejections_dropped": self.rejections_dropped,
                "rebirths_requested": self.rebirths_requested,
                "rejected": dict(self.rejected),
                "rejected_total": sum(self.rejected.values()),
            }


def _liveness(device: Device | None) -> Liveness | None:
    if device is None:
        return None
    state = device.state if device.state in ("online", "offline") else "unknown"
    return Liveness(state=state, bd_seq=device.bd_seq, last_heartbeat_seq=device.last_heartbeat_seq)  # type: ignore[arg-type]


def _decide(device: Device | None, message: Birth | Death | Heartbeat) -> Decision:
    current = _liveness(device)
    if isinstance(message, Birth):
        return on_birth(current, message.bd_seq)
    if isinstance(message, Death):
        return on_death(current, message.bd_seq, message.reason)
    return on_heartbeat(current, message.bd_seq, message.seq)


def bounds_from(settings: PlausibilitySettings) -> Bounds:
    """The pure rules' bounds from the ``plausibility`` settings."""
    s = settings
    return Bounds(
        heartbeat_seq=Bound(s.heartbeat_seq_slack, s.heartbeat_seq_per_s),
        bd_seq=Bound(s.bd_seq_slack, s.bd_seq_per_s),
        reported_version=Bound(s.reported_version_slack, s.reported_version_per_s),
        telemetry_seq=Bound(s.telemetry_seq_slack, s.telemetry_seq_per_s),
        telemetry_epoch=Bound(s.telemetry_epoch_slack, s.telemetry_epoch_per_s),
    )


def _implausible_status(
    device: Device | None, message: Birth | Death | Heartbeat, now: datetime, bounds: Bounds
) -> str | None:
    """Why a birth's or heartbeat's counters cannot come from the device (None: they can).
    A lower ``bd_seq`` is not a jump (a reflashed device starts again; a stale message is
    ignored by the liveness rules); a death never moves a mark."""
    if device is None or isinstance(message, Death):
        return None
    refusal = check_advance(
        "bd_seq", message.bd_seq, device.bd_seq, device.last_seen, now, bounds.bd_seq
    )
    if refusal is not None or not isinstance(message, Heartbeat):
        return refusal
    if device.bd_seq is not None and message.bd_seq < device.bd_seq:
        return None
    return check_heartbeat(
        seq=message.seq,
        bd_seq=message.bd_seq,
        mark_seq=device.last_heartbeat_seq,
        mark_bd_seq=device.bd_seq,
        since=device.last_heartbeat_at or device.last_seen,
        now=now,
        bounds=bounds,
    )


def _apply_fields(device: Device, message: Birth | Death | Heartbeat, at: datetime) -> None:
    if isinstance(message, Birth):
        hw = message.hardware
        device.device_class = hw.device_class
        device.arch = hw.arch
        device.accelerator = hw.accelerator
        device.agent_version = message.agent_version
        device.runtimes = list(message.runtimes)
        device.models = [m.model_dump() for m in message.models]
        device.api_url = message.api_url
        device.heartbeat_interval_s = message.heartbeat_interval_s
        if message.session_key is not None and message.controller_key_ids:
            device.sessions = remember_session(
                device.sessions, message.session_key, message.controller_key_ids[0]
            )
        if device.bd_seq is None or message.bd_seq <= device.bd_seq:
            # Numbering starts again (a reflashed device): seq compares from here on.
            # Otherwise the device's heartbeat seq goes on across sessions (never reused).
            device.last_heartbeat_seq = None
            device.last_heartbeat_at = None
        device.bd_seq = message.bd_seq
    elif isinstance(message, Heartbeat):
        device.bd_seq = message.bd_seq
        device.last_heartbeat_seq = message.seq
        device.last_heartbeat_at = at
        device.cpu_percent = message.cpu_percent
        device.memory_percent = message.memory_percent
        device.requests_total = message.requests_total
        device.local_tier_healthy = message.local_tier_healthy


def apply_message(
    session: Session,
    devices: dict[str, Device],
    message: Birth | Death | Heartbeat,
    received_at: datetime,
    bounds: Bounds | None = None,
) -> str:
    """Apply one valid message (in the caller's transaction); returns accepted/stale/
    duplicates, or ``implausible_seq: <detail>`` for counters the device cannot have sent
    (refused, flagged in the device's status history, no mark moved)."""
    device = devices.get(message.device_id)
    implausible = _implausible_status(device, message, received_at, bounds or Bounds())
    if implausible is not None:
        flag_implausible(session, message.device_id, received_at, implausible)
        return f"{IMPLAUSIBLE}: {implausible}"
    decision = _decide(device, message)
    if decision.event and not decision.apply:
        session.add(
            DeviceStatusEvent(
                device_id=message.device_id,
                at=received_at,
                event=decision.event,
                bd_seq=getattr(message, "bd_seq", None),
            )
        )
    if not decision.apply:
        return "duplicates" if decision.duplicate else "stale"
    if device is None:
        device = Device(id=message.device_id, first_seen=received_at)
        session.add(device)
        devices[device.id] = device
    _apply_fields(device, message, received_at)
    device.last_seen = received_at
    if decision.state is not None and (
        decision.state != device.state or decision.reason != device.state_reason
    ):
        device.state = decision.state
        device.state_reason = decision.reason
        device.state_changed_at = received_at
    if decision.event:
        session.add(
            DeviceStatusEvent(
                device_id=message.device_id,
                at=received_at,
                event=decision.event,
                bd_seq=message.bd_seq,
                detail=decision.reason,
            )
        )
    return "accepted"


def flag_implausible(session: Session, device_id: str, at: datetime, detail: str) -> None:
    """Flag a refused jump on the device: an ``implausible_seq`` entry in its status
    history (``GET /api/devices/{id}/events``), beside the dead letter."""
    session.add(
        DeviceStatusEvent(device_id=device_id, at=at, event=IMPLAUSIBLE, detail=detail[:1024])
    )


_Newest = tuple[int, int, datetime] | None

# The newest stored record of each listed device, in one statement: per device, the unique
# index (device_id, epoch, seq) read backwards for one id, then those rows by primary key.
_NEWEST_SQL = {
    "sqlite": "json_each(:ids) AS d",
    "postgresql": "unnest(CAST(:ids AS varchar[])) AS d(value)",
}
_NEWEST = (
    "SELECT t.device_id, t.epoch, t.seq, t.received_at FROM telemetry_record AS t "
    "WHERE t.id IN (SELECT (SELECT u.id FROM telemetry_record AS u "
    "WHERE u.device_id = d.value ORDER BY u.epoch DESC, u.seq DESC LIMIT 1) FROM {ids})"
)


@functools.cache
def _newest_statement(dialect: str) -> TextualSelect:
    """``_NEWEST`` for ``dialect``, its columns typed as the table's (SQLite's times parsed)."""
    table = TelemetryRecord.__table__  # type: ignore[attr-defined]
    return text(_NEWEST.format(ids=_NEWEST_SQL[dialect])).columns(
        table.c.device_id, table.c.epoch, table.c.seq, table.c.received_at
    )


class _TelemetryMarks:
    """What is stored of a device's telemetry: the newest record of every device of the
    batch in one query (``load``), older epochs through the unique index (device_id,
    epoch, seq) when a batch names one."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._newest: dict[str, _Newest] = {}
        self._epochs: dict[tuple[str, int], tuple[int, datetime] | None] = {}

    def load(self, device_ids: set[str]) -> None:
        """Read the newest stored record of each of ``device_ids`` not read yet."""
        ids = sorted(device_ids - self._newest.keys())
        if not ids:
            return
        dialect = self._session.get_bind().dialect.name
        param: str | list[str] = json.dumps(ids) if dialect == "sqlite" else ids
        rows = self._session.connection().execute(_newest_statement(dialect), {"ids": param})
        self._newest.update(dict.fromkeys(ids))
        for device_id, epoch, seq, received_at in rows:
            self._newest[device_id] = (epoch, seq, received_at)

    def newest(self, device_id: str) -> _Newest:
        if device_id not in self._newest:
            self.load({device_id})
        return self._newest[device_id]

    def epoch(self, device_id: str, epoch: int) -> tuple[int, datetime] | None:
        newest = self.newest(device_id)
        if newest is not None and newest[0] == epoch:
            return newest[1], newest[2]
        key = (device_id, epoch)
        if key not in self._epochs:
            row = self._session.exec(
                select(TelemetryRecord.seq, TelemetryRecord.received_at)
                .where(TelemetryRecord.device_id == device_id, TelemetryRecord.epoch == epoch)
                .order_by(col(TelemetryRecord.seq).desc())
                .limit(1)
            ).first()
            self._epochs[key] = None if row is None else (row[0], row[1])
        return self._epochs[key]

    def check(self, message: TelemetryBatch, now: datetime, bounds: Bounds) -> None:
        """Refuse (``implausible_seq``) a batch that jumps past what is stored."""
        epoch, last_seq = message.records[0].epoch, message.records[-1].seq
        newest = self.newest(message.device_id)
        if newest is None:
            return  # first contact: any valid numbering
        refusal = check_telemetry(
            epoch=epoch,
            last_seq=last_seq,
            newest=newest,
            epoch_mark=self.epoch(message.device_id, epoch) if epoch <= newest[0] else None,
            now=now,
            bounds=bounds,
        )
        if refusal is not None:
            raise ProtocolError(IMPLAUSIBLE, refusal)


def _check_reported(session: Session, message: Reported, now: datetime, bounds: Bounds) -> None:
    """Refuse (``implausible_seq``) a report whose version jumps past the stored one."""
    row = session.get(DeviceShadow, message.device_id)
    if row is None or not row.reported_version:
        return  # first report: any version
    refusal = check_advance(
        "reported version",
        message.version,
        row.reported_version,
        row.reported_updated_at,
        now,
        bounds.reported_version,
    )
    if refusal is not None:
        raise ProtocolError(IMPLAUSIBLE, refusal)


def _add_records(
    records: PendingRecords, message: TelemetryBatch, prepared: PreparedRows | None
) -> None:
    """Queue a batch's records for the insert (``prepared``: already in their stored form).
    A record time that is valid but cannot be stored (its UTC value is outside years
    1-9999) is refused here as ``schema``: left to the insert, it would fail the
    transaction, and the writer would retry it forever."""
    try:
        records.add(message.device_id, message.records, prepared)
    except OverflowError as e:
        raise ProtocolError("schema", f"records: a time out of the storable range ({e})") from e


@dataclass
class BatchResult:
    """What one ingest batch did, and the acks to send once it is committed."""

    outcome: Counter[str] = field(default_factory=Counter)
    acks: list[Ack] = field(default_factory=list)
    # Attestation challenges, desired documents (retained) and certificate renewal answers
    # to publish after commit.
    outbound: list["Outbound | CertIssued"] = field(default_factory=list)
    # Messages refused while applying (``apply_decoded``), for the caller to dead-letter.
    refused: list[tuple[Received, ProtocolError]] = field(default_factory=list)
    # Where each device's latest ack is in ``acks``.
    _ack_at: dict[str, int] = field(default_factory=dict, repr=False)

    def ack(self, message: TelemetryBatch) -> None:
        """Acknowledge a stored telemetry batch: one ack, or the device's previous ack of this
        transaction widened when the two ranges are adjacent (same epoch, no seq between).
        Each ack is signed when it is sent (an Ed25519 signature, the largest cost of a
        one-record message), and a device retires every in-flight batch an ack covers and
        deletes exactly the records in its range, so one ack for both says the same."""
        epoch, first, hwm = (
            message.records[0].epoch,
            message.records[0].seq,
            message.records[-1].seq,
        )
        at = self._ack_at.get(message.device_id)
        if at is not None:
            previous = self.acks[at]
            if previous.epoch == epoch and (
                previous.hwm + 1 == first or hwm + 1 == previous.first_seq
            ):
                self.acks[at] = previous.model_copy(
                    update={
                        "first_seq": min(first, previous.first_seq),
                        "hwm": max(hwm, previous.hwm),
                    }
                )
                return
        self._ack_at[message.device_id] = len(self.acks)
        self.acks.append(Ack(device_id=message.device_id, epoch=epoch, first_seq=first, hwm=hwm))


@dataclass(frozen=True, slots=True)
class Decoded:
    """A message that passed ``classify``, with what it arrived as."""

    received: Received
    message: AnyMessage
    # The device's signature, split off for the writer to verify (None: unsigned).
    signed: SignedPayload | None = None
    # A telemetry batch's rows in their stored form, when ``classify`` was told the
    # database: built in the thread that decodes, so the writer's thread only inserts.
    rows: PreparedRows | None = None


def topic_device(topic: str) -> str | None:
    """The device id a topic names (``ef/v1/<id>/...``), if it names a valid one."""
    parts = topic.split("/", 3)
    if len(parts) >= 3 and "/".join(parts[:2]) == TOPIC_ROOT and is_valid_device_id(parts[2]):
        return parts[2]
    return None


def check_known(message: AnyMessage, known_devices: set[str] | None) -> None:
    """Refuse a device without live broker credentials (when that check is on)."""
    if known_devices is not None and message.device_id not in known_devices:
        raise ProtocolError("unknown_device", f"device {message.device_id!r} is not provisioned")


def classify(
    item: Received,
    *,
    known_devices: set[str] | None,
    attestation_on: bool,
    renewal_on: bool = False,
    dialect: str | None = None,
) -> Decoded:
    """Decode and check one message without touching the database; raises only
    ``ProtocolError``. ``known_devices``: see ``apply_batch``. With the database's
    ``dialect``, a telemetry batch's rows are prepared too (``Decoded.rows``): the MQTT
    shell decodes in its network thread while the writer's thread inserts, and SQLite and
    PostgreSQL do their work without the GIL, so the two overlap."""
    message: AnyMessage
    fast = decode_telemetry(item.topic, item.payload)
    if fast is not None:
        message, signed = fast
    else:
        _, message, signed = decode_signed(item.topic, item.payload)
    check_known(message, known_devices)
    if isinstance(message, Ack | Desired | Challenge | CertIssued | ControllerKeys):
        raise ProtocolError("wrong_direction", f"{message.type!r} goes to devices, not from them")
    if isinstance(message, Quote) and not attestation_on:
        raise ProtocolError("unexpected_quote", "attestation is off on this controller")
    if isinstance(message, CertRequest) and not renewal_on:
        raise ProtocolError(
            "unexpected_cert_request", "this controller has no device CA to renew certificates"
        )
    rows = None
    if dialect is not None and isinstance(message, TelemetryBatch):
        try:
            rows = prepare_rows(dialect, message.device_id, message.records)
        except OverflowError:
            rows = None  # refused by the writer with its reason (``_add_records``)
    return Decoded(item, message, signed, rows)


def apply_batch(
    session: Session,
    batch: list[Received],
    *,
    known_devices: set[str] | None = None,
    attestation: "AttestationService | None" = None,
    stored_at: datetime | None = None,
    renewal: "RenewalService | None" = None,
) -> BatchResult:
    """Decode and apply ``batch``; bad messages become dead letters (a row each, in this
    transaction), good ones still land.

    ``stored_at`` is the time of this write, stamped on the telemetry rows as their
    ``received_at`` (the rollup's commit-lag clock, docs/telemetry.md): the writer passes
    its clock when it writes the batch. Without it, the newest message's ``received_at`` is
    used (callers that feed messages as they arrive, and tests at an injected time).

    ``known_devices``, when given, is the set of provisioned device ids: messages from any
    other device are refused (``unknown_device``) even if the broker let them through.
    Counts go in the result for the caller to add to ``IngestStats`` once committed.
    """
    decoded: list[Decoded] = []
    refused: list[tuple[Received, ProtocolError]] = []
    for item in batch:
        try:
            decoded.append(
                classify(
                    item,
                    known_devices=known_devices,
                    attestation_on=attestation is not None,
                    renewal_on=renewal is not None,
                )
            )
        except ProtocolError as e:
            refused.append((item, e))
    # The newest arrival of the whole batch, refused ones included, stamps the records.
    stamp = stored_at or max((item.received_at for item in batch), default=None)
    result = apply_decoded(
        session, decoded, attestation=attestation, stored_at=stamp, renewal=renewal
    )
    result.outcome.update(Counter(f"rejected:{error.reason}" for _, error in refused))
    for item, error in [*refused, *result.refused]:
        log.warning("rejected message on %.128r: %s", item.topic, error)
        session.add(
            RejectedMessage(
                received_at=item.received_at,
                last_at=item.received_at,
                device_id=topic_device(item.topic),
                topic=item.topic[:256],
                reason=error.reason,
                detail=error.detail[:1024],
                size=len(item.payload),
            )
        )
    return result


def _refuse_revoked(session: Session, batch: list[Decoded], result: BatchResult) -> list[Decoded]:
    """Drop (and list as refused, ``revoked``) the messages of decommissioned devices.

    Read in the batch's own transaction, one query per batch: a message that arrives after
    ``edgefleet devices revoke`` committed is refused, even while the broker still carries
    the device's old connection (a CRL is checked only when a connection is made)."""
    ids = {decoded.message.device_id for decoded in batch}
    if not ids:
        return batch
    revoked = set(
        session.exec(select(Device.id).where(col(Device.id).in_(ids), col(Device.decommissioned)))
    )
    if not revoked:
        return batch
    kept: list[Decoded] = []
    for decoded in batch:
        device_id = decoded.message.device_id
        if device_id not in revoked:
            kept.append(decoded)
            continue
        error = ProtocolError("revoked", f"device {device_id!r} is revoked (decommissioned)")
        result.outcome[f"rejected:{error.reason}"] += 1
        result.refused.append((decoded.received, error))
    return kept


def apply_decoded(
    session: Session,
    batch: list[Decoded],
    *,
    attestation: "AttestationService | None" = None,
    stored_at: datetime | None = None,
    renewal: "RenewalService | None" = None,
    bounds: Bounds | None = None,
    signatures: SignatureRules | None = None,
) -> BatchResult:
    """Apply classified messages in the caller's transaction. A message refused here (from
    a decommissioned device, a record time the database cannot hold, a counter that jumps
    implausibly far: ``bounds``, defaults without) is counted in ``outcome`` and listed in
    ``refused`` for the caller to dead-letter; the others still land. A refused telemetry
    batch gets no ack, so its device keeps (and re-sends) its records."""
    result = BatchResult()
    outcome = result.outcome
    bounds = bounds or Bounds()
    marks = _TelemetryMarks(session)
    status: list[tuple[Birth | Death | Heartbeat, Received]] = []
    quotes: list[tuple[Quote, datetime]] = []
    renewals: list[Decoded] = []
    records = PendingRecords(session)
    batch = _refuse_revoked(session, batch, result)
    batch = refuse_unverified(session, batch, result, signatures or default_rules(attestation))
    telemetry = {d.message.device_id for d in batch if isinstance(d.message, TelemetryBatch)}
    if telemetry:
        marks.load(telemetry)
    for decoded in batch:
        item, message = decoded.received, decoded.message
        try:
            if isinstance(message, TelemetryBatch):
                marks.check(message, item.received_at, bounds)
                _add_records(records, message, decoded.rows)
            elif isinstance(message, Reported):
                _check_reported(session, message, item.received_at, bounds)
        except ProtocolError as e:
            outcome[f"rejected:{e.reason}"] += 1
            result.refused.append((item, e))
            if e.reason == IMPLAUSIBLE:
                flag_implausible(session, message.device_id, item.received_at, e.detail)
            continue
        if isinstance(message, TelemetryBatch):
            result.ack(message)
            outcome["batches"] += 1
        elif isinstance(message, Reported):
            fresh = apply_reported(session, message, now=item.received_at)
            outcome["reported" if fresh else "stale"] += 1
        elif isinstance(message, Quote):
            quotes.append((message, item.received_at))
        elif isinstance(message, CertRequest):
            renewals.append(decoded)
        elif isinstance(message, Birth | Death | Heartbeat):
            status.append((message, item))
        else:  # classify refuses controller-to-device kinds; never here
            raise ValueError(f"{message.type!r} is not a device-to-controller message")
    if records:
        stamp = stored_at or max(d.received.received_at for d in batch)
        inserted = records.insert(stamp)
        outcome["records_inserted"] += inserted
        if len(records) > inserted:
            outcome["records_duplicate"] += len(records) - inserted
    # One SELECT for every device in the batch; rows are then updated in memory and
    # flushed once at commit (a get() per message cost a query and an autoflush each).
    ids = {message.device_id for message, _ in status}
    devices = {d.id: d for d in session.exec(select(Device).where(col(Device.id).in_(ids)))}
    if len(devices) < len(ids):
        devices |= _register_devices(session, status, ids - devices.keys())
    births: list[tuple[Birth, datetime]] = []
    with session.no_autoflush:
        for message, item in status:
            applied = apply_message(session, devices, message, item.received_at, bounds)
            if applied.startswith(IMPLAUSIBLE):
                error = ProtocolError(IMPLAUSIBLE, applied.removeprefix(f"{IMPLAUSIBLE}: "))
                outcome[f"rejected:{IMPLAUSIBLE}"] += 1
                result.refused.append((item, error))
                continue
            outcome[applied] += 1
            if applied == "accepted" and isinstance(message, Birth):
                births.append((message, item.received_at))
    if attestation is not None:
        _attest(session, attestation, devices, births, quotes, result)
    if renewal is not None:
        _renew(session, renewal, renewals, result)
    return result


def _register_devices(
    session: Session, status: list[tuple[Birth | Death | Heartbeat, Received]], new: set[str]
) -> dict[str, Device]:
    """Rows for devices heard of for the first time, made with ``INSERT … ON CONFLICT DO
    NOTHING`` and read back: two controller replicas hearing a new device's birth and its
    heartbeat at once both create it, and a plain insert failed one replica's whole batch
    on the primary key (its writer restarted and went on one message at a time)."""
    first_seen: dict[str, datetime] = {}
    for message, item in status:
        if message.device_id in new:
            at = item.received_at
            first_seen[message.device_id] = min(first_seen.get(message.device_id, at), at)
    table = Device.__table__  # type: ignore[attr-defined]
    rows = []
    for device_id, at in sorted(first_seen.items()):
        device = Device(id=device_id, first_seen=at)
        rows.append({c.name: getattr(device, c.name) for c in table.columns})
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(insert(table).on_conflict_do_nothing(index_elements=["id"]), rows)
    return {d.id: d for d in session.exec(select(Device).where(col(Device.id).in_(new)))}


def _renew(
    session: Session, renewal: "RenewalService", requests: list[Decoded], result: BatchResult
) -> None:
    """Answer each certificate renewal request (controller/pki/renewal.py) in the batch's
    transaction; the answers go out after commit, refusals are dead-lettered too."""
    for decoded in requests:
        message = decoded.message
        assert isinstance(message, CertRequest)
        try:
            answer, error = renewal.on_request(session, message, decoded.received.received_at)
        except SQLAlchemyError:
            raise
        except Exception:
            log.exception("certificate renewal failed on a request of %s", message.device_id)
            result.outcome["rejected:renewal_error"] += 1
            continue
        result.outbound.append(answer)
        if error is None:
            result.outcome["certificates_issued"] += 1
        else:
            result.outcome[f"rejected:{error.reason}"] += 1
            result.refused.append((decoded.received, error))


def _attest(
    session: Session,
    attestation: "AttestationService",
    devices: dict[str, Device],
    births: list[tuple[Birth, datetime]],
    quotes: list[tuple[Quote, datetime]],
    result: BatchResult,
) -> None:
    """Challenge after each accepted birth and judge each quote, in the batch's transaction.

    Database errors propagate (the batch is retried); any other failure is logged and
    counted as ``rejected:attestation_error`` so one odd message never stops ingest.
    """
    for birth, received_at in births:
        try:
            device = devices[birth.device_id]
            result.outbound += attestation.on_birth(session, device, birth, received_at)
        except SQLAlchemyError:
            raise
        except Exception:
            log.exception("attestation failed on the birth of %s", birth.device_id)
            result.outcome["rejected:attestation_error"] += 1
    for quote, received_at in quotes:
        try:
            verdict, outbound = attestation.on_quote(session, quote, received_at)
        except SQLAlchemyError:
            raise
        except Exception:
            log.exception("attestation failed on a quote of %s", quote.device_id)
            result.outcome["rejected:attestation_error"] += 1
            continue
        result.outbound += outbound
        result.outcome["duplicates" if verdict.duplicate else "quotes"] += 1


def sweep_liveness(
    session: Session, now: datetime, missed_heartbeats: int, heard_since: datetime | None = None
) -> list[str]:
    """Mark online devices that stopped talking as offline (silence counted from
    ``heard_since`` at the earliest: controller/replicas.py); returns their ids."""
    overdue = []
    for device in session.exec(select(Device).where(col(Device.state) == "online")):
        last, interval = device.last_seen, device.heartbeat_interval_s
        if is_overdue(last, interval, missed_heartbeats, now, heard_since):
            device.state = "offline"
            device.state_reason = "heartbeat_timeout"
            device.state_changed_at = now
            session.add(
                DeviceStatusEvent(
                    device_id=device.id,
                    at=now,
                    event="heartbeat_timeout",
                    bd_seq=device.bd_seq,
                    detail=f"no message for {missed_heartbeats} heartbeat intervals",
                )
            )
            overdue.append(device.id)
    return overdue
