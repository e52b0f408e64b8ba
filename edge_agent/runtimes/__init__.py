"""Local inference runtimes behind one interface. Only this package imports runtime libraries."""

import importlib.util

from edge_agent.runtimes.base import (
    ChatMessage,
    ChatRequest,
    ChatRuntime,
    Completion,
    CompletionChunk,
    RuntimeLoadError,
)

# Runtime name as reported to the controller -> the module that provides it.
_RUNTIME_MODULES = {
    "llama.cpp": "llama_cpp",
    "onnxruntime": "onnxruntime",
    "ort-genai": "onnxruntime_genai",
}


def available_runtimes() -> list[str]:
    """Runtimes whose library is importable here (found without importing it)."""
    return [name for name, module in _RUNTIME_MODULES.items() if importlib.util.find_spec(module)]


def execution_providers() -> list[str]:
    """ONNX Runtime's execution providers on this device, or none without ONNX Runtime."""
    if importlib.util.find_spec("onnxruntime") is None:
        return []
    import onnxruntime

    return list(onnxruntime.get_available_providers())


__all__ = [
    "ChatMessage",
    "ChatRequest",
    "ChatRuntime",
    "Completion",
    "CompletionChunk",
    "RuntimeLoadError",
    "available_runtimes",
    "execution_providers",
]
