"""Controller configuration: defaults, then a YAML file, then ``EDGEFLEET_*`` environment.

Nested keys use ``__`` in the environment (``EDGEFLEET_BROKER__URL``). Settings are built by
``load_settings`` when the app or a command starts, never at import time.
"""

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from shared.broker_url import parse_broker_url

# Values people paste from tutorials; refused as secrets outside the demo.
PLACEHOLDER_SECRETS = frozenset(
    {"", "changeme", "change-me", "password", "secret", "admin", "mqtt", "default", "test"}
)


class BrokerSettings(BaseModel):
    """Where the controller's MQTT broker is."""

    # embedded: the controller starts an in-process MQTT broker (amqtt) on ``url``'s host and
    # port (port 0 = a free one). external: connect to Mosquitto/EMQX at ``url``.
    mode: Literal["embedded", "external"] = "embedded"
    url: str = "mqtt://127.0.0.1:0"
    username: str | None = None
    password: SecretStr | None = None
    # Each controller replica needs its own client id: the broker keeps one persistent
    # session per id, holding unacknowledged messages across a controller restart.
    client_id: str = "edgefleet-controller"
    keepalive_s: int = Field(default=30, ge=5)
    # None picks 3.1.1 for the embedded broker (amqtt has no MQTT 5) and 5 otherwise.
    protocol: Literal["5", "3.1.1"] | None = None
    # MQTT 5 shared subscription group: replicas in one group split the device stream.
    shared_group: str | None = Field(default="edgefleet", pattern=r"^[A-Za-z0-9_-]+$")
    session_expiry_s: int = Field(default=3600, ge=0)

    @property
    def effective_protocol(self) -> Literal["5", "3.1.1"]:
        if self.protocol is not None:
            return self.protocol
        return "3.1.1" if self.mode == "embedded" else "5"

    @model_validator(mode="after")
    def _embedded_is_311(self) -> "BrokerSettings":
        if self.mode == "embedded" and self.protocol == "5":
            raise ValueError("the embedded broker speaks MQTT 3.1.1 only; use mode: external")
        return self

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


class Settings(BaseSettings):
    """Everything the controller reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="EDGEFLEET_", env_nested_delimiter="__", extra="forbid"
    )

    environment: Literal["production", "development", "demo"] = "production"
    database_url: str = "sqlite:///./edgefleet.db"
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=1, le=65535)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    ingest_queue_size: int = Field(default=10_000, ge=10)
    ingest_batch_size: int = Field(default=500, ge=1)
    # A device is offline after this many heartbeat intervals without a message.
    missed_heartbeats_offline: int = Field(default=3, ge=2)
    liveness_sweep_s: float = Field(default=2.0, gt=0)
    session_ttl_hours: float = Field(default=12.0, gt=0)
    secure_cookies: bool = True
    # Refuse messages from devices without broker credentials (edgefleet devices provision),
    # a second check behind the broker's ACL.
    require_provisioned_devices: bool = False
    # How often desired documents not yet applied by their device are published again.
    desired_republish_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> "Settings":
        password = self.broker.password
        if (
            self.environment == "production"
            and password is not None
            and password.get_secret_value().lower() in PLACEHOLDER_SECRETS
        ):
            raise ValueError("broker.password is a placeholder; set a real secret")
        return self


class _FileSettings(Settings):
    """Settings with a YAML file between the defaults and the environment."""

    yaml_path: ClassVar[Path | None] = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls.yaml_path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=cls.yaml_path))
        return tuple(sources)


def load_settings(config_file: Path | None = None, **overrides: object) -> Settings:
    """Build settings from ``config_file`` (YAML, optional), the environment and overrides."""
    if config_file is not None and not config_file.is_file():
        raise ValueError(f"controller config file {config_file} does not exist")

    class _Bound(_FileSettings):
        yaml_path = config_file

    return _Bound(**overrides)  # type: ignore[arg-type]
