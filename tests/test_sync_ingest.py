"""Telemetry batches and shadows through ingest, on SQLite and PostgreSQL."""

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import func
from sqlmodel import Session, select

from controller.broker.tables import BrokerCredential
from controller.db import make_engine, session_scope
from controller.devices.shadows import DeviceShadow, set_desired, unapplied, view
from controller.ingest.apply import Received, apply_batch
from controller.ingest.tables import RejectedMessage
from controller.migrations import init_db
from controller.services import ProvisionedDevices
from controller.telemetry.tables import TelemetryRecord
from edge_agent.shadow import DeviceShadow as AgentShadow
from shared import encode_message
from shared.messages import Ack, Desired, Record, Reported, TelemetryBatch
from tests.test_ingest_db import NOW, received

BEAT = {"heartbeat_interval_s": 2}


def batch(device_id: str, epoch: int, seqs: range) -> TelemetryBatch:
    return TelemetryBatch(
        device_id=device_id,
        records=[
            Record(epoch=epoch, seq=s, kind="metric", name="m", at=NOW, body={"n": s}) for s in seqs
        ],
    )


def count(session: Session) -> int:
    return int(session.exec(select(func.count()).select_from(TelemetryRecord)).one())


def test_redelivered_and_overlapping_batches_store_each_record_once(database_url: str) -> None:
    """The same batch twice and an overlapping re-send store each (device, epoch, seq) once,
    and every delivery is acknowledged with its high-water mark so the device can trim."""
    engine = make_engine(database_url)
    init_db(engine)
    with session_scope(engine) as session:
        first = apply_batch(session, [received(batch("dev-1", 0, range(0, 50)))])
    with session_scope(engine) as session:
        again = apply_batch(
            session,
            [
                received(batch("dev-1", 0, range(0, 50))),
                received(batch("dev-1", 0, range(40, 60))),
                received(batch("dev-2", 0, range(0, 5))),
            ],
        )
    assert first.outcome == {"batches": 1, "records_inserted": 50}
    assert again.outcome == {"batches": 3, "records_inserted": 15, "records_duplicate": 60}
    assert [(a.device_id, a.epoch, a.first_seq, a.hwm) for a in again.acks] == [
        ("dev-1", 0, 0, 49),
        ("dev-1", 0, 40, 59),
        ("dev-2", 0, 0, 4),
    ]
    with Session(engine) as session:
        assert count(session) == 65
    engine.dispose()


def test_adjacent_batches_of_a_device_get_one_ack_and_others_their_own(
    database_url: str,
) -> None:
    """Batches of one device stored in one transaction whose ranges touch (either order) are
    acknowledged by one ack spanning them; a gap, another epoch or another device keeps its
    own ack, so no record that was not stored is ever acknowledged."""
    engine = make_engine(database_url)
    init_db(engine)
    with session_scope(engine) as session:
        result = apply_batch(
            session,
            [
                received(batch("dev-1", 0, range(10, 20))),
                received(batch("dev-1", 0, range(20, 25))),
                received(batch("dev-1", 0, range(5, 10))),
                received(batch("dev-2", 0, range(0, 3))),
                received(batch("dev-1", 0, range(26, 30))),  # 25 missing: not adjacent
                received(batch("dev-2", 1, range(3, 4))),  # another epoch
            ],
        )
    assert result.outcome == {"batches": 6, "records_inserted": 28}
    assert [(a.device_id, a.epoch, a.first_seq, a.hwm) for a in result.acks] == [
        ("dev-1", 0, 5, 24),
        ("dev-2", 0, 0, 2),
        ("dev-1", 0, 26, 29),
        ("dev-2", 1, 3, 3),
    ]
    engine.dispose()


BODIES: list[dict[str, object]] = [
    {"route": "local", "latency_ms": 412.37, "stream": False, "status": None},
    {"quote": 'a "b" \\ c', "unicode": "é😀", "big": 2**70, "neg": -0.0, "tiny": 5e-324},
    {"nested": {"list": [1, 2.5, {"deep": [None, True]}]}, "empty": {}},
    {"nul": "a\x00b"},
    {},
]


def test_record_bodies_and_times_read_back_as_sent(database_url: str) -> None:
    """Every record's fields read back from the table equal to what the device sent: bodies
    with quotes, backslashes, non-ASCII, a NUL, integers beyond 64 bits and nesting (some
    decoded by the fast path, some by the full one), and times with other offsets."""
    engine = make_engine(database_url)
    init_db(engine)
    offset = timezone(timedelta(hours=-7, minutes=-30))
    sent = TelemetryBatch(
        device_id="dev-1",
        records=[
            Record(
                epoch=2,
                seq=i,
                kind="event",
                name="n.x_1",
                at=NOW.astimezone(offset) + timedelta(microseconds=i),
                body=body,
            )
            for i, body in enumerate(BODIES)
        ],
    )
    with session_scope(engine) as session:
        result = apply_batch(session, [received(sent)])
    assert result.outcome == {"batches": 1, "records_inserted": len(BODIES)}
    with Session(engine) as session:
        rows = session.exec(select(TelemetryRecord).order_by(TelemetryRecord.seq)).all()
        got = [(r.epoch, r.seq, r.kind, r.name, r.at, r.body) for r in rows]
    assert got == [(r.epoch, r.seq, r.kind, r.name, r.at, r.body) for r in sent.records]
    engine.dispose()


