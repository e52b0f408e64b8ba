"""Controller replicas: who is alive, and since when every device message has been heard
(controller/replicas.py), and what liveness and attestation make of it."""

import contextlib
import logging
import multiprocessing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlmodel import Session, select

from controller.attestation.service import AttestationChallenge, AttestationResult
from controller.db import make_engine, session_scope
from controller.devices.liveness import is_overdue
from controller.devices.tables import Device
from controller.migrations import init_db
from controller.pki.message_keys import MessageKeyStore
from controller.replicas import (
    ControllerReplica,
    Hearing,
    ReplicaRegistry,
    hearing,
    session_gone_at,
)
from controller.services import Services, _job_lock
from controller.settings import load_settings
from tests.conftest import wait_for

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def replica(
    name: str,
    *,
    beat_ago: float = 0.5,
    connected_ago: float | None = 60.0,
    disconnected_ago: float | None = None,
    backlog: int = 0,
) -> ControllerReplica:
    return ControllerReplica(
        client_id=name,
        beat_at=NOW - timedelta(seconds=beat_ago),
        connected_at=None if connected_ago is None else NOW - timedelta(seconds=connected_ago),
        disconnected_at=(
            None if disconnected_ago is None else NOW - timedelta(seconds=disconnected_ago)
        ),
        session_expiry_s=30,
        keepalive_s=10,
        backlog=backlog,
    )


# (case, replicas, lock holders (None: SQLite), expected since as seconds from NOW, backlog)
CASES: list[tuple[str, list[ControllerReplica], set[str] | None, float | None, int]] = [
    ("nothing lost", [replica("a"), replica("b", connected_ago=90)], {"a", "b"}, -60, 0),
    ("a replica (re)connected", [replica("a"), replica("b", connected_ago=2)], None, -2, 0),
    ("backlogs add up", [replica("a", backlog=7), replica("b", backlog=5)], None, -60, 12),
    # Its process lost its lock (SIGKILL): its session may take messages for 1 + 15 + 30 s.
    ("dead by its lock", [replica("a"), replica("b", backlog=9)], {"a"}, -0.5 + 46, 0),
    ("dead by its stale beat", [replica("a"), replica("b", beat_ago=20)], None, -20 + 46, 0),
    ("cut off from the broker", [replica("a"), replica("b", disconnected_ago=4)], None, 41, 0),
    ("never connected", [replica("a"), replica("b", connected_ago=None)], None, -60, 0),
    ("gone long ago", [replica("a"), replica("b", beat_ago=600)], {"a"}, -60, 0),
]


