"""The hardware probe classifies devices from fake filesystem roots, and asks a real
(test-written) nvidia-smi for NVIDIA GPUs."""

import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from edge_agent.config import ModelConfig
from edge_agent.hardware import GpuQuery, HardwareProfile, NvidiaGpu, parse_nvidia_smi, probe
from edge_agent.runtimes.factory import open_chat
from edge_agent.runtimes.llama_cpp import LlamaCppRuntime
from edge_agent.runtimes.probe import nvidia_gpus
from shared.messages import HardwareInfo

GIB = 1024**3
LLAMA_ALL_LAYERS = 0x7FFFFFFF


def test_jetson_from_tegra_release(tmp_path: Path) -> None:
    """/etc/nv_tegra_release means Jetson, with all llama.cpp layers on the GPU."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "nv_tegra_release").write_text("# R36 (release), REVISION: 3.0\n")
    profile = probe(
        tmp_path,
        execution_providers=["TensorrtExecutionProvider", "CPUExecutionProvider"],
        cpu_count=6,
        memory_bytes=8 * GIB,
        machine="aarch64",
    )
    assert profile.accelerator == "jetson"
    assert profile.gpu_layers == -1
    assert profile.device_class == "aarch64-jetson"
    assert profile.notes == ()


def test_jetson_from_device_tree_without_gpu_providers(tmp_path: Path) -> None:
    """A Jetson device-tree model is enough; missing CUDA providers are noted."""
    (tmp_path / "proc" / "device-tree").mkdir(parents=True)
    (tmp_path / "proc" / "device-tree" / "model").write_text("NVIDIA Jetson Orin Nano\x00")
    profile = probe(
        tmp_path,
        execution_providers=["CPUExecutionProvider"],
        cpu_count=6,
        memory_bytes=8 * GIB,
        machine="arm64",
    )
    assert profile.accelerator == "jetson"
    assert profile.arch == "aarch64"
    assert profile.detail == "NVIDIA Jetson Orin Nano"
    assert profile.notes


def test_npu_from_execution_providers(tmp_path: Path) -> None:
    """An NPU execution provider (QNN here) makes the device an NPU board."""
    profile = probe(
        tmp_path,
        execution_providers=["QNNExecutionProvider", "CPUExecutionProvider"],
        cpu_count=8,
        memory_bytes=4 * GIB,
        machine="aarch64",
    )
    assert profile.accelerator == "npu"
    assert profile.detail == "QNNExecutionProvider"


def test_cpu_fallback_and_thread_count(tmp_path: Path) -> None:
    """Without Jetson files or NPU providers it is a CPU box; threads leave a core free above 2."""
    two = probe(
        tmp_path,
        execution_providers=["CPUExecutionProvider"],
        cpu_count=2,
        memory_bytes=GIB,
        machine="x86_64",
    )
    eight = probe(tmp_path, execution_providers=[], cpu_count=8, memory_bytes=GIB, machine="AMD64")
    assert (two.accelerator, two.recommended_threads, two.memory_mb) == ("cpu", 2, 1024)
    assert (eight.arch, eight.recommended_threads) == ("x86_64", 7)


# What `nvidia-smi --query-gpu=name,memory.total --format=csv,noheader` prints (an H100 host).
H100_SMI = "NVIDIA H100 80GB HBM3, 81559 MiB\n"


def fake_nvidia_smi(folder: Path, script: str) -> str:
    """A real executable ``nvidia-smi`` in ``folder`` running ``script``; the search path."""
    folder.mkdir(parents=True, exist_ok=True)
    binary = folder / "nvidia-smi"
    binary.write_text(f"#!/bin/sh\n{script}\n")
    binary.chmod(0o755)
    return str(folder)


def test_nvidia_smi_output_parsed() -> None:
    """nvidia-smi's CSV gives one GPU a line, MiB with or without the unit, [N/A] as unknown."""
    gpus = parse_nvidia_smi(H100_SMI + "NVIDIA L4, 23034\nNVIDIA GH200 480GB, [N/A]\n\n")
    assert gpus == (
        NvidiaGpu("NVIDIA H100 80GB HBM3", 81559),
        NvidiaGpu("NVIDIA L4", 23034),
        NvidiaGpu("NVIDIA GH200 480GB", None),
    )


