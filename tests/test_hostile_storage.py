"""Whatever the decoder accepts, ingest can store: on SQLite and PostgreSQL, a batch of
accepted messages built from hostile values (huge numbers, odd strings, extreme times, deep
bodies) commits. A message the database refuses would fail its whole batch again on every
retry (a poison message), so this is the decoder's side of "one message cannot stop ingest"."""

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from controller.db import make_engine, session_scope
from controller.ingest.apply import Received, apply_batch
from controller.migrations import init_db
from shared.errors import ProtocolError
from shared.messages import MAX_INT64, decode_message

NOW = datetime(2026, 11, 25, 6, 0, tzinfo=UTC)

hostile_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=()), max_size=30
) | st.sampled_from(["\x00", "a\x00b", "\ud800", "'; DROP TABLE device; --", "\u202e", "%s%n"])
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([MAX_INT64, MAX_INT64 + 1, -(2**63), 10**300, 2**64]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e308, -1e308, 5e-324, 0.0, -0.0]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, hostile_text)
documents = st.recursive(
    scalars,
    lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(hostile_text, c, max_size=4)),
    max_leaves=30,
)
times = st.one_of(
    st.sampled_from(
        [
            "2026-11-25T06:00:00+00:00",
            "0001-01-01T00:00:00+00:00",
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "9999-12-31T23:59:59+00:00",
            "2026-11-25T06:00:00.999999Z",
        ]
    ),
    hostile_text,
)


def _dump(doc: dict[str, Any]) -> bytes | None:
    try:
        return json.dumps(doc, ensure_ascii=True).encode()
    except (ValueError, UnicodeEncodeError):
        return None


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, bytes]:
    """A device message of each device-to-controller kind with hostile field values."""
    kind = draw(st.sampled_from(["telemetry", "heartbeat", "status", "reported"]))
    base = {"v": 1, "device_id": "dev-1", "ts": draw(times)}
    if kind == "telemetry":
        n = draw(st.integers(1, 3))
        seq0 = draw(numbers.filter(lambda v: isinstance(v, int)))
        doc = {
            **base,
            "type": "telemetry",
            "records": [
                {
                    "epoch": draw(numbers),
                    "seq": seq0 + i if isinstance(seq0, int) else seq0,
                    "kind": "metric",
                    "name": "inference",
                    "at": draw(times),
                    "body": {"x": draw(documents)},
                }
                for i in range(n)
            ],
        }
    elif kind == "heartbeat":
        doc = {
            **base,
            "type": "heartbeat",
            "bd_seq": draw(numbers),
            "seq": draw(numbers),
            "uptime_s": draw(numbers),
            "cpu_percent": draw(numbers),
            "memory_percent": draw(numbers),
            "requests_total": draw(numbers),
            "local_tier_healthy": True,
        }
    elif kind == "status":
        doc = {
            **base,
            "type": "birth",
            "bd_seq": draw(numbers),
            "agent_version": draw(hostile_text),
            "hardware": {
                "device_class": draw(hostile_text),
                "arch": draw(hostile_text),
                "accelerator": "cpu",
                "cpu_count": draw(numbers),
                "memory_mb": draw(numbers),
                "detail": draw(hostile_text),
            },
            "models": [{"name": draw(hostile_text), "runtime": "llama.cpp", "loaded": True}],
            "api_url": draw(hostile_text),
            "heartbeat_interval_s": draw(numbers),
        }
    else:
        doc = {
            **base,
            "type": "reported",
            "version": draw(numbers),
            "applied_desired_version": draw(numbers),
            "state": {"k": draw(documents)},
            "rejected": {draw(hostile_text): draw(hostile_text)},
        }
    payload = _dump(doc)
    if payload is None:
        payload = b"{}"
    return f"ef/v1/dev-1/{kind}", payload


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'c.db'}"
    else:
        url = str(request.getfixturevalue("postgres_url"))
    engine = make_engine(url)
    init_db(engine)
    yield engine
    engine.dispose()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(messages(), min_size=1, max_size=4))
def test_every_accepted_message_commits_and_every_refused_one_is_recorded(
    engine: Engine, batch: list[tuple[str, bytes]]
) -> None:
    """A batch of hostile-valued messages always commits: what the decoder accepts is stored,
    what it refuses becomes a dead letter, and the transaction never fails."""
    expected_rejects = 0
    for topic, payload in batch:
        try:
            decode_message(topic, payload)
        except ProtocolError:
            expected_rejects += 1
    with session_scope(engine) as session:
        result = apply_batch(session, [Received(t, p, NOW) for t, p in batch])
    rejected = sum(n for k, n in result.outcome.items() if k.startswith("rejected:"))
    assert rejected == expected_rejects
