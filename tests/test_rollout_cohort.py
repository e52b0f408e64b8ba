"""Cohort selection and hashed wave membership: pure rules, checked with tables and properties."""

import json
import random
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.rollouts.cohort import (
    CohortSelector,
    DeviceFacts,
    Wave,
    assign_waves,
    compatible,
    position,
    selects,
    validate_waves,
    wave_sizes,
)
from tests.conftest import ROOT

PLAN = [Wave(percent=1), Wave(percent=10), Wave(percent=50), Wave(percent=100)]
ids = st.lists(st.from_regex(r"[a-z]{1,6}-[0-9]{1,4}", fullmatch=True), unique=True, max_size=60)


def fleet(n: int) -> list[str]:
    return [f"dev-{i:04d}" for i in range(n)]


def test_percent_waves_take_exact_cumulative_shares() -> None:
    """1/10/50/100 % of 1,000 devices puts 10, 90, 400 and 500 devices in the four waves."""
    waves = assign_waves("smollm2/1.1", fleet(1000), PLAN)
    per_wave = [sum(1 for w in waves.values() if w == i) for i in range(4)]
    assert per_wave == [10, 90, 400, 500]
    assert wave_sizes(PLAN, 1000) == [10, 100, 500, 1000]


@pytest.mark.parametrize(
    ("plan", "total", "expected"),
    [
        pytest.param(["canary:5", "50%", "100%"], 200, [5, 100, 200], id="canary-then-percent"),
        pytest.param(["canary:5", "100%"], 3, [3, 3], id="canary-bigger-than-cohort"),
        pytest.param(["1%", "100%"], 50, [1, 50], id="percent-rounds-up-to-one"),
        pytest.param(["canary:40", "10%", "100%"], 100, [40, 40, 100], id="never-shrinks"),
        pytest.param(["100%"], 0, [0], id="empty-cohort"),
    ],
)
def test_wave_sizes(plan: list[str], total: int, expected: list[int]) -> None:
    """Cumulative sizes honour counts and percentages, round up, and never shrink."""
    assert wave_sizes([Wave.parse(p) for p in plan], total) == expected


@given(ids, st.randoms(use_true_random=False))
def test_membership_does_not_depend_on_the_order_devices_are_seen(
    devices: list[str], rnd: random.Random
) -> None:
    """Shuffling (or repeating) the input ids never moves a device to another wave."""
    shuffled = list(devices) + list(devices[:3])
    rnd.shuffle(shuffled)
    assert assign_waves("k", shuffled, PLAN) == assign_waves("k", devices, PLAN)


@given(ids)
def test_waves_fill_in_hash_order(devices: list[str]) -> None:
    """A device with a lower hash position is never in a later wave than one with a higher."""
    waves = assign_waves("key", devices, PLAN)
    ranked = sorted(devices, key=lambda d: position("key", d))
    assert [waves[d] for d in ranked] == sorted(waves[d] for d in ranked)
    sizes = wave_sizes(PLAN, len(devices))
    for i, size in enumerate(sizes):
        assert sum(1 for w in waves.values() if w <= i) == size


def test_membership_is_stable_across_processes() -> None:
    """A fresh interpreter (another hash seed) computes the same waves: the canary survives a
    controller restart."""
    here = assign_waves("smollm2/1.1", fleet(300), PLAN)
    code = (
        "import json; from controller.rollouts.cohort import Wave, assign_waves;"
        "plan=[Wave(percent=p) for p in (1, 10, 50, 100)];"
        "print(json.dumps(assign_waves('smollm2/1.1', [f'dev-{i:04d}' for i in range(300)], plan)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"},
    )
    assert json.loads(out.stdout) == here


def test_different_rollout_keys_pick_different_canaries() -> None:
    """Two rollouts salt the hash differently, so the same devices do not always go first."""
    a = {d for d, w in assign_waves("model/1", fleet(1000), PLAN).items() if w == 0}
    b = {d for d, w in assign_waves("model/2", fleet(1000), PLAN).items() if w == 0}
    assert len(a) == len(b) == 10
    assert a != b


@pytest.mark.parametrize(
    ("selector", "device", "expected"),
    [
        pytest.param(CohortSelector(), DeviceFacts("d1", "jetson", {}), True, id="everyone"),
        pytest.param(
            CohortSelector(device_classes=("jetson",)),
            DeviceFacts("d1", "npu", {}),
            False,
            id="other-class",
        ),
        pytest.param(
            CohortSelector(tags=("site=berlin", "beta")),
            DeviceFacts("d1", "cpu", {"site": "berlin", "beta": ""}),
            True,
            id="tags-match",
        ),
        pytest.param(
            CohortSelector(tags=("site=berlin",)),
            DeviceFacts("d1", "cpu", {"site": "paris"}),
            False,
            id="tag-value-differs",
        ),
        pytest.param(
            CohortSelector(tags=("beta",)), DeviceFacts("d1", "cpu", {}), False, id="tag-absent"
        ),
        pytest.param(
            CohortSelector(device_ids=("d1", "d2"), device_classes=("cpu",)),
            DeviceFacts("d2", "cpu", {}),
            True,
            id="ids-and-class",
        ),
        pytest.param(
            CohortSelector(device_ids=("d1",)), DeviceFacts("d3", "cpu", {}), False, id="not-listed"
        ),
    ],
)
def test_cohort_selection(selector: CohortSelector, device: DeviceFacts, expected: bool) -> None:
    """Class, tags (shadow labels) and explicit ids each narrow the cohort."""
    assert selects(selector, device) is expected


def test_compatibility_follows_the_model_device_classes() -> None:
    """An empty class list means any device; otherwise the device's class must be listed."""
    assert compatible("jetson", [])
    assert compatible("jetson", ["jetson", "npu"])
    assert not compatible("cpu", ["jetson"])
    assert not compatible(None, ["jetson"])


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        pytest.param([], "at least one wave", id="none"),
        pytest.param(["canary:5", "50%"], "must be 100%", id="last-not-100"),
        pytest.param(["50%", "10%", "100%"], "must not decrease", id="decreasing"),
    ],
)
def test_bad_wave_plans_are_refused(plan: list[str], message: str) -> None:
    """Plans that cannot mean what was written are refused with the reason."""
    with pytest.raises(ValueError, match=message):
        validate_waves([Wave.parse(p) for p in plan])


def test_wave_parsing() -> None:
    """Canary counts and percentages parse from their short forms, and nonsense is refused."""
    assert Wave.parse("canary:5") == Wave(count=5)
    assert Wave.parse("12") == Wave(count=12)
    assert Wave.parse("2.5%") == Wave(percent=2.5)
    assert str(Wave(count=3)) == "canary:3"
    for bad in ("lots", "0", "150%", "-1%"):
        with pytest.raises(ValueError):
            Wave.parse(bad)
