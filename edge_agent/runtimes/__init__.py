"""Local inference runtimes behind one interface. Only this package imports runtime libraries."""

import functools
import importlib.util
import json
import subprocess
import sys

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


@functools.cache
def available_runtimes() -> list[str]:
    """Runtimes whose library is importable here (found without importing it; cached)."""
    return [name for name, module in _RUNTIME_MODULES.items() if importlib.util.find_spec(module)]


_PROBE = "import json, onnxruntime; print(json.dumps(onnxruntime.get_available_providers()))"


@functools.cache
def execution_providers() -> list[str]:
    """ONNX Runtime's execution providers on this device, or none without ONNX Runtime.

    Asked in a short-lived child process: importing onnxruntime costs the agent about
    18 MiB of resident memory for as long as it runs, and most agents never load an ONNX
    model (those that do import it then, and get the same answer).
    """
    if importlib.util.find_spec("onnxruntime") is None:
        return []
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True
        )
        providers = json.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return []
    return [str(p) for p in providers] if isinstance(providers, list) else []


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
