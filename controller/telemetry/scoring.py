"""Drift scores and alert decisions: pure functions of sketches and thresholds.

A feature's score compares its current sketch with its reference sketch: PSI and the
binned two-sample KS statistic (``shared.sketches``); the categorical ``classes`` feature
is compared over the union of both sides' labels. A model's score is the largest PSI over
its features.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from controller.telemetry.fold import Counts, samples_of
from shared import sketches


@dataclass(frozen=True, slots=True)
class FeatureScore:
    feature: str
    psi: float
    ks: float
    samples: int


@dataclass(frozen=True, slots=True)
class Thresholds:
    psi: float
    ks: float
    min_samples: int


def feature_score(feature: str, reference: Counts, current: Counts) -> FeatureScore | None:
    """PSI and KS of ``current`` against ``reference``; None if either side is empty or
    they do not have the same form (bins of another length, or labels against bins)."""
    if isinstance(reference, dict) and isinstance(current, dict):
        ref, cur = sketches.align_classes(reference, current)
    elif isinstance(reference, list) and isinstance(current, list):
        if len(reference) != len(current):
            return None
        ref, cur = list(reference), list(current)
    else:
        return None
    if sum(ref) <= 0 or sum(cur) <= 0:
        return None
    return FeatureScore(feature, sketches.psi(ref, cur), sketches.ks(ref, cur), sum(cur))


def model_score(
    reference: Mapping[str, Counts], current: Mapping[str, Counts]
) -> tuple[float | None, int, list[FeatureScore]]:
    """A model's drift: the largest PSI over the features both sides have (None without
    any), the number of samples (the largest feature's count), and each feature's score."""
    scores = [
        score
        for feature, counts in sorted(current.items())
        if feature in reference
        and (score := feature_score(feature, reference[feature], counts)) is not None
    ]
    samples = max((samples_of(c) for c in current.values()), default=0)
    if not scores:
        return None, samples, []
    return max(s.psi for s in scores), samples, scores


AlertAction = Literal["open", "close", "update"] | None


def crossed(score: FeatureScore, thresholds: Thresholds) -> tuple[str, float, float] | None:
    """Which statistic is above its threshold (PSI first), as (name, value, threshold)."""
    if score.psi > thresholds.psi:
        return "psi", score.psi, thresholds.psi
    if score.ks > thresholds.ks:
        return "ks", score.ks, thresholds.ks
    return None


def alert_action(score: FeatureScore, thresholds: Thresholds, *, is_open: bool) -> AlertAction:
    """What to do with a feature's drift alert given its newest score: open one when a
    statistic crosses its threshold, close the open one when both are back below; nothing
    on too few samples (a score on a handful of requests is noise either way)."""
    if score.samples < thresholds.min_samples:
        return None
    above = crossed(score, thresholds) is not None
    if above:
        return "update" if is_open else "open"
    return "close" if is_open else None


__all__ = [
    "AlertAction",
    "FeatureScore",
    "Thresholds",
    "alert_action",
    "crossed",
    "feature_score",
    "model_score",
]
