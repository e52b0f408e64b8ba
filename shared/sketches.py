"""Fixed-bin histograms ("sketches") that agents and the controller agree on, and the
statistics computed from them: quantiles, PSI and the two-sample KS statistic.

A sketch of feature ``f`` is a list of ``len(EDGES[f]) + 1`` non-negative counts: bin ``i``
holds values ``v`` with ``EDGES[f][i-1] < v <= EDGES[f][i]`` (the first bin everything up to
``EDGES[f][0]``, the last everything above the last edge). The edges are part of the
protocol: changing them is a protocol change. Sketches of the same feature add bin by bin,
so a device's minute windows roll up into hours and a fleet's devices into one sketch
without losing anything the statistics use.

Categorical outputs (a classifier's label index) are sketched as ``{label: count}`` maps
of at most ``MAX_CLASSES`` labels; the statistics treat each label as a bin.

Everything here is pure: no I/O, no clock.
"""

import math
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from typing import Literal, get_args

Feature = Literal["latency_ms", "prompt_tokens", "local_confidence", "perception_confidence"]
FEATURES: tuple[Feature, ...] = get_args(Feature)


def _confidence_edges() -> tuple[float, ...]:
    return tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 .. 0.95, then (0.95, 1]


# Milliseconds, roughly logarithmic from 1 ms to a minute.
_LATENCY_MS: tuple[float, ...] = (
    1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 200, 300, 500, 750,
    1000, 1500, 2000, 3000, 5000, 7500, 10000, 20000, 60000,
)  # fmt: skip

EDGES: dict[Feature, tuple[float, ...]] = {
    "latency_ms": _LATENCY_MS,
    # Prompt length in tokens.
    "prompt_tokens": (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384),
    # Probabilities in [0, 1]: twenty bins of 0.05.
    "local_confidence": _confidence_edges(),
    "perception_confidence": _confidence_edges(),
}

MAX_CLASSES = 64
# The most one bin (or label) of a device's sketch may count: far above any real window
# (2**32 requests in one window), and small enough that sums over a fleet and a year stay
# exact and every statistic stays a finite float.
MAX_COUNT = 2**32
OTHER_CLASS = "other"
# Proportions are floored at this before PSI's logarithm, so an empty bin on one side
# gives a large but finite score (the usual convention; scores stay comparable).
PSI_EPSILON = 1e-4


def bins(feature: Feature) -> int:
    """How many counts a sketch of ``feature`` holds."""
    return len(EDGES[feature]) + 1


def empty(feature: Feature) -> list[int]:
    return [0] * bins(feature)


def bin_index(feature: Feature, value: float) -> int:
    """The bin ``value`` falls in; NaN is refused with a ValueError."""
    if math.isnan(value):
        raise ValueError(f"{feature}: NaN cannot be sketched")
    return bisect_left(EDGES[feature], value)


def add(counts: list[int], feature: Feature, value: float, n: int = 1) -> None:
    """Count ``value`` (``n`` times) into ``counts`` in place."""
    counts[bin_index(feature, value)] += n


def validate(feature: str, counts: object) -> list[int]:
    """``counts`` as a sketch of ``feature``, or a ValueError saying what is wrong with it
    (for data that came from a device)."""
    if feature not in EDGES:
        raise ValueError(f"unknown sketch feature {feature!r}")
    expected = bins(feature)
    if not isinstance(counts, list) or len(counts) != expected:
        raise ValueError(f"{feature}: expected a list of {expected} counts")
    for c in counts:
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= MAX_COUNT:
            raise ValueError(f"{feature}: counts must be non-negative integers up to {MAX_COUNT}")
    return list(counts)


def validate_classes(classes: object) -> dict[str, int]:
    """A categorical sketch from a device, or a ValueError."""
    if not isinstance(classes, dict) or len(classes) > MAX_CLASSES + 1:
        raise ValueError(f"classes: expected a map of at most {MAX_CLASSES + 1} labels")
    out: dict[str, int] = {}
    for label, c in classes.items():
        if not isinstance(label, str) or not 1 <= len(label) <= 64:
            raise ValueError("classes: labels must be strings of 1-64 characters")
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= MAX_COUNT:
            raise ValueError(f"classes: counts must be non-negative integers up to {MAX_COUNT}")
        out[label] = c
    return out


