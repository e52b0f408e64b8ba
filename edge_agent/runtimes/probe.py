"""What this device can run: the runtime libraries installed and ONNX Runtime's providers.

Found without importing the libraries in the agent's process (see ``execution_providers``).
"""

import functools
import importlib.util
import json
import subprocess
import sys

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