def test_controller_kinds_from_devices_and_unprovisioned_devices_are_dead_letters(
    database_url: str,
) -> None:
    """A device publishing an ack or a desired document, or a device the controller never
    provisioned, is refused with its reason; the good batch beside them still lands."""
    engine = make_engine(database_url)
    init_db(engine)
    with session_scope(engine) as session:
        session.add(BrokerCredential(device_id="dev-1", username="dev-1", password_hash="$7$x"))
        session.add(BrokerCredential(device_id="gone", username="gone", password_hash="$7$x",
                                     revoked_at=NOW))  # fmt: skip
    known = ProvisionedDevices(engine)()
    assert known == {"dev-1"}
    forged_ack = encode_message(Ack(device_id="dev-1", epoch=0, first_seq=0, hwm=9))
    forged_desired = encode_message(Desired(device_id="dev-1", version=9, state={}))
    with session_scope(engine) as session:
        result = apply_batch(
            session,
            [
                received(batch("dev-1", 0, range(3))),
                received(batch("gone", 0, range(3))),
                Received(*forged_ack, NOW),
                Received(*forged_desired, NOW),
            ],
            known_devices=known,
        )
    assert result.outcome == {
        "batches": 1,
        "records_inserted": 3,
        "rejected:unknown_device": 1,
        "rejected:wrong_direction": 2,
    }
    with Session(engine) as session:
        reasons = sorted(r.reason for r in session.exec(select(RejectedMessage)))
        assert reasons == ["unknown_device", "wrong_direction", "wrong_direction"]
        assert count(session) == 3
    engine.dispose()


def test_shadow_versions_converge_and_stale_reports_are_ignored(
    database_url: str, tmp_path: Path
) -> None:
    """Desired bumps only on change; the device applies only newer desired versions; the
    controller keeps only newer reports; replaying every message changes nothing."""
    engine = make_engine(database_url)
    init_db(engine)
    device = AgentShadow(
        tmp_path / "shadow.json", device_id="dev-1", defaults={"heartbeat_interval_s": 5.0}
    )
    with session_scope(engine) as session:
        v1 = set_desired(session, "dev-1", BEAT, now=NOW, actor="user:ops").desired_version
        same = set_desired(session, "dev-1", BEAT, now=NOW, actor="user:ops").desired_version
        assert (v1, same) == (1, 1), "a patch that changes nothing does not bump the version"
        row = set_desired(session, "dev-1", {"bogus": True}, now=NOW, actor="user:ops")
        desired_v2 = Desired(device_id="dev-1", version=row.desired_version, state=row.desired)
    desired_v1 = Desired(device_id="dev-1", version=1, state={"heartbeat_interval_s": 2})

    assert device.apply(desired_v2) is not None
    assert device.apply(desired_v1) is None, "an older desired version is ignored"
    assert device.apply(desired_v2) is None, "a re-delivered desired version is ignored"
    report_old = device.report()
    report_new = device.report()
    assert report_new.rejected == {"bogus": "not a setting this agent supports"}

    later = NOW + timedelta(seconds=1)
    with session_scope(engine) as session:
        outcome = apply_batch(
            session,
            [received(report_new, later), received(report_old, later), received(report_new, later)],
        ).outcome
    assert outcome == {"reported": 1, "stale": 2}
    with Session(engine) as session:
        stored = session.get(DeviceShadow, "dev-1")
        assert stored is not None
        shown = view(stored)
        assert shown["in_sync"] and shown["applied_desired_version"] == 2
        assert shown["reported"]["heartbeat_interval_s"] == 2.0
        assert shown["delta"] == {"bogus": True}, "the refused key stays in the delta"
        assert unapplied(session) == []

    reopened = AgentShadow(
        tmp_path / "shadow.json", device_id="dev-1", defaults={"heartbeat_interval_s": 5.0}
    )
    assert reopened.apply(desired_v2) is None, "the applied version survives a restart"
    assert reopened.report().version == report_new.version + 1, "report versions never repeat"
    engine.dispose()


def test_reported_from_a_restarted_device_is_accepted_by_version_not_by_time(
    database_url: str,
) -> None:
    """Reports are ordered by the device's version, whatever order they arrive in."""
    engine = make_engine(database_url)
    init_db(engine)
    reports = [
        Reported(
            device_id="dev-9", version=v, applied_desired_version=0, state={"v": v}, rejected={}
        )
        for v in (3, 1, 2, 5, 4)
    ]
    with session_scope(engine) as session:
        outcome = apply_batch(session, [received(r, datetime.now(UTC)) for r in reports]).outcome
    assert outcome == {"reported": 2, "stale": 3}
    with Session(engine) as session:
        row = session.get(DeviceShadow, "dev-9")
        assert row is not None and (row.reported_version, row.reported) == (5, {"v": 5})
    engine.dispose()


def test_a_record_time_the_database_cannot_hold_is_a_dead_letter(database_url: str) -> None:
    """A record whose time is valid but outside years 1-9999 in UTC is refused (schema) with
    its message; the good batch beside it lands and ingest is not stuck retrying."""
    engine = make_engine(database_url)
    init_db(engine)
    # Built without validation: the decoder refuses such a record (``schema``) before
    # ingest applies it; this pins that the refusal is a dead letter, not a stuck batch.
    odd = TelemetryBatch(
        device_id="dev-1",
        records=[
            Record.model_construct(
                epoch=0,
                seq=0,
                kind="metric",
                name="m",
                at=datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))),
                body={},
            )
        ],
    )
    with session_scope(engine) as session:
        result = apply_batch(session, [received(odd), received(batch("dev-2", 0, range(3)))])
    assert result.outcome == {"rejected:schema": 1, "batches": 1, "records_inserted": 3}
    with Session(engine) as session:
        assert count(session) == 3
        stored = session.exec(select(TelemetryRecord).where(TelemetryRecord.device_id == "dev-2"))
        row = next(iter(stored))
        assert row.at.replace(tzinfo=UTC) == NOW and row.body == {"n": 0}
    engine.dispose()
