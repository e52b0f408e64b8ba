"""The offline drill scenarios: which link fails, when, and for how long (pure).

A drill of ``duration_s`` seconds has a baseline (the first fifth), a fault phase (up to
seven tenths) and a recovery phase; ``fault_plan`` turns a scenario into the list of
``(at_s, action)`` steps the runner performs, measured from the drill's start.
"""

from dataclasses import dataclass
from typing import Literal

Action = Literal[
    "cut_broker",
    "heal_broker",
    "cut_cloud",
    "heal_cloud",
    "kill_controller",
    "start_controller",
    "start_rollout",
]
FAULT_START = 0.2  # share of the duration before the fault (baseline)
FAULT_END = 0.7  # share of the duration at which the fault is healed


@dataclass(frozen=True, slots=True)
class Scenario:
    """One drill scenario: its name, what it breaks and the checks that apply to it."""

    name: str
    summary: str
    link: Literal["broker", "cloud", "controller"]
    flapping: bool = False
    rollout: bool = False


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "broker-partition",
            "the link to the broker is cut (packets vanish) for half the drill, then healed",
            "broker",
        ),
        Scenario(
            "cloud-outage",
            "the cloud tier is unreachable for half the drill; local keeps serving and "
            "cloud-routed requests fall back",
            "cloud",
        ),
        Scenario(
            "controller-crash",
            "the controller is killed with SIGKILL and restarted on the same database and port",
            "controller",
        ),
        Scenario(
            "flapping-link",
            "the broker link is cut and healed every flap period for the fault phase",
            "broker",
            flapping=True,
        ),
        Scenario(
            "rollout-partition",
            "a rollout starts while its first wave's devices are partitioned from the broker",
            "broker",
            rollout=True,
        ),
    )
}


@dataclass(frozen=True, slots=True)
class Step:
    """One scheduled action, ``at_s`` seconds after the drill started."""

    at_s: float
    action: Action


@dataclass(frozen=True, slots=True)
class Window:
    """A fault window in seconds from the drill's start: [start, end)."""

    start: float
    end: float

    def contains(self, t: float) -> bool:
        return self.start <= t < self.end


def get_scenario(name: str) -> Scenario:
    """The scenario called ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(
            f"unknown scenario {name!r}; choose one of {', '.join(SCENARIOS)}"
        ) from None


def fault_plan(scenario: Scenario, duration_s: float, *, flap_period_s: float = 2.0) -> list[Step]:
    """The scheduled steps for ``scenario`` over a drill of ``duration_s`` seconds."""
    if duration_s <= 0:
        raise ValueError("duration must be positive")
    if flap_period_s <= 0:
        raise ValueError("flap period must be positive")
    start, end = duration_s * FAULT_START, duration_s * FAULT_END
    if scenario.link == "cloud":
        return [Step(start, "cut_cloud"), Step(end, "heal_cloud")]
    if scenario.link == "controller":
        return [Step(start, "kill_controller"), Step(end, "start_controller")]
    if scenario.flapping:
        steps: list[Step] = []
        t = start
        while t + flap_period_s <= end:
            steps += [Step(t, "cut_broker"), Step(t + flap_period_s, "heal_broker")]
            t += 2 * flap_period_s
        return steps or [Step(start, "cut_broker"), Step(end, "heal_broker")]
    if scenario.rollout:
        # Cut first, so the wave's assignment cannot reach its devices before the fault.
        return [Step(start, "cut_broker"), Step(start, "start_rollout"), Step(end, "heal_broker")]
    return [Step(start, "cut_broker"), Step(end, "heal_broker")]


def fault_windows(steps: list[Step]) -> list[Window]:
    """The windows during which a fault was in force, from cut/kill to heal/restart."""
    windows: list[Window] = []
    opened: float | None = None
    for step in sorted(steps, key=lambda s: s.at_s):
        if step.action in ("cut_broker", "cut_cloud", "kill_controller"):
            opened = step.at_s if opened is None else opened
        elif (
            step.action in ("heal_broker", "heal_cloud", "start_controller") and opened is not None
        ):
            windows.append(Window(opened, step.at_s))
            opened = None
    return windows


__all__ = [
    "SCENARIOS",
    "Action",
    "Scenario",
    "Step",
    "Window",
    "fault_plan",
    "fault_windows",
    "get_scenario",
]
