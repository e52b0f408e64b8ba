"""A loaded, warm runtime from a model's configuration and the device's hardware profile.

Chat models run on llama.cpp (GGUF) or ONNX Runtime GenAI (``runtime: ort-genai``);
perception classifiers on ONNX Runtime. The ONNX modules (and numpy) are imported only
when such a model is opened, never with the agent.
"""

from typing import TYPE_CHECKING

from edge_agent.config import ModelConfig, PerceptionModelConfig
from edge_agent.hardware import HardwareProfile
from edge_agent.runtimes.base import ChatRuntime, RuntimeLoadError
from edge_agent.runtimes.llama_cpp import LlamaCppRuntime

if TYPE_CHECKING:
    from edge_agent.runtimes.ort_perception import OrtPerceptionRuntime


def open_chat(model: ModelConfig, profile: HardwareProfile) -> tuple[ChatRuntime, str]:
    """Load and warm the chat ``model``: (runtime, sha256 of its files)."""
    if model.runtime == "ort-genai":
        from edge_agent.runtimes.ort_genai import OrtGenaiRuntime

        genai = OrtGenaiRuntime(model.name, model.path, providers=list(profile.execution_providers))
        genai.warm_up()
        return genai, genai.sha256
    llama = LlamaCppRuntime(
        model.name,
        model.path,
        n_ctx=model.n_ctx,
        n_threads=model.n_threads or profile.recommended_threads,
        # None is "the profile's choice"; an explicit 0 keeps every layer on the CPU.
        n_gpu_layers=profile.gpu_layers if model.n_gpu_layers is None else model.n_gpu_layers,
        mlock=model.mlock,
    )
    llama.warm_up()
    return llama, llama.sha256


def open_classifier(
    model: PerceptionModelConfig, profile: HardwareProfile
) -> "tuple[OrtPerceptionRuntime, str]":
    """Load and warm the classifier ``model``: (runtime, sha256 of its file)."""
    from edge_agent.runtimes.ort_perception import OrtPerceptionRuntime

    loaded = OrtPerceptionRuntime(
        model.name,
        model.path,
        providers=list(profile.execution_providers),
        labels=model.labels,
        threads=model.threads or profile.recommended_threads,
    )
    try:
        loaded.warm_up()
    except Exception as e:  # a model that loads but cannot run is not loaded either
        loaded.close()
        raise RuntimeLoadError(f"{model.path.name} failed its warm-up: {e}") from e
    return loaded, loaded.sha256
