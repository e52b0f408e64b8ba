"""The pure plausibility rules (controller/ingest/plausibility.py) and their use by ingest's
writer on a real database: a counter that jumps further than a genuine agent can is refused
as ``implausible_seq``, flagged on the device and never adopted; what follows still lands."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlmodel import Session, select

from controller.db import make_engine
from controller.devices.shadows import DeviceShadow
from controller.devices.tables import Device, DeviceStatusEvent
from controller.ingest.apply import Received, apply_batch, bounds_from
from controller.ingest.plausibility import (
    HEARTBEAT_SEQ_RESERVE,
    Bound,
    Bounds,
    check_advance,
    check_heartbeat,
    check_telemetry,
)
from controller.migrations import init_db
from controller.settings import PlausibilitySettings
from edge_agent.sync import link
from shared import encode_message
from shared.messages import Heartbeat, Record, Reported, TelemetryBatch
from tests.test_protocol import birth

T0 = datetime(2026, 11, 25, 6, 0, tzinfo=UTC)
BOUNDS = Bounds()


def test_reserve_matches_the_agent() -> None:
    """The controller's copy of the agent's heartbeat reserve is the agent's value."""
    assert HEARTBEAT_SEQ_RESERVE == link.HEARTBEAT_SEQ_RESERVE


def test_no_mark_accepts_anything() -> None:
    """First contact (no mark yet) accepts any value, however large."""
    assert check_advance("x", 10**12, None, None, T0, Bound(0, 0.0)) is None


def test_lower_or_equal_values_are_not_jumps() -> None:
    """Values at or below the mark are left to the duplicate and stale rules."""
    assert check_advance("x", 5, 9, T0, T0, Bound(0, 0.0)) is None
    assert check_advance("x", 9, 9, T0, T0, Bound(0, 0.0)) is None


def test_bound_grows_with_elapsed_time() -> None:
    """A jump refused now is plausible once enough time has passed since the mark."""
    bound = Bound(10, 2.0)
    assert check_advance("x", 111, 100, T0, T0, bound) is not None
    assert check_advance("x", 110, 100, T0, T0, bound) is None
    assert check_advance("x", 130, 100, T0, T0 + timedelta(seconds=10), bound) is None
    refusal = check_advance("x", 131, 100, T0, T0 + timedelta(seconds=10), bound)
    assert refusal is not None and "x 131 is 31 past the last accepted 100" in refusal


def test_naive_mark_times_are_utc() -> None:
    """A mark time read back naive from SQLite is taken as UTC."""
    naive = T0.replace(tzinfo=None)
    assert check_advance("x", 130, 100, naive, T0 + timedelta(seconds=10), Bound(10, 2.0)) is None


def test_heartbeat_allows_interval_reserve_and_restarts() -> None:
    """A heartbeat may skip the reserve per restart on top of slack and elapsed time."""
    slack = BOUNDS.heartbeat_seq.slack
    base = {"mark_seq": 1000, "mark_bd_seq": 4, "since": T0, "now": T0, "bounds": BOUNDS}
    assert check_heartbeat(seq=1000 + slack + 100, bd_seq=4, **base) is None  # type: ignore[arg-type]
    assert check_heartbeat(seq=1000 + slack + 101, bd_seq=4, **base) is not None  # type: ignore[arg-type]
    # Three restarts since: three more reserved blocks may have been skipped.
    assert check_heartbeat(seq=1000 + slack + 400, bd_seq=7, **base) is None  # type: ignore[arg-type]
    assert check_heartbeat(seq=10**12, bd_seq=4, **base) is not None  # type: ignore[arg-type]


def test_telemetry_rules() -> None:
    """Telemetry: first contact, a plausible next batch, a jump in the epoch, a jumped
    epoch, a new epoch numbering from 0, and an older epoch with nothing stored."""
    newest = (3, 500, T0)
    kw = {"now": T0, "bounds": BOUNDS}
    assert check_telemetry(epoch=3, last_seq=10**12, newest=None, epoch_mark=None, **kw) is None  # type: ignore[arg-type]
    assert check_telemetry(epoch=3, last_seq=999, newest=newest, epoch_mark=(500, T0), **kw) is None  # type: ignore[arg-type]
    jumped = check_telemetry(epoch=3, last_seq=10**9, newest=newest, epoch_mark=(500, T0), **kw)  # type: ignore[arg-type]
    assert jumped is not None and "telemetry seq (epoch 3)" in jumped
    far_epoch = check_telemetry(epoch=10**6, last_seq=0, newest=newest, epoch_mark=None, **kw)  # type: ignore[arg-type]
    assert far_epoch is not None and "telemetry epoch" in far_epoch
    assert check_telemetry(epoch=4, last_seq=99, newest=newest, epoch_mark=None, **kw) is None  # type: ignore[arg-type]
    new_far = check_telemetry(epoch=4, last_seq=10**9, newest=newest, epoch_mark=None, **kw)  # type: ignore[arg-type]
    assert new_far is not None and "new epoch 4" in new_far
    assert check_telemetry(epoch=1, last_seq=10**9, newest=newest, epoch_mark=None, **kw) is None  # type: ignore[arg-type]


