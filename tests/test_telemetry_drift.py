"""Drift on the controller: PSI/KS scores of rolled-up sketches against a reference taken
when a rollout starts (or set by an operator), alerts that open and close with them, and
the drift score a rollout's gate reads."""

from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlmodel import Session, col, select

from controller.audit import AuditEntry
from controller.rollouts.observe import wave_telemetry
from controller.settings import RolloutSettings
from controller.telemetry.drift import NoDriftData, load_reference, set_reference
from controller.telemetry.fold import CLASSES, hour_of
from controller.telemetry.scoring import Thresholds, alert_action, feature_score, model_score
from controller.telemetry.tables import DriftReference, DriftScore, TelemetryAlert
from shared import sketches
from tests.rollout_world import MODEL, T0, World
from tests.telemetry_world import CFG, TelemetryWorld, drift_window, sketch

NORMAL = [20.0] * 30 + [100.0] * 10  # prompt lengths: mostly short
SHIFTED = [3000.0] * 30 + [100.0] * 10  # mostly long: a large PSI


@pytest.fixture
def world(database_url: str) -> World:
    """A simulated fleet on each supported database (SQLite file, PostgreSQL)."""
    return World(database_url)


def telemetry(world: World) -> TelemetryWorld:
    return TelemetryWorld(world.url, world.seq)


def send_drift(
    tw: TelemetryWorld, devices: list[str], at: datetime, prompts: list[float], **kw: Any
) -> None:
    for d in devices:
        tw.send(d, [("drift.window", drift_window(at, prompt_tokens=prompts, **kw))], at)


def test_feature_scores_match_the_shared_statistics() -> None:
    """A feature's score is shared.sketches' PSI and KS of the two sketches; classes are
    compared over the union of labels; the model's score is its largest PSI and empty or
    mismatched sketches give no score."""
    ref = sketch("prompt_tokens", NORMAL)
    cur = sketch("prompt_tokens", SHIFTED)
    score = feature_score("prompt_tokens", ref, cur)
    assert score is not None
    assert score.psi == pytest.approx(sketches.psi(ref, cur))
    assert score.ks == pytest.approx(sketches.ks(ref, cur)) and score.samples == 40
    classes = feature_score(CLASSES, {"cat": 9, "dog": 1}, {"cat": 1, "bird": 9})
    assert classes is not None
    assert classes.psi == pytest.approx(sketches.psi([0, 9, 1], [9, 1, 0]))
    assert feature_score("prompt_tokens", ref, sketches.empty("prompt_tokens")) is None
    assert feature_score("prompt_tokens", ref, {"cat": 1}) is None
    psi, samples, scores = model_score(
        {"prompt_tokens": ref, CLASSES: {"cat": 9, "dog": 1}},
        {"prompt_tokens": cur, CLASSES: {"cat": 9, "dog": 1}},
    )
    assert psi == pytest.approx(score.psi) and samples == 40 and len(scores) == 2


@pytest.mark.parametrize(
    ("psi", "ks", "samples", "is_open", "action"),
    [
        (0.5, 0.0, 100, False, "open"),
        (0.0, 0.5, 100, False, "open"),
        (0.5, 0.5, 5, False, None),
        (0.5, 0.0, 100, True, "update"),
        (0.01, 0.01, 100, True, "close"),
        (0.01, 0.01, 5, True, None),
        (0.01, 0.01, 100, False, None),
        (0.18, 0.0, 100, True, "update"),
        (0.0, 0.09, 100, True, "update"),
        (0.18, 0.09, 100, False, None),
        (0.15, 0.07, 100, True, "close"),
    ],
    ids=[
        "psi",
        "ks",
        "few",
        "still",
        "back",
        "few-open",
        "calm",
        "psi-band",
        "ks-band",
        "band-closed",
        "below-band",
    ],
)
def test_alert_decisions(psi: float, ks: float, samples: int, is_open: bool, action: Any) -> None:
    """An alert opens when PSI or KS crosses its threshold with enough samples, closes only
    when both are below 0.8 of their thresholds (kept open in between), and nothing
    changes on too few samples."""
    from controller.telemetry.scoring import FeatureScore

    limits = Thresholds(psi=0.2, ks=0.1, min_samples=20)
    score = FeatureScore("prompt_tokens", psi, ks, samples)
    assert alert_action(score, limits, is_open=is_open) == action


