"""Staged rollouts: cohorts in hashed waves, health gates, and the state machine that
drives them (pure), with the database shell that loads observations and applies actions.

``cohort``, ``gates`` and ``engine`` are pure (time injected, no I/O); ``observe`` and
``service`` talk to the database.
"""

from controller.rollouts.cohort import CohortSelector, Wave, assign_waves
from controller.rollouts.engine import (
    Command,
    CommandRefused,
    Outcome,
    RolloutError,
    RolloutSpec,
    RolloutState,
    Status,
    step,
)
from controller.rollouts.gates import GatePolicy, Verdict

__all__ = [
    "CohortSelector",
    "Command",
    "CommandRefused",
    "GatePolicy",
    "Outcome",
    "RolloutError",
    "RolloutSpec",
    "RolloutState",
    "Status",
    "Verdict",
    "Wave",
    "assign_waves",
    "step",
]
