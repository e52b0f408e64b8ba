"""Agent YAML config: valid files load, wrong ones fail with a message that says where."""

import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


def test_shipped_device_class_config_is_valid(tmp_path: Path) -> None:
    """The x86-cpu image's agent config is valid once its password file exists."""
    text = (ROOT / "firmware_images" / "x86-cpu" / "agent.yaml").read_text()
    secret = tmp_path / "mqtt-password"
    secret.write_text("device-secret\n")
    config = load_config(write(tmp_path, text.replace("/etc/edgefleet/mqtt-password", str(secret))))
    assert config.mqtt is not None
    assert config.mqtt.password() == "device-secret"
    assert config.models[0].runtime == "llama.cpp"


def test_unreadable_password_file_fails_at_load(tmp_path: Path) -> None:
    """A missing broker password file is a config error naming the file, before connecting."""
    path = write(tmp_path, "device_id: d1\nmqtt: {username: d1, password_file: secret}\n")
    with pytest.raises(ConfigError, match=r"mqtt\.password_file"):
        load_config(path)


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    """Model paths and state_dir given relative are taken relative to the YAML file."""
    config = load_config(
        write(tmp_path, "device_id: d1\nstate_dir: state\nmodels:\n  - {name: m, path: m.gguf}\n")
    )
    assert config.state_dir == tmp_path / "state"
    assert config.models[0].path == tmp_path / "m.gguf"


def test_tls_files_resolve_and_protocol_may_be_a_number(tmp_path: Path) -> None:
    """An mqtts:// URL with CA, certificate and key files (relative to the YAML) gives the
    link its TLS settings; ``protocol: 5`` written as a YAML number means MQTT 5."""
    config = load_config(
        write(
            tmp_path,
            "device_id: d1\nmqtt:\n  url: mqtts://broker.example.net\n  protocol: 5\n"
            "  ca_file: pki/ca.crt\n  cert_file: pki/d1.crt\n  key_file: pki/d1.key\n",
        )
    )
    assert config.mqtt is not None
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.protocol) == (
        "broker.example.net",
        8883,
        "5",
    )
    tls = config.mqtt.tls()
    assert tls is not None and tls.ca_file == tmp_path / "pki" / "ca.crt"
    assert (tls.cert_file, tls.key_file) == (tmp_path / "pki/d1.crt", tmp_path / "pki/d1.key")
    plain = load_config(write(tmp_path, "device_id: d1\nmqtt: {url: 'mqtt://h'}\n"))
    assert plain.mqtt is not None and plain.mqtt.tls() is None


def test_mqtt_null_means_standalone(tmp_path: Path) -> None:
    """mqtt: null runs the agent without a controller."""
    assert load_config(write(tmp_path, "device_id: d1\nmqtt: null\n")).mqtt is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("device_id: d1\nmodles: []\n", "modles"),
        ("device_id: 'Bad Id'\n", "device_id"),
        ("device_id: d1\nmqtt: {url: 'http://x'}\n", "mqtt.url"),
        ("device_id: d1\nmqtt: {url: 'mqtt://h:99999'}\n", "invalid port"),
        ("device_id: d1\napi: {port: 70000}\n", "api.port"),
        ("device_id: d1\nheartbeat_interval_s: 0\n", "heartbeat_interval_s"),
        ("device_id: d1\nmodels: [{name: a, path: x}, {name: a, path: y}]\n", "unique"),
        (
            "device_id: d1\nmodels: [{name: a, path: x}]\nperception: [{name: a, path: y}]\n",
            "names both a chat and a perception model",
        ),
        (
            "device_id: d1\nupdates: {metadata_url: 'http://u:secret@h/tuf/metadata/'}\n",
            "must not carry credentials",
        ),
        ("device_id: d1\nmqtt: {ca_file: ca.crt}\n", "ca_file set, but the URL"),
        ("device_id: d1\nmqtt: {url: 'mqtts://h', key_file: k.pem}\n", "without cert_file"),
        ("device_id: d1\nmqtt: {url: 'mqtt://u:p@h'}\n", "credentials go in their own keys"),
        ("device_id: d1\nmqtt: {protocol: 4}\n", "mqtt.protocol"),
        ("- just\n- a list\n", "mapping"),
        ("device_id: [unclosed\n", "not valid YAML"),
    ],
)
def test_invalid_config_names_the_problem(tmp_path: Path, text: str, expected: str) -> None:
    """Each wrong config raises ConfigError whose text points at the offending key."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert expected in str(info.value)


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    """A missing file is reported with its path, not a traceback."""
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")


def test_check_config_command_exits_2_with_the_reason(tmp_path: Path) -> None:
    """edge-agent check-config prints the problem and exits 2 on a bad file."""
    path = write(tmp_path, "device_id: d1\nbogus: 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "edge_agent", "check-config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "bogus" in result.stderr
    assert "Traceback" not in result.stderr


_TWO_MODELS = "device_id: d1\nmodels: [{name: a, path: x, aliases: [fast]}, {name: b, path: y}]\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "device_id: d1\nmodels: [{name: a, path: x, aliases: [b]}, {name: b, path: y}]\n",
            "models[0].aliases: 'b' (alias of 'a') is already the name of model 'b'",
        ),
        (
            "device_id: d1\nmodels: [{name: a, path: x, aliases: [m]}, "
            "{name: b, path: y, aliases: [m]}]\n",
            "models[1].aliases: 'm' (alias of 'b') is already an alias of model 'a'",
        ),
        (
            "device_id: d1\nmodels: [{name: a, path: x, aliases: [cam]}]\n"
            "perception: [{name: cam, path: c.onnx}]\n",
            "'cam' (alias of 'a') is already the name of perception model 'cam'",
        ),
        (
            "device_id: d1\nmodels: [{name: a, path: x, aliases: [auto]}]\n",
            "models[0].aliases: 'auto' (alias of 'a') is already reserved",
        ),
        ("device_id: d1\nmodels: [{name: auto, path: x}]\n", "model name 'auto' is reserved"),
        (_TWO_MODELS + "routing: {model_aliases: {b: a}}\n", "'b' is already the name of"),
        (
            _TWO_MODELS + "routing: {model_aliases: {fast: b}}\n",
            "routing.model_aliases: 'fast' is already an alias of model 'a'",
        ),
        (
            _TWO_MODELS + "routing: {model_aliases: {gpt-4o-mini: gpt-4o}}\n",
            "routing.model_aliases: 'gpt-4o-mini' points at 'gpt-4o', which is neither a chat"
            " model in models (names: a, b) nor 'auto'",
        ),
        (
            _TWO_MODELS + "routing: {model_aliases: {gpt-4o-mini: fast}}\n",
            "'gpt-4o-mini' points at 'fast'",
        ),
        ("device_id: d1\nmodels: [{name: a, path: x, aliases: ['']}]\n", "models.0.aliases.0"),
    ],
)
def test_model_alias_errors_name_the_alias(tmp_path: Path, text: str, expected: str) -> None:
    """An alias that collides with another model's name or alias, or points at no chat
    model, fails the config with a message naming the alias and what it collides with."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert expected in str(info.value)


def test_model_aliases_load(tmp_path: Path) -> None:
    """Aliases of a model and routing aliases to a model or to auto are accepted as written."""
    config = load_config(
        write(tmp_path, _TWO_MODELS + "routing: {model_aliases: {gpt-4o-mini: b, gpt-4o: auto}}\n")
    )
    assert config.models[0].aliases == ["fast"]
    assert config.routing.model_aliases == {"gpt-4o-mini": "b", "gpt-4o": "auto"}