def reference_rows(world: World) -> list[DriftReference]:
    with Session(world.engine) as session:
        return list(session.exec(select(DriftReference).order_by(col(DriftReference.feature))))


def test_a_rollout_takes_the_reference_from_the_window_before_it(world: World) -> None:
    """Creating a rollout asks for a reference; the next rollup takes the model's sketches
    of the 24 h before the rollout (not older ones, not the new version's), audited."""
    tw = telemetry(world)
    world.add_model()
    ids = world.add_devices(4)
    send_drift(tw, ids[:2], T0 - timedelta(hours=30), SHIFTED)  # too old
    send_drift(tw, ids, T0 - timedelta(hours=3), NORMAL, classes={"a": 2})
    send_drift(tw, ids[:1], T0 - timedelta(hours=2), SHIFTED, version="1.1")  # the new one
    tw.rollup(T0 - timedelta(minutes=10))
    world.create(waves=["canary:2", "100%"])
    # The model already had a reference from its first data; the rollout's request waits
    # beside it until the job runs.
    assert "*" in [r.feature for r in reference_rows(world)]

    report = tw.rollup(T0 + timedelta(seconds=30))
    assert report.references == [MODEL]
    rows = {r.feature: r for r in reference_rows(world)}
    assert set(rows) == {"prompt_tokens", CLASSES}
    assert rows["prompt_tokens"].counts == sketch("prompt_tokens", NORMAL * 4)
    assert rows[CLASSES].counts == {"a": 8}
    assert rows["prompt_tokens"].version == "1.0"
    assert rows["prompt_tokens"].window_end == T0
    with Session(world.engine) as session:
        actions = session.exec(select(AuditEntry.action)).all()
    assert "drift.reference" in actions


def test_without_data_before_the_rollout_the_first_full_window_after_it_is_taken(
    world: World,
) -> None:
    """With no sketches before the rollout, the reference waits (pending) until 24 h of
    data after the start have passed, then covers exactly those 24 h."""
    tw = telemetry(world)
    world.add_model()
    ids = world.add_devices(2)
    world.create(waves=["100%"])
    first = T0 + timedelta(hours=2, minutes=5)
    send_drift(tw, ids, first, NORMAL)
    send_drift(tw, ids, first + timedelta(hours=25), SHIFTED)  # after the window
    assert tw.rollup(first + timedelta(hours=10)).references == []
    assert [r.feature for r in reference_rows(world)] == ["*"]
    assert tw.rollup(first + timedelta(hours=26)).references == [MODEL]
    (row,) = reference_rows(world)
    assert row.window_start == hour_of(first)
    assert row.window_end == hour_of(first) + timedelta(hours=24)
    assert row.counts == sketch("prompt_tokens", NORMAL * 2)


def test_a_model_without_any_reference_gets_one_from_its_first_data(world: World) -> None:
    """A model served before any rollout (no reference set or requested) is baselined on
    its first full window of data, without an operator or a rollout asking."""
    tw = telemetry(world)
    ids = world.add_devices(2)
    first = T0 + timedelta(minutes=5)
    send_drift(tw, ids, first, NORMAL)
    assert tw.rollup(first + timedelta(hours=1)).references == []
    (pending,) = reference_rows(world)
    assert pending.pending and pending.window_start == hour_of(first)
    send_drift(tw, ids, first + timedelta(hours=25), SHIFTED)
    assert tw.rollup(first + timedelta(hours=26)).references == [MODEL]
    (row,) = reference_rows(world)
    assert not row.pending and row.reason == "first 24 h of data"
    assert row.counts == sketch("prompt_tokens", NORMAL * 2)


def alerts(world: World) -> list[TelemetryAlert]:
    with Session(world.engine) as session:
        return list(session.exec(select(TelemetryAlert).order_by(col(TelemetryAlert.id))))


