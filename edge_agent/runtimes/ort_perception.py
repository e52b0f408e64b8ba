"""ONNX Runtime perception: image or audio classifiers as a single ``.onnx`` file.

The model takes one tensor (an image ``[N, C, H, W]``, a spectrogram, a waveform ...) and its
first output holds one score per class. Scores are turned into probabilities with a softmax,
unless the model already outputs a probability distribution (non-negative rows summing to 1).

``quantize_int8`` turns a float32 model into an int8 one so small devices run it faster and in
less memory.
"""

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.runtimes.base import RuntimeLoadError
from edge_agent.runtimes.llama_cpp import file_sha256

# ONNX tensor element types (as InferenceSession reports them) -> numpy dtypes.
_ONNX_DTYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


@dataclass(frozen=True, slots=True)
class Classification:
    """The top class of one input, with the full probability distribution."""

    label_index: int
    label: str
    confidence: float
    probabilities: tuple[float, ...]


def _dims(shape: Sequence[Any]) -> tuple[int | None, ...]:
    """A model shape with symbolic or unknown dimensions as ``None``."""
    return tuple(d if isinstance(d, int) and d > 0 else None for d in shape)


def _probabilities(scores: np.ndarray) -> np.ndarray:
    """Rows of class probabilities: softmax of the scores unless they already are probabilities."""
    rows = scores.astype(np.float64)
    if np.all(rows >= 0) and np.allclose(rows.sum(axis=-1), 1.0, atol=1e-4):
        return rows
    shifted = np.exp(rows - rows.max(axis=-1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=-1, keepdims=True))


