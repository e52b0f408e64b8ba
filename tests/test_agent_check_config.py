"""``edge-agent check-config``: every file a config names is checked (models, trusted root,
password, TLS, API keys), each problem named by its key, and ``--root`` checks a flashed
root's files where ``run --root`` would read them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.api_keys import add_key
from edge_agent.config import read_config
from edge_agent.config_files import file_problems
from shared.provisioning import AGENT_CONFIG, IMAGE_FILE, PASSWORD_FILE
from tests.pki_world import TestCa

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "firmware_images").glob("*/agent.yaml"))
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
DEVICE_MODEL = "var/lib/edgefleet-agent/models/SmolLM2-135M-Instruct.Q4_1.gguf"


def check_config(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", "check-config", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def device_root(tmp_path: Path, *, model: bool = True, password: bool = True) -> Path:
    """A folder laid out like a flashed device: the real model where the shipped configs
    name it (a link), and the broker password file."""
    root = tmp_path / "root"
    (root / "etc" / "edgefleet").mkdir(parents=True)
    if model:
        (root / DEVICE_MODEL).parent.mkdir(parents=True)
        os.symlink(MODEL, root / DEVICE_MODEL)
    if password:
        (root / PASSWORD_FILE).write_text("device-secret\n")
    return root


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


def problems_of(path: Path) -> list[str]:
    return [str(p) for p in file_problems(read_config(path))]


@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: p.parent.name)
def test_shipped_config_passes_against_a_complete_root(tmp_path: Path, config: Path) -> None:
    """Each shipped image's agent.yaml checks ok off the device with --root at a folder
    holding the files it names (its /etc/edgefleet/mqtt-password taken under the root)."""
    result = check_config(config, "--root", device_root(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "ok (device" in result.stdout
    assert "2 named file(s) present" in result.stdout


def test_flashed_root_without_config_argument(tmp_path: Path) -> None:
    """With --root alone, the root's own etc/edgefleet/agent.yaml is checked."""
    root = device_root(tmp_path)
    (root / AGENT_CONFIG).write_text((ROOT / "firmware_images/x86-cpu/agent.yaml").read_text())
    (root / IMAGE_FILE).write_text(json.dumps({"image_id": "x", "device_class": "x86-cpu"}))
    result = check_config("--root", root)
    assert result.returncode == 0, result.stderr
    assert str(root / AGENT_CONFIG) in result.stdout


def test_root_missing_the_model_names_the_key_and_path(tmp_path: Path) -> None:
    """A root without the model file exits 2 naming models[0].path and where it looked."""
    root = device_root(tmp_path, model=False)
    result = check_config(SHIPPED[0], "--root", root)
    assert result.returncode == 2
    assert "models[0].path (smollm2-135m)" in result.stderr
    assert f"{root / DEVICE_MODEL}: no such file" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_missing_file_is_listed_at_once(tmp_path: Path) -> None:
    """A root missing both the model and the password names both keys, not the first only."""
    root = device_root(tmp_path, model=False, password=False)
    result = check_config(SHIPPED[0], "--root", root)
    assert result.returncode == 2
    assert "2 file(s) it names cannot be used" in result.stderr
    assert "models[0].path" in result.stderr
    assert f"mqtt.password_file: {root / PASSWORD_FILE}: no such file" in result.stderr


def test_root_without_config_that_is_not_flashed(tmp_path: Path) -> None:
    """--root at a folder without etc/edgefleet/agent.yaml says what is missing, exit 2."""
    result = check_config("--root", tmp_path)
    assert result.returncode == 2
    assert "is not a flashed device" in result.stderr


def test_no_config_and_no_root_is_a_usage_error(tmp_path: Path) -> None:
    """check-config with neither a file nor --root asks for one."""
    result = check_config()
    assert result.returncode == 2
    assert "give a config FILE, or --root DIR" in result.stderr


