"""The hardware probe classifies devices from fake filesystem roots."""

from pathlib import Path

from edge_agent.hardware import probe

GIB = 1024**3


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
