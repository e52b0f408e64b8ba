"""Hardware probe: which execution path this device should use.

``probe`` is a pure function of the files under ``root`` and the facts it is handed
(execution providers, NVIDIA GPUs as ``nvidia-smi`` lists them, CPU count, memory, machine),
so tests run it against fake roots. Running ``nvidia-smi`` and asking ONNX Runtime for its
providers is ``edge_agent.runtimes.probe``'s job.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from shared.messages import Accelerator

# ONNX Runtime execution providers that mean "there is an NPU", by vendor.
NPU_PROVIDERS = (
    "QNNExecutionProvider",
    "OpenVINOExecutionProvider",
    "VitisAIExecutionProvider",
    "RknpuExecutionProvider",
    "CANNExecutionProvider",
    "NnapiExecutionProvider",
)
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
CPU_PROVIDER = "CPUExecutionProvider"
# The NVIDIA kernel driver lists each GPU it drives here, also where nvidia-smi is missing
# (containers given the device nodes but not the tools).
NVIDIA_DRIVER_GPUS = "proc/driver/nvidia/gpus"
_MAX_DETAIL = 256  # HardwareInfo.detail's limit in the birth message


@dataclass(frozen=True, slots=True)
class NvidiaGpu:
    """One GPU the NVIDIA driver reports; ``memory_mb`` is None where it is not reported."""

    name: str
    memory_mb: int | None = None


@dataclass(frozen=True, slots=True)
class GpuQuery:
    """What ``nvidia-smi`` answered: its GPUs, or why it gave none (``error``).

    An absent ``nvidia-smi`` is no error: most devices have no NVIDIA GPU.
    """

    gpus: tuple[NvidiaGpu, ...] = ()
    error: str | None = None


def parse_nvidia_smi(output: str) -> tuple[NvidiaGpu, ...]:
    """GPUs from ``nvidia-smi --query-gpu=name,memory.total --format=csv,noheader``.

    Each line is ``NAME, MEMORY`` with MEMORY as ``81559 MiB`` (or bare ``81559`` with
    ``nounits``, or ``[N/A]``); ValueError names the line that is neither.
    """
    gpus = []
    for number, line in enumerate(output.splitlines(), start=1):
        if not line.strip():
            continue
        name, sep, memory = line.rpartition(",")
        name, memory = name.strip(), memory.strip()
        if not sep or not name:
            raise ValueError(f"nvidia-smi line {number} is not 'name, memory.total': {line!r}")
        if memory.startswith("[") and memory.endswith("]"):  # [N/A], [Not Supported]
            gpus.append(NvidiaGpu(name))
            continue
        amount = memory.removesuffix("MiB").strip()
        if not amount.isdigit():
            raise ValueError(f"nvidia-smi line {number} has no memory in MiB: {line!r}")
        gpus.append(NvidiaGpu(name, int(amount)))
    return tuple(gpus)


def _driver_gpus(root: Path) -> tuple[NvidiaGpu, ...]:
    """GPUs from the driver's ``information`` files (``Model: NVIDIA ...`` lines)."""
    try:
        folders = sorted((root / NVIDIA_DRIVER_GPUS).iterdir())
    except OSError:
        return ()
    gpus = []
    for folder in folders:
        text = _read(root, f"{NVIDIA_DRIVER_GPUS}/{folder.name}/information") or ""
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model" and value.strip():
                gpus.append(NvidiaGpu(value.strip()))
                break
    return tuple(gpus)


def _describe(gpus: tuple[NvidiaGpu, ...]) -> str:
    """``NVIDIA H100 80GB HBM3 (81559 MiB)``, ``2x ...`` when all are alike."""
    names = []
    for gpu in gpus:
        memory = f" ({gpu.memory_mb} MiB)" if gpu.memory_mb is not None else ""
        names.append(f"{gpu.name}{memory}")
    text = (
        f"{len(names)}x {names[0]}" if len(set(names)) == 1 and len(names) > 1 else ", ".join(names)
    )
    return text[:_MAX_DETAIL]


