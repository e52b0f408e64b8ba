"""The shared fixed-bin sketches: binning, quantiles, PSI and KS checked against numpy and
scipy on samples from known distributions, and the refusals of bad device data."""

import math

import numpy as np
import pytest
from scipy.special import rel_entr
from scipy.stats import ks_2samp

from shared import sketches
from shared.sketches import EDGES, PSI_EPSILON, Feature


def sketch_of(feature: Feature, values: np.ndarray) -> list[int]:
    counts = sketches.empty(feature)
    for v in values:
        sketches.add(counts, feature, float(v))
    return counts


def floored(counts: list[int]) -> np.ndarray:
    p = np.asarray(counts, dtype=float) / sum(counts)
    return np.maximum(p, PSI_EPSILON)


def bin_width_at(feature: Feature, value: float) -> float:
    edges = (0.0, *EDGES[feature])
    i = sketches.bin_index(feature, value)
    return edges[i + 1] - edges[i] if i + 1 < len(edges) else math.inf


def test_bins_hold_values_up_to_and_including_their_upper_edge() -> None:
    """A value equal to an edge falls in the bin that edge closes; above the last edge is
    the overflow bin."""
    assert sketches.bin_index("latency_ms", 1) == 0
    assert sketches.bin_index("latency_ms", 1.0001) == 1
    assert sketches.bin_index("latency_ms", 60000) == len(EDGES["latency_ms"]) - 1
    assert sketches.bin_index("latency_ms", 60001) == len(EDGES["latency_ms"])
    assert sketches.bin_index("local_confidence", 0.05) == 0
    assert sketches.bin_index("local_confidence", 1.0) == 19
    with pytest.raises(ValueError, match="NaN"):
        sketches.bin_index("latency_ms", math.nan)


@pytest.mark.parametrize(
    ("name", "reference", "current"),
    [
        ("shifted_normal", (0.5, 0.1), (0.6, 0.1)),
        ("wider_normal", (0.5, 0.05), (0.5, 0.2)),
        ("same_distribution", (0.5, 0.1), (0.5, 0.1)),
    ],
)
def test_psi_equals_symmetric_relative_entropy_of_floored_proportions(
    name: str, reference: tuple[float, float], current: tuple[float, float]
) -> None:
    """PSI is sum(rel_entr(c, r) + rel_entr(r, c)) over proportions floored at PSI_EPSILON."""
    rng = np.random.default_rng(7)
    r = sketch_of("local_confidence", rng.normal(*reference, 5000))
    c = sketch_of("local_confidence", rng.normal(*current, 5000))
    rp, cp = floored(r), floored(c)
    expected = float(np.sum(rel_entr(cp, rp) + rel_entr(rp, cp)))
    assert sketches.psi(r, c) == pytest.approx(expected, rel=1e-12), name


def test_psi_reads_stable_for_one_distribution_and_major_for_a_shift() -> None:
    """Two samples of one distribution score below 0.1; a one-sigma shift scores above 0.25;
    an empty bin on one side gives a large but finite score."""
    rng = np.random.default_rng(11)
    a = sketch_of("prompt_tokens", rng.lognormal(5, 1, 20000))
    b = sketch_of("prompt_tokens", rng.lognormal(5, 1, 20000))
    shifted = sketch_of("prompt_tokens", rng.lognormal(6, 1, 20000))
    assert sketches.psi(a, b) < 0.1
    assert sketches.psi(a, shifted) > 0.25
    one_bin = sketches.empty("local_confidence")
    other_bin = sketches.empty("local_confidence")
    one_bin[0], other_bin[19] = 10, 10
    assert math.isfinite(sketches.psi(one_bin, other_bin))


@pytest.mark.parametrize(
    ("name", "feature", "reference", "current"),
    [
        ("latency_shifted_normal", "latency_ms", (300.0, 80.0), (360.0, 80.0)),
        ("latency_same_normal", "latency_ms", (300.0, 80.0), (300.0, 80.0)),
        ("confidence_shifted_normal", "local_confidence", (0.6, 0.1), (0.7, 0.1)),
        ("confidence_same_normal", "local_confidence", (0.6, 0.1), (0.6, 0.1)),
    ],
)
def test_binned_ks_is_within_one_bin_of_scipy_on_the_raw_samples(
    name: str, feature: Feature, reference: tuple[float, float], current: tuple[float, float]
) -> None:
    """KS on the sketches never exceeds ks_2samp on the raw samples (the CDFs agree at the
    edges) and falls short of it by at most the largest bin's share."""
    rng = np.random.default_rng(3)
    raw_r = np.clip(rng.normal(*reference, 4000), 0, None)
    raw_c = np.clip(rng.normal(*current, 3000), 0, None)
    r, c = sketch_of(feature, raw_r), sketch_of(feature, raw_c)
    exact = float(ks_2samp(raw_r, raw_c).statistic)
    binned = sketches.ks(r, c)
    largest_bin = max(max(r) / sum(r), max(c) / sum(c))
    assert binned <= exact + 1e-12, name
    assert exact - binned <= largest_bin, name


def test_ks_separates_a_shift_from_sampling_noise() -> None:
    """A shift of one sigma gives a KS far above that of two samples of one distribution."""
    rng = np.random.default_rng(5)
    a = sketch_of("perception_confidence", rng.beta(8, 2, 5000))
    b = sketch_of("perception_confidence", rng.beta(8, 2, 5000))
    shifted = sketch_of("perception_confidence", rng.beta(5, 3, 5000))
    assert sketches.ks(a, b) < 0.05
    assert sketches.ks(a, shifted) > 0.2


