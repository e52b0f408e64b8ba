"""The agent's YAML configuration, validated up front so a wrong key fails at start.

Every key is documented in ``docs/configuration.md``; keep the two in step.
"""

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.broker_url import parse_broker_url
from shared.topics import is_valid_device_id


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or invalid; the text says where."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MqttConfig(_Strict):
    """How to reach the controller's broker."""

    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    # A file holding the broker password: secrets stay out of the YAML, which is often shared.
    password_file: Path | None = None
    keepalive_s: int = Field(default=10, ge=2, le=3600)
    reconnect_min_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    # MQTT 5 by default (session expiry); 3.1.1 for brokers without it (the embedded one).
    protocol: Literal["5", "3.1.1"] = "5"
    # How long the broker keeps this device's session (queued acks, desired state) while
    # it is offline.
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parse_broker_url(value)
        return value

    @property
    def host(self) -> str:
        return parse_broker_url(self.url).host

    @property
    def port(self) -> int:
        return parse_broker_url(self.url).port

    def password(self) -> str | None:
        if self.password_file is None:
            return None
        try:
            return self.password_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"mqtt.password_file: cannot read {self.password_file}: {e}") from e


class ApiConfig(_Strict):
    """The local OpenAI-compatible HTTP endpoint."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)


class ModelConfig(_Strict):
    """One model served by the local tier."""

    name: str = Field(min_length=1, max_length=128)
    runtime: Literal["llama.cpp"] = "llama.cpp"
    path: Path
    n_ctx: int = Field(default=2048, ge=128)
    n_threads: int | None = Field(default=None, ge=1)
    n_gpu_layers: int = Field(default=0, ge=-1)
    max_tokens_default: int = Field(default=128, ge=1)


class OutboxConfig(_Strict):
    """The durable outbox of metrics and events (see docs/configuration.md)."""

    max_bytes: int = Field(default=64 * 1024 * 1024, ge=4096)
    batch_records: int = Field(default=200, ge=1, le=500)
    batch_bytes: int = Field(default=48 * 1024, ge=1024, le=60 * 1024)
    inflight_batches: int = Field(default=8, ge=1, le=1000)
    ack_timeout_s: float = Field(default=15.0, gt=0)


class AgentConfig(_Strict):
    """The whole agent configuration (one YAML file)."""

    device_id: str
    device_class: str | None = None
    state_dir: Path = Path("/var/lib/edgefleet-agent")
    mqtt: MqttConfig | None = Field(default_factory=MqttConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    heartbeat_interval_s: float = Field(default=5.0, gt=0, le=3600)
    telemetry_interval_s: float = Field(default=10.0, ge=1, le=86400)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    models: list[ModelConfig] = Field(default_factory=list)

    @field_validator("device_id")
    @classmethod
    def _check_device_id(cls, value: str) -> str:
        if not is_valid_device_id(value):
            raise ValueError(
                "device_id must be 1-63 of a-z, 0-9, '-' or '_', starting with a letter or digit"
            )
        return value

    @field_validator("models")
    @classmethod
    def _unique_names(cls, value: list[ModelConfig]) -> list[ModelConfig]:
        names = [m.name for m in value]
        if len(names) != len(set(names)):
            raise ValueError("model names must be unique")
        return value


def load_config(path: Path) -> AgentConfig:
    """Read and validate ``path``; relative paths inside resolve against the file's folder."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a YAML mapping at the top level")
    try:
        config = AgentConfig.model_validate(raw)
    except ValidationError as e:
        lines = [
            f"  {'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            for err in e.errors(include_url=False)
        ]
        raise ConfigError(f"invalid config {path}:\n" + "\n".join(lines)) from e
    base = path.resolve().parent
    config.state_dir = base / config.state_dir
    for model in config.models:
        model.path = base / model.path
    if config.mqtt is not None and config.mqtt.password_file is not None:
        config.mqtt.password_file = base / config.mqtt.password_file
        config.mqtt.password()  # unreadable secrets fail now, with the path, not at connect
    return config
