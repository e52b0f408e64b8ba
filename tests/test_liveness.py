"""The pure online/offline rules (Sparkplug-style session numbering)."""

from datetime import UTC, datetime, timedelta

from controller.devices.liveness import Liveness, is_overdue, on_birth, on_death, on_heartbeat

ONLINE_3 = Liveness(state="online", bd_seq=3, last_heartbeat_seq=10)


def test_birth_always_starts_the_session() -> None:
    """A birth marks the device online even with a lower bd_seq (a reflashed device)."""
    assert on_birth(ONLINE_3, 0).state == "online"
    assert on_birth(None, 5).event == "birth"


def test_death_of_the_current_session_marks_offline() -> None:
    """A will carrying the current bd_seq takes the device offline with its reason."""
    decision = on_death(ONLINE_3, 3, "will")
    assert (decision.apply, decision.state, decision.reason) == (True, "offline", "will")


def test_stale_will_from_a_replaced_session_is_ignored() -> None:
    """A will for an older session arriving after the new birth changes nothing."""
    decision = on_death(ONLINE_3, 2, "will")
    assert not decision.apply
    assert decision.event == "stale_death_ignored"


def test_repeated_heartbeat_is_a_duplicate() -> None:
    """A re-delivered heartbeat (seq not above the last) is counted, not applied."""
    assert on_heartbeat(ONLINE_3, 3, 10).duplicate
    assert on_heartbeat(ONLINE_3, 3, 11).apply


def test_heartbeat_of_an_older_session_is_stale() -> None:
    """Heartbeats with a lower bd_seq than the current session are ignored."""
    decision = on_heartbeat(ONLINE_3, 2, 99)
    assert not decision.apply and not decision.duplicate


def test_heartbeat_revives_after_timeout_or_missed_birth() -> None:
    """A timed-out device that heartbeats again, or one never born, comes online."""
    timed_out = Liveness(state="offline", bd_seq=3, last_heartbeat_seq=10)
    assert on_heartbeat(timed_out, 3, 11).state == "online"
    assert on_heartbeat(None, 0, 0).state == "online"
    assert on_heartbeat(ONLINE_3, 4, 0).state == "online"


def test_overdue_after_the_configured_missed_intervals() -> None:
    """A device is overdue only once interval x missed has fully passed; naive times are UTC."""
    now = datetime(2026, 1, 1, 12, 0, 10, tzinfo=UTC)
    assert not is_overdue(now - timedelta(seconds=15), 5, 3, now)
    assert is_overdue(now - timedelta(seconds=16), 5, 3, now)
    assert is_overdue((now - timedelta(seconds=16)).replace(tzinfo=None), 5, 3, now)
    assert not is_overdue(None, 5, 3, now)
