"""Where each model runs: /api/models/deployments on a real controller (SQLite, Mosquitto)."""

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import Broker
from tests.controller_harness import LiveController, live_controller
from tests.rollout_world import NEW_TARGET, World


@pytest.fixture
def live(mosquitto: Broker, tmp_path: Path) -> Iterator[LiveController]:
    with live_controller(
        tmp_path, {"mode": "external", "url": mosquitto.url}, rollouts={"tick_interval_s": 3600}
    ) as controller:
        yield controller


def test_devices_on_their_factory_model_count_under_the_target_with_its_digest(
    live: LiveController,
) -> None:
    """A device running its factory model reports no target, only the model's sha256: it is
    counted under the registered target with that digest, and a digest nobody registered
    is counted nowhere."""
    world = World(str(live.services.engine.url))
    world.add_model("1.1")  # sha256 "11" * 32
    ids = world.add_devices(3, at=datetime.now(UTC))
    for i, d in enumerate(ids):
        world.running[d].update(
            target=None,
            desired_target=None,
            slot="factory",
            sha256=("11" * 32) if i < 2 else "f" * 64,
            status="active" if i == 0 else "installing",
        )
    world.report(ids, datetime.now(UTC))
    page = live.client.get("/api/models/deployments", headers=live.auth).json()
    by_target = {d["target_path"]: d for d in page["data"]}
    assert by_target == {
        NEW_TARGET: {"target_path": NEW_TARGET, "active": 1, "other": 1, "desired": 0}
    }