@pytest.mark.parametrize(
    ("output", "message"),
    [
        pytest.param("No devices were found\n", "line 1 is not", id="no-comma"),
        pytest.param("NVIDIA L4, lots\n", "no memory in MiB", id="bad-memory"),
        pytest.param(", 100 MiB\n", "line 1 is not", id="no-name"),
    ],
)
def test_nvidia_smi_output_refused(output: str, message: str) -> None:
    """Output that is not the queried CSV is a ValueError naming the line, not a guess."""
    with pytest.raises(ValueError, match=message):
        parse_nvidia_smi(output)


def test_x86_with_nvidia_gpu(tmp_path: Path) -> None:
    """An x86_64 host whose nvidia-smi lists GPUs is `nvidia`: all layers offloaded, the
    GPU providers ahead of the CPU provider, and the GPUs in the detail."""
    profile = probe(
        tmp_path,
        execution_providers=["CPUExecutionProvider", "CUDAExecutionProvider"],
        cpu_count=16,
        memory_bytes=128 * GIB,
        machine="x86_64",
        nvidia=GpuQuery(parse_nvidia_smi(H100_SMI * 2)),
    )
    assert (profile.accelerator, profile.device_class) == ("nvidia", "x86_64-nvidia")
    assert profile.gpu_layers == -1
    assert profile.execution_providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert profile.detail == "2x NVIDIA H100 80GB HBM3 (81559 MiB)"
    assert profile.notes == ()
    # The birth message takes the new accelerator.
    info = HardwareInfo(
        device_class=profile.device_class,
        arch=profile.arch,
        accelerator=profile.accelerator,
        cpu_count=profile.cpu_count,
        memory_mb=profile.memory_mb,
        execution_providers=list(profile.execution_providers),
        detail=profile.detail,
    )
    assert info.accelerator == "nvidia"


def test_nvidia_gpu_from_driver_files(tmp_path: Path) -> None:
    """Without nvidia-smi the driver's /proc/driver/nvidia/gpus entries are enough; missing
    CUDA providers are noted."""
    gpu = tmp_path / "proc" / "driver" / "nvidia" / "gpus" / "0000:01:00.0"
    gpu.mkdir(parents=True)
    (gpu / "information").write_text(
        "Model: \t\t NVIDIA RTX A2000 12GB\nIRQ:   \t\t 150\nBus Type: \t PCIe\n"
    )
    profile = probe(
        tmp_path,
        execution_providers=["CPUExecutionProvider"],
        cpu_count=8,
        memory_bytes=32 * GIB,
        machine="AMD64",
        nvidia=GpuQuery(),
    )
    assert (profile.accelerator, profile.detail) == ("nvidia", "NVIDIA RTX A2000 12GB")
    assert profile.notes


def test_cuda_provider_without_gpu_stays_cpu(tmp_path: Path) -> None:
    """ONNX Runtime's GPU build lists the CUDA provider without any GPU: no driver, no
    nvidia-smi answer, so the device is `cpu`, and a failed nvidia-smi is noted."""
    profile = probe(
        tmp_path,
        execution_providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
        cpu_count=4,
        memory_bytes=8 * GIB,
        machine="x86_64",
        nvidia=GpuQuery(error="nvidia-smi exited with status 9"),
    )
    assert (profile.accelerator, profile.gpu_layers) == ("cpu", 0)
    assert profile.notes == ("no NVIDIA GPU: nvidia-smi exited with status 9",)


