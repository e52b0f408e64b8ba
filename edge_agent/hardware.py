"""Hardware probe: which execution path this device should use.

``probe`` is a pure function of the files under ``root`` and the facts it is handed
(execution providers, CPU count, memory, machine), so tests run it against fake roots.
"""

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
) -> HardwareProfile:
    """Classify the device as Jetson, NPU or CPU from files under ``root`` and given facts."""
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
            execution_providers=providers,
            detail=detail,
            recommended_threads=threads,
            gpu_layers=-1,  # Jetson memory is unified: offload every layer llama.cpp can
            notes=notes,
        )
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
        )
    return HardwareProfile(
        accelerator="cpu",
        arch=arch,
        cpu_count=cpus,
        memory_mb=memory_mb,
        execution_providers=providers,
        detail=dt_model,
        recommended_threads=threads,
    )
