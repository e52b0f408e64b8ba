"""OrtPerceptionRuntime against tiny seeded float32 classifiers and their int8 copies."""

import hashlib
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from edge_agent.runtimes.base import RuntimeLoadError
from edge_agent.runtimes.ort_perception import OrtPerceptionRuntime, quantize_int8
from tests.tiny_models import build_tiny_classifier

SHAPE = (1, 3, 8, 8)
LABELS = ["cat", "dog", "bird", "fish"]


def samples(n: int, seed: int = 1, shape: tuple[int, ...] = SHAPE) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(n)]


@pytest.fixture(scope="module")
def float_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Seed 2 spreads the seeded inputs over three of the four classes.
    path = tmp_path_factory.mktemp("cls") / "float.onnx"
    return build_tiny_classifier(path, input_shape=SHAPE, seed=2)


@pytest.fixture(scope="module")
def runtime(float_model: Path) -> OrtPerceptionRuntime:
    rt = OrtPerceptionRuntime("tiny-cls", float_model, labels=LABELS, threads=1)
    rt.warm_up()
    return rt


def test_classify_matches_a_direct_session_and_softmax(
    runtime: OrtPerceptionRuntime, float_model: Path
) -> None:
    """classify() returns the argmax label, its softmax probability and the whole distribution."""
    session = onnxruntime.InferenceSession(str(float_model), providers=["CPUExecutionProvider"])
    for x in samples(5):
        logits = session.run(None, {"input": x})[0][0].astype(np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        result = runtime.classify(x)
        assert result.label_index == int(np.argmax(logits))
        assert result.label == LABELS[result.label_index]
        assert result.confidence == pytest.approx(probs.max(), rel=1e-5)
        assert result.probabilities == pytest.approx(tuple(probs), rel=1e-5)
        assert sum(result.probabilities) == pytest.approx(1.0)


def test_seeded_inputs_do_not_all_land_in_one_class(runtime: OrtPerceptionRuntime) -> None:
    """The tiny model separates inputs, so the int8 agreement check below means something."""
    assert len({runtime.classify(x).label_index for x in samples(40)}) >= 3


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_int8_model_is_smaller_and_agrees_on_top1(
    float_model: Path, runtime: OrtPerceptionRuntime, tmp_path: Path, static: bool
) -> None:
    """quantize_int8 shrinks the file and keeps top-1 on at least 90% of 40 seeded inputs."""
    calibration = samples(16, seed=99) if static else None
    dst = quantize_int8(float_model, tmp_path / "int8.onnx", calibration=calibration)
    assert dst.stat().st_size < float_model.stat().st_size
    int8 = OrtPerceptionRuntime("tiny-cls-int8", dst, labels=LABELS, threads=1)
    inputs = samples(40)
    agree = sum(runtime.classify(x).label_index == int8.classify(x).label_index for x in inputs)
    assert agree / len(inputs) >= 0.9, f"int8 top-1 agreement {agree}/{len(inputs)}"


def test_quantize_rejects_an_empty_calibration_set(float_model: Path, tmp_path: Path) -> None:
    """Static quantization with no samples is refused instead of producing a broken model."""
    with pytest.raises(ValueError, match="at least one sample"):
        quantize_int8(float_model, tmp_path / "x.onnx", calibration=[])


def test_wrong_input_shape_is_a_value_error(runtime: OrtPerceptionRuntime) -> None:
    """An input of the wrong shape or rank is refused with the expected shape in the message."""
    with pytest.raises(ValueError, match=r"must have shape \(1, 3, 8, 8\), got \(1, 3, 9, 8\)"):
        runtime.classify(np.zeros((1, 3, 9, 8), np.float32))
    with pytest.raises(ValueError, match=r"got \(3, 8, 8\)"):
        runtime.classify(np.zeros((3, 8, 8), np.float32))


def test_wrong_input_dtype_is_a_value_error(runtime: OrtPerceptionRuntime) -> None:
    """An input of the wrong dtype is refused rather than silently cast."""
    with pytest.raises(ValueError, match="must be float32, got float64"):
        runtime.classify(np.zeros(SHAPE, np.float64))


def test_batch_models_classify_each_row(tmp_path: Path) -> None:
    """classify_batch gives one result per row; classify() refuses a batch of more than one."""
    path = build_tiny_classifier(tmp_path / "batch2.onnx", input_shape=(2, 3, 8, 8))
    rt = OrtPerceptionRuntime("batch2", path)
    x = np.stack([s[0] for s in samples(2)])
    results = rt.classify_batch(x)
    assert len(results) == 2
    assert results[0].label == str(results[0].label_index)  # no labels: the index
    with pytest.raises(ValueError, match="classify_batch"):
        rt.classify(x)


def test_session_uses_the_requested_threads(float_model: Path) -> None:
    """threads sets ONNX Runtime's intra-op thread count; unavailable providers fall to CPU."""
    rt = OrtPerceptionRuntime(
        "t", float_model, threads=2, providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    options = rt._session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert rt.providers == [
        p for p in ["CUDAExecutionProvider"] if p in onnxruntime.get_available_providers()
    ] + ["CPUExecutionProvider"]
    assert rt._session.get_providers()[-1] == "CPUExecutionProvider"


def test_sha256_is_the_model_file_hash(runtime: OrtPerceptionRuntime, float_model: Path) -> None:
    """runtime.sha256 is the plain sha256 of the model file."""
    assert runtime.sha256 == hashlib.sha256(float_model.read_bytes()).hexdigest()


def test_corrupt_file_is_a_load_error(float_model: Path, tmp_path: Path) -> None:
    """A truncated or garbage .onnx fails to load with onnxruntime's reason attached."""
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(float_model.read_bytes()[:3000])
    with pytest.raises(RuntimeLoadError, match=r"could not load truncated\.onnx"):
        OrtPerceptionRuntime("bad", truncated)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a model")
    with pytest.raises(RuntimeLoadError, match=r"could not load garbage\.onnx"):
        OrtPerceptionRuntime("bad", garbage)


def test_missing_file_is_a_load_error(tmp_path: Path) -> None:
    """A model path that does not exist fails with a reason naming it."""
    with pytest.raises(RuntimeLoadError, match="does not exist"):
        OrtPerceptionRuntime("gone", tmp_path / "gone.onnx")


def test_label_count_mismatch_is_a_load_error(float_model: Path) -> None:
    """Labels that do not match the model's class count are refused at load time."""
    with pytest.raises(RuntimeLoadError, match="4 classes but 2 labels"):
        OrtPerceptionRuntime("t", float_model, labels=["a", "b"])
