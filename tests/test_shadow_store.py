"""The controller's shadow rows under concurrent writers: a writer that read a desired
version someone else has since replaced fails instead of silently overwriting it."""

from datetime import UTC, datetime

import pytest
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import Session

from controller.db import make_engine
from controller.devices.shadows import DeviceShadow, mark_published, set_desired, unapplied
from controller.migrations import init_db

QUARANTINE = {"quarantine": {"reason": "silent"}}
ROLLOUTS = "system:rollouts"


def test_two_writers_of_one_version_cannot_both_win(database_url: str) -> None:
    """Of two sessions that read desired version 1, the second to commit fails with
    StaleDataError; retried, it merges into the first one's document and both keys survive."""
    engine = make_engine(database_url)
    init_db(engine)
    now = datetime.now(UTC)
    with Session(engine) as session:
        set_desired(session, "dev-1", {"labels": {"site": "a"}}, now=now, actor="user:ops")
        session.commit()
    rollout, attestation = Session(engine), Session(engine)
    # Both have read version 1 (held, as a transaction in progress holds what it read).
    read_by = [rollout.get(DeviceShadow, "dev-1"), attestation.get(DeviceShadow, "dev-1")]
    assert all(row is not None and row.desired_version == 1 for row in read_by)
    patch = {"model": {"name": "m", "target": "m/2/m.gguf"}}
    set_desired(rollout, "dev-1", patch, now=now, actor="system:rollouts")
    rollout.commit()
    set_desired(attestation, "dev-1", QUARANTINE, now=now, actor="system:attestation")
    with pytest.raises(StaleDataError):
        attestation.commit()
    attestation.rollback()
    set_desired(attestation, "dev-1", QUARANTINE, now=now, actor="system:attestation")  # retry
    attestation.commit()
    rollout.close()
    attestation.close()
    with Session(engine) as session:
        row = session.get(DeviceShadow, "dev-1")
        assert row is not None
        assert row.desired_version == 3
        assert set(row.desired) == {"labels", "model", "quarantine"}
    engine.dispose()


def test_a_writer_that_lost_the_insert_race_uses_the_winners_row(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers both find no shadow for a new device (an operator's PATCH and ingest of
    its first report): the one whose insert loses gets the winner's row instead of an
    IntegrityError, and its change lands on top of the winner's."""
    engine = make_engine(database_url)
    init_db(engine)
    now = datetime.now(UTC)
    with Session(engine) as ingest:
        set_desired(ingest, "dev-new", {"labels": {"site": "a"}}, now=now, actor="user:ops")
        ingest.commit()
    operator = Session(engine)
    real_get = Session.get
    calls = {"n": 0}

    def first_read_saw_nothing(self: Session, *args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            return None  # it read before the other writer committed
        return real_get(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Session, "get", first_read_saw_nothing)
    row = set_desired(
        operator, "dev-new", {"model": {"name": "m"}}, now=now, actor="system:rollouts"
    )
    operator.commit()
    monkeypatch.undo()
    operator.close()
    assert calls["n"] == 2
    with Session(engine) as session:
        stored = session.get(DeviceShadow, "dev-new")
        assert stored is not None and stored is not row
        assert set(stored.desired) == {"labels", "model"}
        assert stored.desired_version == 2
    engine.dispose()


def test_recording_a_publication_survives_a_writer_that_changed_the_row(
    database_url: str,
) -> None:
    """The republish job read versions 1; ingest's writer then stored version 2 of one of
    them. Recording what went out commits (no StaleDataError), marks the untouched row, and
    leaves the changed one unmarked, so its new version is still sent."""
    engine = make_engine(database_url)
    init_db(engine)
    now = datetime.now(UTC)
    with Session(engine) as session:
        for device_id in ("dev-1", "dev-2"):
            set_desired(session, device_id, {"labels": {"site": "a"}}, now=now, actor="user:ops")
        session.commit()
    job = Session(engine)
    sent = [(row.device_id, row.desired_version) for row in unapplied(job)]
    assert sorted(sent) == [("dev-1", 1), ("dev-2", 1)]
    with Session(engine) as writer:
        set_desired(writer, "dev-1", QUARANTINE, now=now, actor="system:attestation")
        writer.commit()
    mark_published(job, sent, now)
    job.commit()
    job.close()
    with Session(engine) as session:
        changed, untouched = session.get(DeviceShadow, "dev-1"), session.get(DeviceShadow, "dev-2")
        assert changed is not None and untouched is not None
        assert changed.desired_version == 2 and changed.desired_published_at is None
        assert untouched.desired_published_at is not None
