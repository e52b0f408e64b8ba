"""Step 3 of flashing: the device's own files, prepared in memory (never part of the image).

Its Ed25519 identity key (generated on the operator's side of the wire; the private half
only ever goes to the target) and ``agent.yaml``: the image's template with the device id,
broker URL and credentials, and the update mirror filled in, validated against the JSON
Schema of the agent config that the image build exported from the agent in the image (the
controller never imports the agent: the two ship to different machines).
"""

import json
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jsonschema.exceptions import ValidationError
from jsonschema.validators import validator_for

from shared.attestation import encode_public_key
from shared.broker_url import parse_broker_url
from shared.provisioning import (
    CONTROLLER_CA_FILE,
    CONTROLLER_KEYS_FILE,
    IDENTITY_FOLDER,
    IDENTITY_KEY_FILE,
    MQTT_CA_FILE,
    PASSWORD_FILE,
    TLS_CERT_FILE,
    TLS_FOLDER,
    TLS_KEY_FILE,
    TRUSTED_ROOT,
)
from shared.yaml_guard import YamlShapeError, load_yaml_bounded

MAX_TEMPLATE_BYTES = 1024 * 1024
_PLACEHOLDERS = ("device_id", "broker_url", "controller_url")


@dataclass(frozen=True)
class DeviceFile:
    """A file flashing adds to the device root (never part of the image)."""

    content: bytes = field(repr=False)  # keys and passwords: never in a repr or a log
    mode: int
    # The mode of the file's folder when flashing creates or owns it (the identity folder
    # is 0700, as the agent makes it); None: 0755 for new folders, existing ones untouched.
    folder_mode: int | None = None


def _filled(template: bytes, values: dict[str, str]) -> dict[str, Any]:
    """The template with its placeholders filled, parsed; ValueError when it is not a
    YAML mapping or names a placeholder flashing does not know."""
    text = template.decode("utf-8")
    for name in _PLACEHOLDERS:
        text = text.replace("{{" + name + "}}", values[name]).replace(
            "{{ " + name + " }}", values[name]
        )
    if "{{" in text:
        start = text.index("{{")
        raise ValueError(
            f"agent.yaml template has an unknown placeholder {text[start : start + 40]!r}"
        )
    try:
        raw = load_yaml_bounded(text, source="agent.yaml template", max_bytes=MAX_TEMPLATE_BYTES)
    except YamlShapeError as e:
        raise ValueError(str(e)) from e
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ValueError("agent.yaml template is not a YAML mapping")
    return raw


def _problems(error: ValidationError) -> list[str]:
    """One schema violation as ``key.path: what``. Within ``anyOf``/``oneOf`` (an optional
    section is ``anyOf: [section, null]``), the violations of the branches the value's type
    fits, so a wrong key inside ``mqtt`` is named rather than "not valid under any"."""
    fitting = [e for e in error.context or [] if not (e.validator == "type" and not e.path)]
    if fitting:
        return [problem for e in fitting for problem in _problems(e)]
    where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    return [f"{where}: {error.message}"]


def check_agent_config(config: dict[str, Any], schema: dict[str, Any]) -> None:
    """ValueError naming every key of ``config`` that ``schema`` (the agent's config
    schema, from the image) refuses."""
    validator = validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        where = "; ".join(dict.fromkeys(p for e in errors for p in _problems(e)))
        raise ValueError(f"the flashed agent.yaml would be invalid: {where}")