def test_scores_open_and_close_a_drift_alert(world: World) -> None:
    """Hours scored against the reference: a shifted hour opens one alert (audited) that
    stays one alert while the shift lasts, and a calm hour closes it; a few samples change
    nothing."""
    tw = telemetry(world)
    ids = [f"dev-{i}" for i in range(3)]
    base = T0 - timedelta(hours=5)
    send_drift(tw, ids, base, NORMAL)
    tw.rollup(base)
    with Session(world.engine) as session:
        set_reference(session, CFG, MODEL, now=base + timedelta(minutes=30), actor="user:ops")
        session.commit()
    assert load_reference(Session(world.engine), MODEL)

    send_drift(tw, ids, T0, SHIFTED)
    tw.rollup(T0)
    (alert,) = alerts(world)
    assert (alert.state, alert.kind, alert.subject, alert.feature) == (
        "open",
        "drift",
        MODEL,
        "prompt_tokens",
    )
    assert alert.value > CFG.drift_psi_threshold and alert.threshold == CFG.drift_psi_threshold
    send_drift(tw, ids, T0 + timedelta(minutes=20), SHIFTED)
    tw.rollup(T0 + timedelta(minutes=20))
    assert len(alerts(world)) == 1

    calm = T0 + timedelta(hours=1)
    send_drift(tw, ids[:1], calm, [20.0] * 5)  # too few samples to judge
    tw.rollup(calm)
    assert alerts(world)[0].state == "open"
    send_drift(tw, ids, calm + timedelta(minutes=1), NORMAL)
    tw.rollup(calm + timedelta(minutes=1))
    (alert,) = alerts(world)
    assert alert.state == "closed" and alert.closed_at is not None
    with Session(world.engine) as session:
        scores = session.exec(select(DriftScore).order_by(col(DriftScore.hour))).all()
        actions = session.exec(select(AuditEntry.action)).all()
    assert [s.hour for s in scores] == [hour_of(base), hour_of(T0), hour_of(calm)]
    assert scores[0].psi == pytest.approx(0.0)
    assert "alert.open" in actions and "alert.close" in actions


def test_an_operator_reference_needs_data(world: World) -> None:
    """Setting a reference from a window without sketches of the model is refused."""
    with Session(world.engine) as session, pytest.raises(NoDriftData):
        set_reference(session, CFG, "nothing", now=T0, actor="user:ops")


FAST = RolloutSettings(default_soak_s=60, default_min_samples=0, default_device_timeout_s=600)


def test_the_gate_reads_psi_of_the_waves_sketches_since_install(world: World) -> None:
    """A wave's drift score is the PSI of its installed devices' drift windows of the model
    since install against the reference; windows before install, of other models, of
    devices outside the wave and malformed ones are left out; a large PSI halts the
    rollout through its drift gate."""
    tw = telemetry(world)
    world.add_model()
    ids = world.add_devices(6)
    send_drift(tw, ids, T0 - timedelta(hours=2), NORMAL)
    tw.rollup(T0 - timedelta(hours=1))
    rid = world.create(
        waves=["canary:2", "100%"], settings=FAST, gates={"max_drift": 0.5, "min_samples": 0}
    )
    tw.rollup(T0)  # takes the reference
    world.tick(T0)
    canary = sorted(m.device_id for m in world.members(rid) if m.wave == 0)
    others = sorted(set(ids) - set(canary))
    send_drift(tw, canary, T0 + timedelta(seconds=1), SHIFTED)  # before install
    installed = T0 + timedelta(seconds=10)
    world.respond(installed)
    world.tick(installed)
    with Session(world.engine) as session:
        assert wave_telemetry(session, rid, 0, MODEL).drift_samples == 0

    at = installed + timedelta(seconds=5)
    send_drift(tw, canary, at, SHIFTED, version="1.1")
    send_drift(tw, canary, at, NORMAL, model="other-model")
    send_drift(tw, others, at, NORMAL)
    tw.send(canary[0], [("drift.window", {"model": MODEL, "kind": "chat", "x": 1})], at)
    with Session(world.engine) as session:
        agg = wave_telemetry(session, rid, 0, MODEL)
    expected = sketches.psi(
        sketch("prompt_tokens", NORMAL * 6), sketch("prompt_tokens", SHIFTED * 2)
    )
    assert agg.drift_samples == 80
    assert agg.drift_score == pytest.approx(expected)
    world.tick(at + timedelta(seconds=5))
    rollout = world.rollout(rid)
    assert rollout.status == "halted"
    assert "drift" in rollout.state["reason"]