def test_settings_become_bounds() -> None:
    """Every ``plausibility.*`` setting reaches the bound it names."""
    settings = PlausibilitySettings(heartbeat_seq_slack=7, telemetry_epoch_per_s=0.5)
    bounds = bounds_from(settings)
    assert bounds.heartbeat_seq == Bound(7, 10.0)
    assert bounds.telemetry_epoch == Bound(1_000, 0.5)
    assert bounds_from(PlausibilitySettings()) == Bounds()


def _received(message: Heartbeat | Reported | TelemetryBatch, at: datetime) -> Received:
    topic, payload = encode_message(message)
    return Received(topic, payload, at)


def _heartbeat(seq: int, bd_seq: int = 3) -> Heartbeat:
    return Heartbeat(
        device_id="dev-1",
        bd_seq=bd_seq,
        seq=seq,
        uptime_s=1.0,
        cpu_percent=1.0,
        memory_percent=1.0,
        requests_total=0,
        local_tier_healthy=True,
    )


def _batch(epoch: int, first: int, n: int) -> TelemetryBatch:
    records = [
        Record(epoch=epoch, seq=s, kind="metric", name="sim", at=T0, body={"n": s})
        for s in range(first, first + n)
    ]
    return TelemetryBatch(device_id="dev-1", records=records)


def _reported(version: int) -> Reported:
    return Reported(device_id="dev-1", version=version, applied_desired_version=0, state={})


def test_writer_refuses_jumps_and_keeps_marks(tmp_path: Path) -> None:
    """On a real database: the issue's jumps (heartbeat 10^12, reported 10^9, telemetry
    10^9 past the stored seq) are refused and flagged, no mark moves, no ack is sent for
    the refused batch, and the genuine messages after them are applied."""
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    init_db(engine)
    at = [T0 + timedelta(seconds=i) for i in range(10)]
    genuine = [
        _received(birth("dev-1", bd_seq=3), at[0]),
        _received(_heartbeat(100), at[0]),
        _received(_reported(5), at[0]),
        _received(_batch(2, 0, 10), at[0]),
    ]
    hostile = [
        _received(_heartbeat(10**12), at[1]),
        _received(_reported(10**9), at[1]),
        _received(_batch(2, 10**9, 3), at[1]),
        _received(birth("dev-1", bd_seq=10**9), at[1]),
    ]
    after = [
        _received(_heartbeat(101), at[2]),
        _received(_reported(6), at[2]),
        _received(_batch(2, 10, 5), at[2]),
    ]
    with Session(engine) as session:
        first = apply_batch(session, genuine)
        session.commit()
        refused = apply_batch(session, hostile)
        session.commit()
        later = apply_batch(session, after)
        session.commit()
        assert not first.refused and not later.refused
        assert refused.outcome["rejected:implausible_seq"] == 4
        assert refused.acks == []
        assert [a.hwm for a in later.acks] == [14]
        device = session.get(Device, "dev-1")
        shadow = session.get(DeviceShadow, "dev-1")
        assert device is not None and shadow is not None
        assert (device.bd_seq, device.last_heartbeat_seq, device.state) == (3, 101, "online")
        assert shadow.reported_version == 6
        flags = session.exec(
            select(DeviceStatusEvent).where(DeviceStatusEvent.event == "implausible_seq")
        ).all()
        assert len(flags) == 4
        assert any("heartbeat seq 1000000000000" in (f.detail or "") for f in flags)
    engine.dispose()


def test_heartbeat_mark_survives_a_new_session(tmp_path: Path) -> None:
    """A birth with a higher bd_seq keeps the heartbeat mark (seq never repeats across
    restarts), so a forged heartbeat right after a genuine birth is still refused; a birth
    with a lower bd_seq (a reflashed device) starts numbering again."""
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    init_db(engine)
    with Session(engine) as session:
        apply_batch(session, [_received(birth("dev-1", 3), T0), _received(_heartbeat(50), T0)])
        apply_batch(session, [_received(birth("dev-1", 4), T0)])
        forged = apply_batch(session, [_received(_heartbeat(10**12, bd_seq=4), T0)])
        assert forged.outcome["rejected:implausible_seq"] == 1
        apply_batch(session, [_received(birth("dev-1", 0), T0)])
        reflashed = apply_batch(session, [_received(_heartbeat(0, bd_seq=0), T0)])
        assert reflashed.outcome["accepted"] == 1
        session.commit()
    engine.dispose()