def test_nvidia_smi_on_path_is_run(tmp_path: Path) -> None:
    """A real nvidia-smi on the search path is asked with the CSV query, and its GPUs come back."""
    search = fake_nvidia_smi(
        tmp_path / "bin",
        'test "$*" = "--query-gpu=name,memory.total --format=csv,noheader" || exit 3\n'
        f"printf '{H100_SMI.strip()}\\n'",
    )
    assert nvidia_gpus(search) == GpuQuery((NvidiaGpu("NVIDIA H100 80GB HBM3", 81559),))


def test_no_nvidia_smi_is_no_gpu_and_no_error(tmp_path: Path) -> None:
    """Without nvidia-smi on the search path there is nothing to report: no GPUs, no error."""
    (tmp_path / "empty").mkdir()
    assert nvidia_gpus(str(tmp_path / "empty")) == GpuQuery()


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        pytest.param(
            "echo \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA"
            ' driver." >&2; exit 9',
            "nvidia-smi exited with status 9: NVIDIA-SMI has failed",
            id="driver-gone",
        ),
        pytest.param("echo 'No devices were found'", "line 1 is not", id="garbage"),
        pytest.param("true", "nvidia-smi listed no GPU", id="empty"),
        pytest.param("exec sleep 30", "no answer within 0.5 s", id="hangs"),
    ],
)
def test_failing_nvidia_smi_degrades_to_cpu_with_logged_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, script: str, reason: str
) -> None:
    """An nvidia-smi that fails, prints something else or hangs yields no GPU: the reason is
    logged and noted, and the device is classed as a CPU box."""
    with caplog.at_level(logging.WARNING, logger="edge_agent.runtimes.probe"):
        query = nvidia_gpus(fake_nvidia_smi(tmp_path / "bin", script), 0.5)
    assert query.gpus == () and reason in (query.error or "")
    assert reason in caplog.text
    profile = probe(
        tmp_path,
        execution_providers=[],
        cpu_count=4,
        memory_bytes=GIB,
        machine="x86_64",
        nvidia=query,
    )
    assert profile.accelerator == "cpu" and reason in profile.notes[0]


JETSON = HardwareProfile(
    accelerator="jetson", arch="aarch64", cpu_count=2, memory_mb=8192, gpu_layers=-1
)


@pytest.mark.parametrize(
    ("configured", "expected"),
    [
        pytest.param(0, 0, id="explicit-0-honoured"),
        pytest.param(None, LLAMA_ALL_LAYERS, id="unset-is-profile-default"),
        pytest.param(-1, LLAMA_ALL_LAYERS, id="all"),
        pytest.param(5, 5, id="some"),
    ],
)
def test_jetson_gpu_layers_reach_llama(
    model_path: Path, configured: int | None, expected: int
) -> None:
    """On a Jetson profile (all layers by default) `n_gpu_layers: 0` reaches llama.cpp as 0,
    an unset value as the profile's all-layers, and any other value as given."""
    model = ModelConfig.model_validate(
        {"name": "m", "path": str(model_path), "n_ctx": 256, "n_threads": 1, "mlock": False}
        | ({} if configured is None else {"n_gpu_layers": configured})
    )
    runtime, _ = open_chat(model, JETSON)
    try:
        assert isinstance(runtime, LlamaCppRuntime)
        # What llama.cpp itself was handed (llama-cpp-python writes -1 as INT32_MAX).
        assert runtime._llama.model_params.n_gpu_layers == expected
    finally:
        runtime.close()


def test_gpu_layers_below_minus_one_refused(tmp_path: Path) -> None:
    """`n_gpu_layers` below -1 is a config error naming the field; unset is None."""
    assert ModelConfig.model_validate({"name": "m", "path": "m.gguf"}).n_gpu_layers is None
    with pytest.raises(ValidationError, match="n_gpu_layers"):
        ModelConfig.model_validate({"name": "m", "path": "m.gguf", "n_gpu_layers": -2})