def test_a_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    """A llama.cpp model path holding something else than GGUF is named, not passed."""
    (tmp_path / "m.gguf").write_bytes(b"<html>404</html>")
    path = write(tmp_path, "device_id: d1\nmqtt: null\nmodels:\n  - {name: m, path: m.gguf}\n")
    assert problems_of(path) == [
        f"models[0].path (m): {tmp_path / 'm.gguf'}: not a GGUF file"
        " (llama.cpp models are .gguf files)"
    ]


def test_ort_genai_model_needs_its_genai_config(tmp_path: Path) -> None:
    """An ort-genai model path must be a folder with genai_config.json in it."""
    (tmp_path / "phi").mkdir()
    path = write(
        tmp_path,
        "device_id: d1\nmqtt: null\nmodels:\n  - {name: phi, runtime: ort-genai, path: phi}\n",
    )
    assert problems_of(path) == [
        f"models[0].path (phi): {tmp_path / 'phi'}: genai_config.json: no such file"
    ]
    (tmp_path / "phi" / "genai_config.json").write_text("{}")
    assert problems_of(path) == []


def test_trusted_root_perception_and_keys_file(tmp_path: Path) -> None:
    """The TUF trusted root, a perception model and the API keys file are each checked; a
    keys file that exists but is malformed is named with what is wrong."""
    (tmp_path / "keys.yaml").write_text("not: a keys file\n")
    path = write(
        tmp_path,
        "device_id: d1\nmqtt: null\n"
        "perception:\n  - {name: cls, path: cls.onnx}\n"
        "api: {keys_file: keys.yaml}\n"
        "updates: {enabled: true, metadata_url: 'http://c/tuf/metadata',"
        " targets_url: 'http://c/tuf/targets', trusted_root: root.json}\n",
    )
    problems = problems_of(path)
    assert problems[0] == f"perception[0].path (cls): {tmp_path / 'cls.onnx'}: no such file"
    assert problems[1] == f"updates.trusted_root: {tmp_path / 'root.json'}: no such file"
    assert problems[2].startswith(f"api.keys_file: {tmp_path / 'keys.yaml'}: must be a mapping")
    assert len(problems) == 3
    (tmp_path / "keys.yaml").unlink()
    add_key(tmp_path / "keys.yaml", "app")
    (tmp_path / "cls.onnx").write_bytes(b"onnx")
    (tmp_path / "root.json").write_text("{}")
    assert problems_of(path) == [
        f"updates.trusted_root: {tmp_path / 'root.json'}: is not TUF metadata (no 'signed' object)"
    ]
    (tmp_path / "root.json").write_text(json.dumps({"signed": {"_type": "root"}}))
    assert problems_of(path) == []


def test_an_empty_password_file_is_named(tmp_path: Path) -> None:
    """A broker password file with nothing in it is a problem (the secret is never shown)."""
    (tmp_path / "pw").write_text("\n")
    path = write(tmp_path, "device_id: d1\nmqtt: {username: d1, password_file: pw}\n")
    assert problems_of(path) == [
        f"mqtt.password_file: {tmp_path / 'pw'}: empty (the broker would get an empty password)"
    ]
    (tmp_path / "pw").write_text("s3cret-value\n")
    assert problems_of(path) == []


def test_tls_files_are_checked_and_loaded(tmp_path: Path) -> None:
    """mqtts:// CA, certificate and key: missing ones are named; present ones must load (a
    certificate file holding something else is named by its key)."""
    ca = TestCa(tmp_path / "pki")
    client = ca.client("d1")
    text = (
        "device_id: d1\nmqtt:\n  url: mqtts://broker.example:8883\n"
        f"  ca_file: {ca.ca_file}\n  cert_file: {client.cert_file}\n  key_file: {{key}}\n"
    )
    missing = tmp_path / "nowhere.key"
    path = write(tmp_path, text.format(key=missing))
    assert problems_of(path) == [f"mqtt.key_file: {missing}: no such file"]
    path = write(tmp_path, text.format(key=client.key_file))
    assert problems_of(path) == []
    client.cert_file.write_text("not a certificate\n")
    problems = problems_of(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"mqtt.cert_file: {client.cert_file}: ")