def merge(a: Sequence[int], b: Sequence[int]) -> list[int]:
    """Bin-by-bin sum of two sketches of the same feature."""
    if len(a) != len(b):
        raise ValueError(f"cannot merge sketches of {len(a)} and {len(b)} bins")
    return [x + y for x, y in zip(a, b, strict=True)]


def add_class(classes: dict[str, int], label: str, n: int = 1) -> None:
    """Count ``label``; past ``MAX_CLASSES`` distinct labels new ones go to ``other``."""
    if label not in classes and len(classes) >= MAX_CLASSES:
        label = OTHER_CLASS
    classes[label] = classes.get(label, 0) + n


def merge_classes(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    out = dict(a)
    for label, n in b.items():
        add_class(out, label, n)
    return out


def quantile(feature: Feature, counts: Sequence[int], q: float) -> float | None:
    """The ``q``-quantile (0 < q <= 1) estimated from a sketch by linear interpolation
    inside the bin it falls in; None for an empty sketch. Values in the overflow bin are
    reported as the last edge (a lower bound)."""
    if not 0 < q <= 1:
        raise ValueError("q must be in (0, 1]")
    total = sum(counts)
    if total == 0:
        return None
    edges = EDGES[feature]
    rank = q * total
    seen = 0
    for i, c in enumerate(counts):
        if c and seen + c >= rank:
            if i == len(edges):
                return float(edges[-1])
            low = 0.0 if i == 0 else float(edges[i - 1])
            high = float(edges[i])
            return low + (high - low) * (rank - seen) / c
        seen += c
    return float(edges[-1])


def _proportions(counts: Sequence[float]) -> list[float]:
    total = float(sum(counts))
    if total <= 0:
        raise ValueError("an empty sketch has no distribution")
    return [c / total for c in counts]


def psi(reference: Sequence[float], current: Sequence[float]) -> float:
    """Population stability index of ``current`` against ``reference`` (same bins):
    ``sum((c - r) * ln(c / r))`` over bin proportions floored at ``PSI_EPSILON``.
    Common reading: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift."""
    if len(reference) != len(current):
        raise ValueError("PSI needs sketches with the same bins")
    r = [max(p, PSI_EPSILON) for p in _proportions(reference)]
    c = [max(p, PSI_EPSILON) for p in _proportions(current)]
    return sum((ci - ri) * math.log(ci / ri) for ri, ci in zip(r, c, strict=True))


def ks(reference: Sequence[float], current: Sequence[float]) -> float:
    """Two-sample Kolmogorov-Smirnov statistic on binned data: the largest distance
    between the two empirical CDFs at the bin edges (within one bin of the exact
    statistic on the raw samples)."""
    if len(reference) != len(current):
        raise ValueError("KS needs sketches with the same bins")
    r = _proportions(reference)
    c = _proportions(current)
    d = 0.0
    cr = cc = 0.0
    for ri, ci in zip(r, c, strict=True):
        cr += ri
        cc += ci
        d = max(d, abs(cr - cc))
    return d


def align_classes(
    reference: Mapping[str, int], current: Mapping[str, int]
) -> tuple[list[int], list[int]]:
    """Two categorical sketches as count lists over the union of their labels."""
    labels = sorted(set(reference) | set(current))
    return [reference.get(k, 0) for k in labels], [current.get(k, 0) for k in labels]


__all__ = [
    "EDGES",
    "FEATURES",
    "MAX_CLASSES",
    "MAX_COUNT",
    "OTHER_CLASS",
    "PSI_EPSILON",
    "Feature",
    "add",
    "add_class",
    "align_classes",
    "bin_index",
    "bins",
    "empty",
    "ks",
    "merge",
    "merge_classes",
    "psi",
    "quantile",
    "validate",
    "validate_classes",
]