def _gpu_first(providers: Iterable[str]) -> tuple[str, ...]:
    """GPU providers first (TensorRT, CUDA), the others as given, the CPU provider last."""
    listed = list(dict.fromkeys(providers))
    gpu = [p for p in GPU_PROVIDERS if p in listed]
    rest = [p for p in listed if p not in GPU_PROVIDERS and p != CPU_PROVIDER]
    return (*gpu, *rest, *([CPU_PROVIDER] if CPU_PROVIDER in listed else []))


@dataclass(frozen=True, slots=True)
class HardwareProfile:
    """The probe's answer; reported in the birth message."""

    accelerator: Accelerator
    arch: str
    cpu_count: int
    memory_mb: int
    execution_providers: tuple[str, ...] = ()
    detail: str | None = None
    recommended_threads: int = 1
    gpu_layers: int = 0
    notes: tuple[str, ...] = field(default=())

    @property
    def device_class(self) -> str:
        return f"{self.arch}-{self.accelerator}"


def _read(root: Path, relative: str) -> str | None:
    try:
        return (root / relative).read_text(encoding="utf-8", errors="replace").strip("\x00\n ")
    except OSError:
        return None


def probe(
    root: Path,
    *,
    execution_providers: list[str],
    cpu_count: int,
    memory_bytes: int,
    machine: str,
    nvidia: GpuQuery | None = None,
) -> HardwareProfile:
    """Classify the device as Jetson, NVIDIA GPU, NPU or CPU from files under ``root`` and
    given facts.

    ``nvidia`` is what ``nvidia-smi`` said (None: not asked); the driver's files under
    ``root`` count too. An NVIDIA GPU needs the driver's word: ONNX Runtime's CUDA provider
    alone only says the GPU build of ONNX Runtime is installed, not that a GPU is there.
    """
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine.lower(), machine.lower())
    cpus = max(1, cpu_count)
    # Leave one core for the agent's I/O once there are enough to spare.
    threads = cpus - 1 if cpus > 2 else cpus
    memory_mb = memory_bytes // (1024 * 1024)
    providers = tuple(execution_providers)

    tegra = _read(root, "etc/nv_tegra_release")
    dt_model = _read(root, "proc/device-tree/model")
    if tegra is not None or (dt_model is not None and "jetson" in dt_model.lower()):
        detail = dt_model or (tegra.splitlines()[0] if tegra else None)
        gpu_ready = any(p in providers for p in GPU_PROVIDERS)
        notes = () if gpu_ready else ("CUDA/TensorRT providers missing: perception runs on CPU",)
        return HardwareProfile(
            accelerator="jetson",
            arch=arch,
            cpu_count=cpus,
            memory_mb=memory_mb,
            execution_providers=_gpu_first(providers),
            detail=detail,
            recommended_threads=threads,
            gpu_layers=-1,  # Jetson memory is unified: offload every layer llama.cpp can
            notes=notes,
        )
    nvidia = nvidia or GpuQuery()
    gpus = nvidia.gpus or _driver_gpus(root)
    if gpus:
        gpu_ready = any(p in providers for p in GPU_PROVIDERS)
        return HardwareProfile(
            accelerator="nvidia",
            arch=arch,
            cpu_count=cpus,
            memory_mb=memory_mb,
            execution_providers=_gpu_first(providers),
            detail=_describe(gpus),
            recommended_threads=threads,
            gpu_layers=-1,  # offload every layer; set models[].n_gpu_layers when VRAM is short
            notes=() if gpu_ready else ("CUDA/TensorRT providers missing: ONNX models run on CPU",),
        )
    gpu_notes = (f"no NVIDIA GPU: {nvidia.error}",) if nvidia.error else ()
    npu = [p for p in providers if p in NPU_PROVIDERS]
    if npu:
        return HardwareProfile(
            accelerator="npu",
            arch=arch,
            cpu_count=cpus,
            memory_mb=memory_mb,
            execution_providers=providers,
            detail=f"{npu[0]}" + (f" on {dt_model}" if dt_model else ""),
            recommended_threads=threads,
            notes=gpu_notes,
        )
    return HardwareProfile(
        accelerator="cpu",
        arch=arch,
        cpu_count=cpus,
        memory_mb=memory_mb,
        execution_providers=providers,
        detail=dt_model,
        recommended_threads=threads,
        notes=gpu_notes,
    )