def render_agent_config(
    template: bytes,
    *,
    schema: dict[str, Any],
    device_id: str,
    broker_url: str,
    controller_url: str,
    controller_ca: bool = False,
) -> tuple[bytes, dict[str, Any]]:
    """The device's ``agent.yaml`` (and the document it holds): the template with
    placeholders filled and the keys that make it this device (id, broker login, update
    mirror and trusted root; with ``controller_ca`` the CA file that verifies the
    controller's HTTPS certificate) set. ValueError when ``schema`` refuses the result."""
    values = {"device_id": device_id, "broker_url": broker_url, "controller_url": controller_url}
    raw = _filled(template, values)
    raw["device_id"] = device_id
    mqtt: dict[str, Any] = raw["mqtt"] if isinstance(raw.get("mqtt"), dict) else {}
    raw["mqtt"] = {
        **mqtt,
        "url": broker_url,
        "username": device_id,
        "password_file": "/" + PASSWORD_FILE,
    }
    if parse_broker_url(broker_url).tls:  # the device's own key, certificate and the CA
        key, cert = tls_paths(state_dir_of(raw, schema))
        raw["mqtt"].update(ca_file="/" + MQTT_CA_FILE, cert_file="/" + cert, key_file="/" + key)
    updates: dict[str, Any] = raw["updates"] if isinstance(raw.get("updates"), dict) else {}
    raw["updates"] = {
        **updates,
        "enabled": True,
        "metadata_url": f"{controller_url}/tuf/metadata/",
        "targets_url": f"{controller_url}/tuf/targets/",
        "trusted_root": "/" + TRUSTED_ROOT,
    }
    if controller_ca:
        raw["updates"]["ca_file"] = "/" + CONTROLLER_CA_FILE
    check_agent_config(raw, schema)
    header = f"# Written by 'edgefleet flash' for {device_id}; every key: docs/configuration.md\n"
    return (header + yaml.safe_dump(raw, sort_keys=False)).encode("utf-8"), raw


def state_dir_of(config: dict[str, Any], schema: dict[str, Any]) -> str:
    """The config's ``state_dir``, or the default the agent's schema states; ValueError
    unless it is an absolute path."""
    default = schema.get("properties", {}).get("state_dir", {}).get("default")
    value = config.get("state_dir", default)
    if not isinstance(value, str) or not PurePosixPath(value).is_absolute():
        raise ValueError(f"agent.yaml template: state_dir {value} must be absolute")
    return value


def identity_files(state_dir: str, key: Ed25519PrivateKey) -> dict[str, DeviceFile]:
    """The identity key where the agent looks for it (``<state_dir>/identity/ed25519.pem``,
    PKCS#8 PEM, 0600), as a device-relative path."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    folder = PurePosixPath(state_dir.lstrip("/")) / IDENTITY_FOLDER
    return {str(folder / IDENTITY_KEY_FILE): DeviceFile(pem, 0o600, folder_mode=0o700)}


def controller_keys_file(
    state_dir: str, keys: tuple[list[bytes], bytes | None]
) -> dict[str, DeviceFile]:
    """The controller message keys the device trusts from its first boot, and the exchange
    key paired with the first (``<state_dir>/identity/controller-keys.json``, 0600;
    edge_agent/sync/trust.py)."""
    trusted, exchange = keys
    document: dict[str, object] = {"keys": [encode_public_key(k) for k in trusted]}
    if exchange is not None:
        document["exchange_key"] = encode_public_key(exchange)
    folder = PurePosixPath(state_dir.lstrip("/")) / IDENTITY_FOLDER
    content = (json.dumps(document, indent=2) + "\n").encode()
    return {str(folder / CONTROLLER_KEYS_FILE): DeviceFile(content, 0o600, folder_mode=0o700)}


def tls_paths(state_dir: str) -> tuple[str, str]:
    """The device-relative paths of the TLS key and certificate under ``state_dir``."""
    folder = PurePosixPath(state_dir.lstrip("/")) / TLS_FOLDER
    return str(folder / TLS_KEY_FILE), str(folder / TLS_CERT_FILE)


def tls_files(
    state_dir: str, key_pem: bytes, cert_pem: bytes, ca_pem: bytes
) -> dict[str, DeviceFile]:
    """The device's TLS key (0600) and certificate in ``<state_dir>/tls/`` (0700), and the
    CA certificate the broker is verified with, as device-relative paths."""
    key, cert = tls_paths(state_dir)
    return {
        key: DeviceFile(key_pem, 0o600, folder_mode=0o700),
        cert: DeviceFile(cert_pem, 0o644, folder_mode=0o700),
        MQTT_CA_FILE: DeviceFile(ca_pem, 0o644),
    }


__all__ = [
    "MAX_TEMPLATE_BYTES",
    "DeviceFile",
    "check_agent_config",
    "controller_keys_file",
    "identity_files",
    "render_agent_config",
    "state_dir_of",
    "tls_files",
    "tls_paths",
]