@pytest.mark.parametrize(
    ("replicas", "locked", "since_s", "backlog"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_hearing(
    replicas: list[ControllerReplica], locked: set[str] | None, since_s: float, backlog: int
) -> None:
    """Silence counts from the latest live replica's connection or dead replica's session
    end; only live, connected replicas' backlogs count."""
    heard = hearing(replicas, NOW, locked=locked)
    assert heard == Hearing(NOW + timedelta(seconds=since_s), backlog)


def test_silence_counts_from_when_everything_was_heard() -> None:
    """A device last seen before ``heard_since`` is overdue only ``missed`` intervals after
    it; without it, after its last message as before."""
    last = NOW - timedelta(seconds=60)
    assert is_overdue(last, 5, 3, NOW)
    assert not is_overdue(last, 5, 3, NOW, heard_since=NOW - timedelta(seconds=14))
    assert is_overdue(last, 5, 3, NOW, heard_since=NOW - timedelta(seconds=16))
    assert not is_overdue(last, 5, 3, NOW, heard_since=NOW + timedelta(seconds=40))
    recent = NOW - timedelta(seconds=16)
    assert is_overdue(recent, 5, 3, NOW, heard_since=NOW - timedelta(seconds=60))


def test_a_killed_replica_is_seen_dead_at_once(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """On PostgreSQL a replica whose connection dies (as with SIGKILL) loses its lock, and
    the others wait for its broker session to end at once, not after a stale beat; a second
    process with the same client id is told; a clean stop removes the row."""
    engine = make_engine(postgres_url)
    init_db(engine)
    observer = make_engine(postgres_url)
    try:
        a = ReplicaRegistry(engine, "replica-a", session_expiry_s=30, keepalive_s=10)
        a.beat(NOW, connected_since=NOW, backlog=0)
        assert a._holder is not None  # the connection that holds replica-a's lock
        a_pids = {a._holder.execute(text("SELECT pg_backend_pid()")).scalar_one()}
        b = ReplicaRegistry(observer, "replica-b", session_expiry_s=30, keepalive_s=10)
        b.beat(NOW, connected_since=NOW, backlog=3)
        with Session(observer) as session:
            assert b.locked(session) == {"replica-a", "replica-b"}
            assert b.hearing(session, NOW) == Hearing(NOW, 3)

        with caplog.at_level(logging.ERROR, logger="controller.replicas"):
            twin = ReplicaRegistry(observer, "replica-a", session_expiry_s=30, keepalive_s=10)
            twin._hold_lock()
        assert "another controller process holds broker.client_id 'replica-a'" in caplog.text

        with observer.connect() as conn:  # replica-a's process dies: its connections go
            for pid in a_pids:
                conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        a._holder.invalidate()  # its process is gone: nothing to hand back to a pool
        engine.dispose()

        def locked() -> set[str] | None:
            with Session(observer) as session:
                return b.locked(session)

        wait_for(lambda: locked() == {"replica-b"}, 10, what="replica-a's backend to end")
        with Session(observer) as session:
            row = session.get(ControllerReplica, "replica-a")
            assert row is not None
            heard = b.hearing(session, NOW + timedelta(seconds=1))
        assert heard == Hearing(session_gone_at(row), 3)
        assert heard.since is not None and heard.since > NOW + timedelta(seconds=30)

        b.leave(session_ended=True)
        with Session(observer) as session:
            assert [r.client_id for r in session.exec(select(ControllerReplica))] == ["replica-a"]
    finally:
        engine.dispose()
        observer.dispose()


JOBS = (
    "liveness-sweep",
    "desired-republish",
    "attestation-sweep",
    "telemetry-rollup",
    "tuf-refresh",
    "crl-refresh",
    "rollout:1",
)


def test_every_job_lock_passes_to_the_survivor(postgres_url: str) -> None:
    """A job lock held by a replica that dies mid-run (its connection ends) is free for the
    other replica's next run: no job waits for a dead replica."""
    url = postgres_url.replace("postgresql://", "postgresql+psycopg://", 1)
    dying, survivor = create_engine(url), create_engine(url)
    held, other = Session(dying), Session(survivor)
    try:
        for job in JOBS:
            assert _job_lock(held, job)
        pid = held.execute(text("SELECT pg_backend_pid()")).scalar_one()
        for job in JOBS:
            assert not _job_lock(other, job), job
            other.rollback()
        with survivor.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        for job in JOBS:
            assert _job_lock(other, job), job
    finally:
        other.close()
        with contextlib.suppress(Exception):
            held.close()
        dying.dispose()
        survivor.dispose()


def test_quotes_that_went_to_a_dead_replica_are_asked_again(tmp_path: Path) -> None:
    """A challenge issued before everything was heard again lapses without a verdict and
    its device is challenged afresh; answered and later challenges stay; a device that
    stays silent on the new challenge is still quarantined."""
    settings = load_settings(
        None,
        environment="development",
        database_url=f"sqlite:///{tmp_path / 'c.db'}",
        attestation={"timeout_s": 10},
    )
    services = Services.create(settings)
    since = NOW - timedelta(seconds=5)
    with session_scope(services.engine) as session:
        for device_id in ("lost", "answered", "later"):
            session.add(Device(id=device_id, state="online", first_seen=NOW, last_seen=NOW))
        early, late = since - timedelta(seconds=3), since + timedelta(seconds=1)
        session.add_all(
            [
                AttestationChallenge(
                    nonce="n-lost", device_id="lost", issued_at=early, expires_at=NOW
                ),
                AttestationChallenge(
                    nonce="n-answered",
                    device_id="answered",
                    issued_at=early,
                    expires_at=NOW,
                    answered_at=early + timedelta(seconds=1),
                ),
                AttestationChallenge(
                    nonce="n-later", device_id="later", issued_at=late, expires_at=NOW
                ),
            ]
        )
    with session_scope(services.engine) as session:
        out = services._rechallenge_unheard(session, Hearing(since, 0), NOW)
    assert [m.device_id for m in out] == ["lost"]
    with Session(services.engine) as session:
        rows = {r.nonce: r for r in session.exec(select(AttestationChallenge))}
        assert rows["n-lost"].lapsed_at is not None
        assert rows["n-answered"].lapsed_at is None and rows["n-later"].lapsed_at is None
        fresh = [r for r in rows.values() if r.device_id == "lost" and r.why == "replica"]
        assert len(fresh) == 1 and fresh[0].nonce == out[0].nonce  # type: ignore[union-attr]
        assert not session.exec(select(AttestationResult)).all()
    with session_scope(services.engine) as session:
        services.attestation.sweep(session, NOW + timedelta(seconds=11))
    with Session(services.engine) as session:
        device = session.get(Device, "lost")
        assert device is not None and device.quarantined
        assert device.quarantine_reason == "silent"
    services.engine.dispose()


def _first_key(pki_dir: Path, start: Any, kids: Any) -> None:
    """One replica's start: load the message keys, making the first one if there is none."""
    start.wait(30)
    kids.put(MessageKeyStore(pki_dir, None).load(create=True).current_kid)


def test_replicas_starting_together_make_one_message_key(tmp_path: Path) -> None:
    """Replicas that start at once on an empty shared pki folder end up signing with one
    and the same first message key (two keys would leave devices refusing one replica)."""
    ctx = multiprocessing.get_context("spawn")
    for attempt in range(3):
        pki_dir = tmp_path / f"pki-{attempt}"
        start, kids = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_first_key, args=(pki_dir, start, kids)) for _ in range(3)]
        for proc in procs:
            proc.start()
        start.set()
        for proc in procs:
            proc.join(60)
            assert proc.exitcode == 0
        found = {kids.get(timeout=5) for _ in procs}
        assert len(found) == 1, found
        assert MessageKeyStore(pki_dir, None).kids() == sorted(found)
