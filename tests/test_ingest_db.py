"""Ingest applies device messages to the registry on SQLite and PostgreSQL."""

import json
import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlmodel import Session, select

from controller.db import make_engine, session_scope
from controller.devices.tables import Device, DeviceStatusEvent
from controller.ingest.apply import Received, apply_batch, sweep_liveness
from controller.ingest.tables import RejectedMessage
from controller.migrations import init_db
from shared import Death, Heartbeat, encode_message
from tests.conftest import wait_for
from tests.test_protocol import birth, heartbeat_doc

NOW = datetime(2026, 11, 25, 6, 0, tzinfo=UTC)


def received(message: object, at: datetime = NOW) -> Received:
    topic, payload = encode_message(message)  # type: ignore[arg-type]
    return Received(topic, payload, at)


def test_birth_heartbeat_and_will_drive_the_registry(database_url: str) -> None:
    """Birth registers a device online, heartbeats update it, its own will takes it offline."""
    engine = make_engine(database_url)
    init_db(engine)
    hb = Heartbeat.model_validate(heartbeat_doc(bd_seq=3, seq=1, requests_total=4))
    with session_scope(engine) as session:
        outcome = apply_batch(session, [received(birth(bd_seq=3)), received(hb)]).outcome
    assert outcome == {"accepted": 2}
    with Session(engine) as session:
        device = session.get(Device, "dev-1")
        assert device is not None
        assert (device.state, device.device_class, device.requests_total) == (
            "online",
            "x86_64-cpu",
            4,
        )
        assert device.models[0]["name"] == "m"
    with session_scope(engine) as session:
        apply_batch(session, [received(Death(device_id="dev-1", bd_seq=3, reason="will"))])
    with Session(engine) as session:
        device = session.get(Device, "dev-1")
        assert device is not None
        assert (device.state, device.state_reason) == ("offline", "will")
        events = [
            e.event for e in session.exec(select(DeviceStatusEvent).order_by(DeviceStatusEvent.id))
        ]  # type: ignore[arg-type]
        assert events == ["birth", "death"]
    engine.dispose()


def test_bad_messages_become_dead_letters_and_good_ones_still_land(database_url: str) -> None:
    """One batch mixing junk and a valid birth stores the birth and one dead letter per reject."""
    engine = make_engine(database_url)
    init_db(engine)
    spoofed = json.dumps(heartbeat_doc(device_id="dev-1")).encode()
    batch = [
        Received("ef/v1/dev-9/heartbeat", spoofed, NOW),
        Received("ef/v1/dev-1/status", b"\x00garbage", NOW),
        received(birth("dev-2")),
        Received("ef/v7/dev-1/status", b"{}", NOW),
    ]
    with session_scope(engine) as session:
        outcome = apply_batch(session, batch).outcome
    assert outcome == {
        "accepted": 1,
        "rejected:spoofed_device_id": 1,
        "rejected:bad_json": 1,
        "rejected:bad_topic": 1,
    }
    with Session(engine) as session:
        assert session.get(Device, "dev-2") is not None
        assert session.get(Device, "dev-9") is None
        reasons = sorted(r.reason for r in session.exec(select(RejectedMessage)))
        assert reasons == ["bad_json", "bad_topic", "spoofed_device_id"]
    engine.dispose()


def test_duplicates_and_stale_wills_change_nothing(database_url: str) -> None:
    """A re-delivered heartbeat and a late will of a replaced session leave the device online."""
    engine = make_engine(database_url)
    init_db(engine)
    hb = Heartbeat.model_validate(heartbeat_doc(bd_seq=4, seq=9))
    batch = [
        received(birth(bd_seq=4)),
        received(hb),
        received(hb),
        received(Death(device_id="dev-1", bd_seq=3, reason="will")),
    ]
    with session_scope(engine) as session:
        outcome = apply_batch(session, batch).outcome
    assert outcome == {"accepted": 2, "duplicates": 1, "stale": 1}
    with Session(engine) as session:
        device = session.get(Device, "dev-1")
        assert device is not None and device.state == "online"
        events = [e.event for e in session.exec(select(DeviceStatusEvent))]
        assert "stale_death_ignored" in events
    engine.dispose()


def test_sweep_marks_silent_devices_offline(database_url: str) -> None:
    """A device silent for the configured missed intervals is swept offline with a reason."""
    engine = make_engine(database_url)
    init_db(engine)
    with session_scope(engine) as session:
        apply_batch(
            session,
            [received(birth("dev-1")), received(birth("dev-2"), NOW + timedelta(seconds=14))],
        )
    with session_scope(engine) as session:
        gone = sweep_liveness(session, NOW + timedelta(seconds=16), missed_heartbeats=3)
    assert gone == ["dev-1"]
    with Session(engine) as session:
        device = session.get(Device, "dev-1")
        assert device is not None
        assert (device.state, device.state_reason) == ("offline", "heartbeat_timeout")
    engine.dispose()


def test_two_replicas_registering_one_new_device_at_once_both_commit(postgres_url: str) -> None:
    """Two controller replicas applying a new device's birth and its heartbeat at the same
    time both commit (the second waits for the first's row and updates it) instead of one
    failing its whole batch on the device's primary key."""
    engine = make_engine(postgres_url)
    init_db(engine)
    hb = Heartbeat.model_validate(heartbeat_doc(bd_seq=3, seq=1))
    first = Session(engine)
    apply_batch(first, [received(birth(bd_seq=3))])  # its row is made, not committed
    errors: list[BaseException] = []

    def second_replica() -> None:
        try:
            with session_scope(engine) as session:
                apply_batch(session, [received(hb, NOW + timedelta(seconds=1))])
        except BaseException as e:
            errors.append(e)

    worker = threading.Thread(target=second_replica)
    worker.start()
    with engine.connect() as probe:  # until the second replica waits on the first, or is done
        wait_for(
            lambda: (
                not worker.is_alive()
                or probe.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND datname = current_database()"
                    )
                ).scalar()
            ),
            30,
            what="the second replica to wait for the first's row",
        )
    first.commit()  # with a plain insert, the replica that commits second fails here
    first.close()
    worker.join(30)
    assert not worker.is_alive() and errors == []
    with Session(engine) as session:
        device = session.get(Device, "dev-1")
        assert device is not None
        assert (device.state, device.bd_seq, device.last_heartbeat_seq) == ("online", 3, 1)
    engine.dispose()