def test_classes_are_scored_by_psi_only_whatever_the_label_order() -> None:
    """The categorical ``classes`` feature has no KS (None) and its PSI does not depend on
    how labels sort; its alert follows PSI alone."""
    from controller.telemetry.scoring import FeatureScore

    a = feature_score(CLASSES, {"b": 10, "a": 80, "c": 10}, {"b": 80, "a": 10, "c": 10})
    renamed = feature_score(CLASSES, {"z": 10, "a": 80, "c": 10}, {"z": 80, "a": 10, "c": 10})
    assert a is not None and renamed is not None
    assert a.ks is None and renamed.ks is None
    assert a.psi == pytest.approx(renamed.psi)
    limits = Thresholds(psi=0.2, ks=0.1, min_samples=20)
    calm = FeatureScore(CLASSES, 0.01, None, 100)
    assert alert_action(calm, limits, is_open=False) is None
    assert alert_action(calm, limits, is_open=True) == "close"
    assert alert_action(FeatureScore(CLASSES, 0.5, None, 100), limits, is_open=False) == "open"


def test_a_models_score_comes_from_a_feature_with_enough_samples_of_its_own() -> None:
    """A large PSI of a feature with a handful of samples is not the model's score when
    another feature has enough; with none enough, the score carries its own feature's few
    samples (so a gate waits) instead of the largest feature's count."""
    ref = {"prompt_tokens": sketch("prompt_tokens", NORMAL), CLASSES: {"cat": 90, "dog": 10}}
    cur = {
        "prompt_tokens": sketch("prompt_tokens", NORMAL * 5),  # 200 samples, no drift
        CLASSES: {"dog": 5},  # 5 samples, a huge PSI
    }
    psi, samples, scores = model_score(ref, cur, min_samples=100)
    assert len(scores) == 2
    assert psi == pytest.approx(0.0, abs=1e-9) and samples == 200
    psi, samples, _ = model_score(ref, cur, min_samples=1000)
    assert psi is not None and psi > 1 and samples == 5


def test_alerts_judge_the_newest_hour_with_enough_samples_never_a_future_one(
    world: World,
) -> None:
    """Only hours up to now with enough samples are judged: a near-threshold wobble does
    not close an open alert (hysteresis), and a future hour's score is ignored."""
    tw = telemetry(world)
    ids = [f"dev-{i}" for i in range(3)]
    base = T0 - timedelta(hours=5)
    send_drift(tw, ids, base, NORMAL)
    tw.rollup(base)
    with Session(world.engine) as session:
        set_reference(session, CFG, MODEL, now=base + timedelta(minutes=30), actor="user:ops")
        session.commit()
    send_drift(tw, ids, T0, SHIFTED)
    tw.rollup(T0)
    (alert,) = alerts(world)
    assert alert.state == "open"
    with Session(world.engine) as session:
        # A scored hour in the future (written directly: the rollup refuses such windows).
        session.add(
            DriftScore(
                model=MODEL, version="1.0", feature="prompt_tokens",
                hour=hour_of(T0 + timedelta(days=30)), psi=0.0, ks=0.0, samples=1000,
            )
        )  # fmt: skip
        session.commit()
    send_drift(tw, ids, T0 + timedelta(minutes=10), SHIFTED)
    tw.rollup(T0 + timedelta(minutes=10))
    assert [a.state for a in alerts(world)] == ["open"]
    assert alerts(world)[0].detail["hour"] == hour_of(T0).isoformat()


def test_a_feature_stored_in_another_form_is_replaced_with_its_samples() -> None:
    """When a stored hour's sketch cannot be merged with new data (another form), the new
    data replaces it and the stored samples agree with the counts."""
    from controller.telemetry.fold import DriftAgg
    from controller.telemetry.rollup import _merge_drift
    from controller.telemetry.tables import DriftHour

    row = DriftHour(model=MODEL, feature=CLASSES, hour=T0, samples=500, counts=[1, 2, 3])
    _merge_drift(row, DriftAgg({"cat": 4}, 4))
    assert row.counts == {"cat": 4} and row.samples == 4