class _Calibration:
    """CalibrationDataReader over in-memory samples, for static quantization."""

    def __init__(self, input_name: str, samples: Sequence[np.ndarray]) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter(
            [{input_name: sample} for sample in samples]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_int8(src: Path, dst: Path, *, calibration: Sequence[np.ndarray] | None = None) -> Path:
    """Write an int8 copy of the float model ``src`` to ``dst`` and return ``dst``.

    Without ``calibration`` the weights are quantized ahead of time and activations on the fly
    (dynamic: ConvInteger/MatMulInteger), which needs no sample data. With ``calibration`` (a few
    representative inputs, each shaped like the model input) activations get fixed int8 ranges
    too (static, QDQ format), which NPUs and int8-only accelerators want.
    """
    try:
        from onnxruntime.quantization import (
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )
    except ImportError as e:  # onnxruntime.quantization needs the onnx package as well
        raise RuntimeError(f"int8 quantization needs onnxruntime and onnx installed: {e}") from e

    if not src.is_file():
        raise FileNotFoundError(f"model file {src} does not exist")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if calibration is None:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        return dst
    if not calibration:
        raise ValueError("calibration needs at least one sample")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    del session
    quantize_static(
        str(src),
        str(dst),
        _Calibration(input_name, calibration),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return dst


class OrtPerceptionRuntime:
    """One classifier, loaded once into an ONNX Runtime session, warmed up before first use."""

    runtime_name = "onnxruntime"

    def __init__(
        self,
        model_name: str,
        path: Path,
        *,
        providers: list[str] | None = None,
        labels: list[str] | None = None,
        threads: int | None = None,
    ) -> None:
        self.model_name = model_name
        self.path = path
        if not path.is_file():
            raise RuntimeLoadError(f"model file {path} does not exist")
        if threads is not None and threads < 1:
            raise RuntimeLoadError(f"threads must be at least 1, got {threads}")
        try:
            import onnxruntime
        except ImportError as e:  # the agent still runs; perception is just unhealthy
            raise RuntimeLoadError(f"onnxruntime is not installed: {e}") from e
        self.sha256 = file_sha256(path)
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1
        if threads is not None:
            options.intra_op_num_threads = threads
        available = set(onnxruntime.get_available_providers())
        chosen = [p for p in providers or () if p in available and p != "CPUExecutionProvider"]
        self.providers = [*chosen, "CPUExecutionProvider"]
        try:
            self._session: Any = onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=self.providers
            )
        except Exception as e:  # onnxruntime's errors (InvalidProtobuf, Fail...) derive from it
            raise RuntimeLoadError(f"onnxruntime could not load {path.name}: {e}") from e
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or not outputs:
            raise RuntimeLoadError(
                f"{path.name} is not a classifier: it has {len(inputs)} inputs and "
                f"{len(outputs)} outputs (want one input and a score output)"
            )
        self.input_name: str = inputs[0].name
        self.input_shape = _dims(inputs[0].shape)
        if inputs[0].type not in _ONNX_DTYPES:
            raise RuntimeLoadError(f"{path.name} takes {inputs[0].type}, which is not supported")
        self.input_dtype = np.dtype(_ONNX_DTYPES[inputs[0].type])
        self.output_name: str = outputs[0].name
        output_shape = _dims(outputs[0].shape)
        self.num_classes = output_shape[-1] if output_shape else None
        if labels is not None and self.num_classes is not None and len(labels) != self.num_classes:
            raise RuntimeLoadError(
                f"{path.name} has {self.num_classes} classes but {len(labels)} labels were given"
            )
        self.labels = list(labels) if labels is not None else None
        # A session may run concurrently, but one at a time keeps the cores for the one running.
        self._lock = threading.Lock()

    def _check(self, inputs: np.ndarray) -> None:
        want = tuple("?" if d is None else d for d in self.input_shape)
        if inputs.ndim != len(self.input_shape) or any(
            d is not None and d != got
            for d, got in zip(self.input_shape, inputs.shape, strict=True)
        ):
            raise ValueError(
                f"{self.model_name} input '{self.input_name}' must have shape {want}, "
                f"got {tuple(inputs.shape)}"
            )
        if inputs.dtype != self.input_dtype:
            raise ValueError(
                f"{self.model_name} input '{self.input_name}' must be {self.input_dtype}, "
                f"got {inputs.dtype}"
            )

    def _label(self, index: int) -> str:
        if self.labels is None:
            return str(index)
        if index >= len(self.labels):
            raise ValueError(
                f"{self.model_name} scored class {index}; only {len(self.labels)} labels"
            )
        return self.labels[index]

    def classify_batch(self, inputs: np.ndarray) -> list[Classification]:
        """One classification per row of the batch (the model's first input dimension)."""
        if not isinstance(inputs, np.ndarray):
            raise ValueError(f"{self.model_name} takes a numpy array, got {type(inputs).__name__}")
        self._check(inputs)
        with self._lock:
            scores = np.asarray(self._session.run([self.output_name], {self.input_name: inputs})[0])
        rows = _probabilities(scores.reshape(-1, scores.shape[-1]))
        results = []
        for row in rows:
            index = int(np.argmax(row))
            results.append(
                Classification(
                    label_index=index,
                    label=self._label(index),
                    confidence=float(row[index]),
                    probabilities=tuple(float(p) for p in row),
                )
            )
        return results

    def classify(self, inputs: np.ndarray) -> Classification:
        """Classify one sample, shaped exactly like the model input (batch of one)."""
        results = self.classify_batch(inputs)
        if len(results) != 1:
            raise ValueError(
                f"{self.model_name} classify takes one sample, got {len(results)}; "
                "use classify_batch"
            )
        return results[0]

    def warm_up(self) -> None:
        """Run one all-zero input so the first real request does not pay for page-ins."""
        shape = tuple(1 if d is None else d for d in self.input_shape)
        self.classify_batch(np.zeros(shape, dtype=self.input_dtype))

    def smoke_scores(self) -> list[tuple[float, ...]]:
        """The raw scores (first output, one row per sample) for one neutral input: all zeros
        in the model's input shape and type. The update health check judges them."""
        shape = tuple(1 if d is None else d for d in self.input_shape)
        with self._lock:
            output = self._session.run(
                [self.output_name], {self.input_name: np.zeros(shape, dtype=self.input_dtype)}
            )[0]
        scores = np.asarray(output, dtype=np.float64)
        if scores.size == 0:
            return []
        rows = scores.reshape(1, -1) if scores.ndim < 2 else scores.reshape(-1, scores.shape[-1])
        return [tuple(float(s) for s in row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._session = None
