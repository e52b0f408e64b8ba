"""Drift scores and alert decisions: pure functions of sketches and thresholds.

A feature's score compares its current sketch with its reference sketch: PSI and the
binned two-sample KS statistic (``shared.sketches``). The categorical ``classes`` feature
is compared over the union of both sides' labels with PSI only: KS needs ordered bins, and
class labels have no order (a KS over them would depend on how the labels sort), so its
KS is None and its alerts follow PSI alone. A model's score is the largest PSI over its
features that have enough samples themselves.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from controller.telemetry.fold import CLASSES, Counts, samples_of
from shared import sketches


@dataclass(frozen=True, slots=True)
class FeatureScore:
    feature: str
    psi: float
    ks: float | None  # None for the categorical ``classes`` feature
    samples: int


@dataclass(frozen=True, slots=True)
class Thresholds:
    psi: float
    ks: float
    min_samples: int
    # An open alert closes only once every statistic is below ``close_ratio`` times its
    # threshold (hysteresis: a score hovering at the threshold does not flap).
    close_ratio: float = 0.8


def feature_score(feature: str, reference: Counts, current: Counts) -> FeatureScore | None:
    """PSI and KS of ``current`` against ``reference`` (PSI only for ``classes``); None if
    either side is empty, they do not have the same form (bins of another length, or
    labels against bins), or the statistics cannot be computed from them (counts too large
    for a float: stored data that is not a sketch)."""
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
    categorical = feature == CLASSES or isinstance(current, dict)
    try:
        psi = sketches.psi(ref, cur)
        ks = None if categorical else sketches.ks(ref, cur)
    except (ValueError, ArithmeticError):
        return None
    if not math.isfinite(psi) or (ks is not None and not math.isfinite(ks)):
        return None
    return FeatureScore(feature, psi, ks, sum(cur))


def model_score(
    reference: Mapping[str, Counts], current: Mapping[str, Counts], *, min_samples: int = 0
) -> tuple[float | None, int, list[FeatureScore]]:
    """A model's drift: the largest PSI over the features both sides have, among those
    with at least ``min_samples`` samples of their own (None without any scored feature),
    the samples of the feature that score comes from, and each feature's score.

    When no scored feature has enough samples, the largest PSI is returned with that
    feature's (too few) samples, so a gate waits instead of judging it.
    """
    scores = [
        score
        for feature, counts in sorted(current.items())
        if feature in reference
        and (score := feature_score(feature, reference[feature], counts)) is not None
    ]
    if not scores:
        return None, max((samples_of(c) for c in current.values()), default=0), []
    enough = [s for s in scores if s.samples >= min_samples]
    worst = max(enough or scores, key=lambda s: (s.psi, s.samples))
    return worst.psi, worst.samples, scores


AlertAction = Literal["open", "close", "update"] | None


def crossed(
    score: FeatureScore, thresholds: Thresholds, ratio: float = 1.0
) -> tuple[str, float, float] | None:
    """Which statistic is above ``ratio`` times its threshold (PSI first), as (name,
    value, threshold); a feature without KS (``classes``) is judged on PSI alone."""
    if score.psi > thresholds.psi * ratio:
        return "psi", score.psi, thresholds.psi
    if score.ks is not None and score.ks > thresholds.ks * ratio:
        return "ks", score.ks, thresholds.ks
    return None


def alert_action(score: FeatureScore, thresholds: Thresholds, *, is_open: bool) -> AlertAction:
    """What to do with a feature's drift alert given its newest score: open one when a
    statistic crosses its threshold; close the open one only when every statistic is below
    ``close_ratio`` times its threshold (keep it open, updated, in between); nothing on
    too few samples (a score on a handful of requests is noise either way)."""
    if score.samples < thresholds.min_samples:
        return None
    if is_open:
        still = crossed(score, thresholds, thresholds.close_ratio) is not None
        return "update" if still else "close"
    return "open" if crossed(score, thresholds) is not None else None


__all__ = [
    "AlertAction",
    "FeatureScore",
    "Thresholds",
    "alert_action",
    "crossed",
    "feature_score",
    "model_score",
]