@pytest.mark.parametrize("q", [0.5, 0.9, 0.95, 0.99])
def test_quantiles_are_within_the_bin_of_numpy_percentiles(q: float) -> None:
    """A quantile estimated from a latency sketch lies within one bin width of numpy's
    percentile of the raw samples."""
    rng = np.random.default_rng(17)
    raw = rng.lognormal(np.log(200), 0.6, 10000)
    counts = sketch_of("latency_ms", raw)
    exact = float(np.percentile(raw, q * 100))
    estimate = sketches.quantile("latency_ms", counts, q)
    assert estimate is not None
    assert abs(estimate - exact) <= bin_width_at("latency_ms", exact)


def test_quantile_edge_cases() -> None:
    """An empty sketch has no quantile, the overflow bin reports the last edge, and q outside
    (0, 1] is refused."""
    counts = sketches.empty("latency_ms")
    assert sketches.quantile("latency_ms", counts, 0.5) is None
    sketches.add(counts, "latency_ms", 120_000, n=3)
    assert sketches.quantile("latency_ms", counts, 0.99) == EDGES["latency_ms"][-1]
    for q in (0.0, 1.5):
        with pytest.raises(ValueError, match="q must be"):
            sketches.quantile("latency_ms", counts, q)


def test_merge_is_bin_by_bin_and_refuses_other_shapes() -> None:
    """Merged sketches equal the sketch of the pooled samples; different lengths are refused."""
    rng = np.random.default_rng(23)
    a_raw, b_raw = rng.uniform(0, 1, 300), rng.uniform(0, 1, 500)
    a = sketch_of("local_confidence", a_raw)
    b = sketch_of("local_confidence", b_raw)
    assert sketches.merge(a, b) == sketch_of("local_confidence", np.concatenate([a_raw, b_raw]))
    with pytest.raises(ValueError, match="cannot merge"):
        sketches.merge(a, sketches.empty("latency_ms"))
    with pytest.raises(ValueError, match="same bins"):
        sketches.psi(a, sketches.empty("latency_ms"))
    with pytest.raises(ValueError, match="same bins"):
        sketches.ks(a, sketches.empty("latency_ms"))
    with pytest.raises(ValueError, match="empty sketch"):
        sketches.psi(a, sketches.empty("local_confidence"))


@pytest.mark.parametrize(
    ("name", "feature", "counts", "message"),
    [
        ("unknown_feature", "temperature", [0] * 5, "unknown sketch feature"),
        ("not_a_list", "latency_ms", {"0": 1}, "expected a list"),
        ("too_short", "latency_ms", [0] * 3, "expected a list of 24"),
        ("negative", "prompt_tokens", [-1] + [0] * 12, "non-negative"),
        ("float", "prompt_tokens", [0.5] + [0] * 12, "non-negative integers"),
        ("bool", "prompt_tokens", [True] + [0] * 12, "non-negative integers"),
        ("huge", "prompt_tokens", [10**400] + [0] * 12, "up to"),
        ("just_over", "prompt_tokens", [sketches.MAX_COUNT + 1] + [0] * 12, "up to"),
    ],
)
def test_validate_refuses_malformed_device_sketches(
    name: str, feature: str, counts: object, message: str
) -> None:
    """Each malformed sketch is refused with a ValueError naming what is wrong."""
    with pytest.raises(ValueError, match=message):
        sketches.validate(feature, counts)


def test_validate_accepts_a_well_formed_sketch_as_a_copy() -> None:
    """A good sketch comes back as an equal, separate list."""
    counts = [1] * sketches.bins("prompt_tokens")
    out = sketches.validate("prompt_tokens", counts)
    assert out == counts and out is not counts


@pytest.mark.parametrize(
    ("name", "classes", "message"),
    [
        ("not_a_map", [1, 2], "expected a map"),
        ("too_many", {str(i): 1 for i in range(sketches.MAX_CLASSES + 2)}, "at most"),
        ("empty_label", {"": 1}, "labels must be strings"),
        ("long_label", {"x" * 65: 1}, "labels must be strings"),
        ("negative", {"3": -1}, "non-negative"),
        ("bool", {"3": True}, "non-negative"),
        ("huge", {"3": 10**400}, "up to"),
    ],
)
def test_validate_classes_refuses_malformed_maps(name: str, classes: object, message: str) -> None:
    """Each malformed categorical sketch is refused with a ValueError."""
    with pytest.raises(ValueError, match=message):
        sketches.validate_classes(classes)


def test_classes_cap_new_labels_into_other_and_align_for_statistics() -> None:
    """Past MAX_CLASSES labels new ones count as ``other``; aligned maps give PSI/KS inputs
    over the union of labels, and a changed class mix scores as drift."""
    classes: dict[str, int] = {}
    for i in range(sketches.MAX_CLASSES + 5):
        sketches.add_class(classes, str(i))
    assert len(classes) == sketches.MAX_CLASSES + 1
    assert classes[sketches.OTHER_CLASS] == 5
    assert sketches.validate_classes(classes) == classes
    merged = sketches.merge_classes({"0": 2}, {"0": 1, "1": 4})
    assert merged == {"0": 3, "1": 4}
    r, c = sketches.align_classes({"0": 90, "1": 10}, {"1": 50, "2": 50})
    assert (r, c) == ([90, 10, 0], [0, 50, 50])
    assert sketches.psi(r, c) > 0.25 and sketches.ks(r, c) == pytest.approx(0.9)
