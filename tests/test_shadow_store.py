"""The controller's shadow rows under concurrent writers: a writer that read a desired
version someone else has since replaced fails instead of silently overwriting it."""

from datetime import UTC, datetime

import pytest
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import Session

from controller.db import init_db, make_engine
from controller.shadows import DeviceShadow, set_desired


def test_two_writers_of_one_version_cannot_both_win(database_url: str) -> None:
    """Of two sessions that read desired version 1, the second to commit fails with
    StaleDataError; retried, it merges into the first one's document and both keys survive."""
    engine = make_engine(database_url)
    init_db(engine)
    now = datetime.now(UTC)
    with Session(engine) as session:
        set_desired(session, "dev-1", {"labels": {"site": "a"}}, now=now)
        session.commit()
    rollout, attestation = Session(engine), Session(engine)
    # Both have read version 1 (held, as a transaction in progress holds what it read).
    read_by = [rollout.get(DeviceShadow, "dev-1"), attestation.get(DeviceShadow, "dev-1")]
    assert all(row is not None and row.desired_version == 1 for row in read_by)
    set_desired(rollout, "dev-1", {"model": {"name": "m", "target": "m/2/m.gguf"}}, now=now)
    rollout.commit()
    set_desired(attestation, "dev-1", {"quarantine": {"reason": "silent"}}, now=now)
    with pytest.raises(StaleDataError):
        attestation.commit()
    attestation.rollback()
    set_desired(attestation, "dev-1", {"quarantine": {"reason": "silent"}}, now=now)  # retry
    attestation.commit()
    rollout.close()
    attestation.close()
    with Session(engine) as session:
        row = session.get(DeviceShadow, "dev-1")
        assert row is not None
        assert row.desired_version == 3
        assert set(row.desired) == {"labels", "model", "quarantine"}
    engine.dispose()
