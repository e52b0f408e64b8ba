"""The model update manager's thread under the agent's supervisor (a real TUF repository).

A defect in one update step (injected by making ``reconcile`` raise until the test lets it
go) is logged, counted as a restart of the ``model-updates`` worker and retried after a
backoff; once the defect is gone the same desired model is installed.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.updates.manager import UpdateManager
from tests.conftest import wait_for
from tests.tiny_models import build_tiny_genai_model
from tests.tuf_simulator import UpdateWorld, model_custom, tar_folder


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    """A tiny factory decoder and the update that replaces it."""
    return {
        name: build_tiny_genai_model(tmp_path / "models" / name, layers=1, seed=seed)
        for name, seed in (("factory", 0), ("v2", 4))
    }


@pytest.fixture
def world(tmp_path: Path, models: dict[str, Path]) -> Iterator[UpdateWorld]:
    world = UpdateWorld(tmp_path / "world", factory=models["factory"])
    yield world
    world.close()


def test_a_crashing_update_step_is_restarted_and_the_install_still_happens(
    world: UpdateWorld, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While reconcile raises, the model-updates worker is counted as restarted (and shown
    down between restarts); once it no longer raises, the desired model is installed."""
    target = "tiny/2/model.tar"
    world.repo.add_target(target, tar_folder(models["v2"]), model_custom(version="2"))
    world.repo.publish()
    agent = world.start_agent()
    try:
        updates = agent.updates
        assert isinstance(updates, UpdateManager)
        real = updates.reconcile
        calls = {"raised": 0}
        broken = True

        def reconcile() -> float | None:
            if broken:
                calls["raised"] += 1
                raise RuntimeError("injected defect in an update step")
            return real()

        monkeypatch.setattr(updates, "reconcile", reconcile)
        agent.start_link()  # no mqtt section: only the update worker starts
        world.want(agent, target)
        wait_for(
            lambda: agent.supervisor.restarts().get("model-updates", 0) >= 2,
            30,
            what="the crashing step to be restarted twice",
        )
        assert calls["raised"] >= 2
        wait_for(lambda: "model-updates" in agent.workers_down(), 10, interval=0.02)
        broken = False

        def installed() -> bool:
            model = agent.shadow.report().state["model"]
            return bool(model["status"] == "active" and model["target"] == target)

        wait_for(installed, 60, what="the install once the defect is gone")
        wait_for(lambda: agent.workers_down() == [], 10, what="the worker running again")
    finally:
        agent.stop()
