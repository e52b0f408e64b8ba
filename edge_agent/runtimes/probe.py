"""What this device can run: the runtime libraries installed, ONNX Runtime's providers and
the NVIDIA GPUs ``nvidia-smi`` lists.

Found without importing the libraries in the agent's process (see ``execution_providers``).
"""

import functools
import importlib.util
import json
import logging
import shutil
import subprocess
import sys

from edge_agent.hardware import GpuQuery, parse_nvidia_smi

log = logging.getLogger(__name__)

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


NVIDIA_SMI = "nvidia-smi"
NVIDIA_SMI_ARGS = ("--query-gpu=name,memory.total", "--format=csv,noheader")
# nvidia-smi answers in well under a second; a driver in a bad state can hang it for minutes,
# and the agent probes before it serves anything.
NVIDIA_SMI_TIMEOUT_S = 5.0


@functools.cache
def nvidia_gpus(
    search_path: str | None = None, timeout_s: float = NVIDIA_SMI_TIMEOUT_S
) -> GpuQuery:
    """The NVIDIA GPUs ``nvidia-smi`` lists (found on ``search_path``, default ``$PATH``).

    No ``nvidia-smi``: no GPUs and no error. One that fails, hangs past ``timeout_s`` or
    prints something else: no GPUs, and the reason is logged and returned (the device is
    then classed without a GPU). Cached: simulated agents in one process probe once.
    """
    binary = shutil.which(NVIDIA_SMI, path=search_path)
    if binary is None:
        return GpuQuery()
    try:
        done = subprocess.run(
            [binary, *NVIDIA_SMI_ARGS],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout_s,
            check=False,
        )
        if done.returncode != 0:
            said = (done.stderr.strip() or done.stdout.strip()).splitlines()
            raise ValueError(
                f"nvidia-smi exited with status {done.returncode}"
                + (f": {said[0][:200]}" if said else "")
            )
        gpus = parse_nvidia_smi(done.stdout)
        if not gpus:
            raise ValueError("nvidia-smi listed no GPU")
    except subprocess.TimeoutExpired:
        reason = f"nvidia-smi gave no answer within {timeout_s:g} s"
    except OSError as e:
        reason = f"nvidia-smi could not run: {e.strerror or e}"
    except ValueError as e:
        reason = str(e)
    else:
        return GpuQuery(gpus)
    log.warning("GPU probe: %s; classing this device without an NVIDIA GPU", reason)
    return GpuQuery(error=reason)
