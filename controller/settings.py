"""Controller configuration: defaults, then a YAML file, then ``EDGEFLEET_*`` environment.

Nested keys use ``__`` in the environment (``EDGEFLEET_BROKER__URL``). Settings are built by
``load_settings`` when the app or a command starts, never at import time.

With a file, every relative path setting (a SQLite ``database_url``, the key, repository and
CA folders, TLS and passphrase files), whether written in the file or left at its default,
is taken from the file's folder, as the agent's config does: the same file names the same
database and keys from whichever folder a command runs. Values from the environment and
overrides stay relative to the current folder, like any path typed in a shell.
"""

import types
from datetime import timedelta
from ipaddress import ip_network
from pathlib import Path, PurePath
from typing import Any, ClassVar, Literal, Union, get_args, get_origin

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from controller.telemetry.settings import TelemetrySettings
from shared.broker_url import Tls, check_tls_files, parse_broker_url, protocol_as_text
from shared.http_guard import check_host_pattern
from shared.yaml_guard import YamlShapeError, read_yaml_file

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
    # The embedded broker's logins (``username:hash`` lines, Argon2; ``edgefleet demo``
    # writes one per run): anonymous clients are refused and each device user is confined
    # to its own topics. None: the embedded broker accepts anonymous clients.
    embedded_password_file: Path | None = None
    # Each controller replica needs its own client id: the broker keeps one persistent
    # session per id, holding unacknowledged messages across a controller restart.
    client_id: str = "edgefleet-controller"
    keepalive_s: int = Field(default=30, ge=5)
    # None picks 3.1.1 for the embedded broker (amqtt has no MQTT 5) and 5 otherwise.
    protocol: Literal["5", "3.1.1"] | None = None
    # MQTT 5 shared subscription group: replicas in one group split the device stream.
    shared_group: str | None = Field(default="edgefleet", pattern=r"^[A-Za-z0-9_-]+$")
    # How long the broker keeps the ingest session after the controller vanished (MQTT 5;
    # a clean stop ends it at once). Short on purpose: a dead replica's session keeps its
    # share of the shared subscription, and what it takes is lost when it expires. Records
    # come again (devices keep them until acknowledged); heartbeats, quotes and births sent
    # meanwhile do not (docs/production.md, "Several replicas").
    session_expiry_s: int = Field(default=30, ge=0)
    # TLS (``mqtts://`` URLs, external brokers): the CA that signed the broker's certificate
    # (None: the system's trust store), and the controller's client certificate and key.
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    # The embedded broker's own certificate and key, for an mqtts:// URL.
    server_cert_file: Path | None = None
    server_key_file: Path | None = None

    _protocol_number = field_validator("protocol", mode="before")(protocol_as_text)

    @model_validator(mode="after")
    def _tls_files_need_mqtts(self) -> "BrokerSettings":
        check_tls_files(self.url, self.ca_file, self.cert_file, self.key_file)
        tls = parse_broker_url(self.url).tls
        server = (self.server_cert_file, self.server_key_file)
        if self.mode == "embedded" and tls and None in server:
            raise ValueError(
                "an embedded broker on mqtts:// needs broker.server_cert_file and "
                "broker.server_key_file (edgefleet pki init makes them)"
            )
        if server != (None, None) and not (self.mode == "embedded" and tls):
            raise ValueError(
                "broker.server_cert_file/server_key_file are for an embedded broker on mqtts://"
            )
        return self

    def tls(self) -> Tls | None:
        """The TLS settings of an ``mqtts://`` URL, None for plaintext."""
        if not parse_broker_url(self.url).tls:
            return None
        return Tls(self.ca_file, self.cert_file, self.key_file)

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


class RoleExpiry(BaseModel):
    """How long each TUF role's metadata stays valid after it is signed (ISO 8601 like
    ``P7D``/``PT6H``, or seconds). Short-lived timestamp and snapshot bound how long an
    attacker can freeze a device on old metadata; root is signed offline, so it lives long."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=90)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)

    @model_validator(mode="after")
    def _positive(self) -> "RoleExpiry":
        for role in ("root", "targets", "snapshot", "timestamp"):
            if getattr(self, role) <= timedelta(0):
                raise ValueError(f"updates.expiry.{role} must be positive")
        return self


class RoleThresholds(BaseModel):
    """Signatures each TUF role needs; ``edgefleet keys init`` makes that many keys."""

    root: int = Field(default=1, ge=1)
    targets: int = Field(default=1, ge=1)
    snapshot: int = Field(default=1, ge=1)
    timestamp: int = Field(default=1, ge=1)


class UpdatesSettings(BaseModel):
    """The TUF repository that signs model updates, and its online keys."""

    repo_dir: Path = Path(".edgefleet/tuf")
    keys_dir: Path = Path(".edgefleet/keys")
    # The online keys' passphrase; when unset, EDGEFLEET_KEY_PASSPHRASE is read instead.
    passphrase_file: Path | None = None
    expiry: RoleExpiry = Field(default_factory=RoleExpiry)
    thresholds: RoleThresholds = Field(default_factory=RoleThresholds)
    # Re-sign a role once less than this fraction of its lifetime is left.
    refresh_fraction: float = Field(default=0.5, gt=0, lt=1)
    refresh_check_s: float = Field(default=300.0, gt=0)
    max_upload_bytes: int = Field(default=16 * 1024**3, ge=1)


class PkiSettings(BaseModel):
    """The device certificate authority (docs/tls.md): its folder and certificate lifetimes.
    The CA key is encrypted with the TUF keys' passphrase (``updates.passphrase_file`` or
    ``EDGEFLEET_KEY_PASSPHRASE``, the same rules)."""

    # ca.key (encrypted, 0600), ca.crt and crl.pem, in a 0700 folder.
    dir: Path = Path(".edgefleet/pki")
    ca_days: int = Field(default=3650, ge=2)
    device_cert_days: int = Field(default=365, ge=1)
    server_cert_days: int = Field(default=397, ge=1)
    # How long a published CRL stays valid; the broker refuses every client once it lapses.
    crl_next_update: timedelta = timedelta(days=7)

    @model_validator(mode="after")
    def _fits_the_ca(self) -> "PkiSettings":
        for name in ("device_cert_days", "server_cert_days"):
            if getattr(self, name) >= self.ca_days:
                raise ValueError(f"pki.{name} must be shorter than pki.ca_days")
        if self.crl_next_update <= timedelta(0):
            raise ValueError("pki.crl_next_update must be positive")
        return self


class AttestationSettings(BaseModel):
    """Device attestation (docs/attestation.md)."""

    # tofu: enroll the identity key of a device's first birth; provisioned: only keys
    # registered beforehand (devices provision --identity-key, or the API) are trusted and
    # an unknown key quarantines. None: tofu in development and demo, provisioned otherwise.
    enrollment: Literal["tofu", "provisioned"] | None = None
    # Re-attest online devices this often (besides on every birth).
    interval_s: float = Field(default=3600.0, gt=0)
    # An online device that has not answered its newest challenge after this long is
    # quarantined as silent.
    timeout_s: float = Field(default=60.0, gt=0)
    # How long a nonce may be answered at all (at least timeout_s).
    nonce_ttl_s: float = Field(default=300.0, gt=0)
    # Register the agent_code of the agent installed next to the controller as golden at
    # start. None: yes in development and demo (so local agents pass), no in production.
    trust_local_agent_code: bool | None = None
    # What a failed attestation does besides quarantining: nothing more (quarantine), or
    # revoke the device (certificates into the CRL, broker login dropped, decommissioned;
    # docs/tls.md). Silence alone (no quote in time) only quarantines, whichever is set.
    on_fail: Literal["quarantine", "revoke"] = "quarantine"

    @model_validator(mode="after")
    def _ttl_covers_timeout(self) -> "AttestationSettings":
        if self.nonce_ttl_s < self.timeout_s:
            raise ValueError("attestation.nonce_ttl_s must be at least attestation.timeout_s")
        return self

    def effective_enrollment(self, environment: str) -> Literal["tofu", "provisioned"]:
        if self.enrollment is not None:
            return self.enrollment
        return "provisioned" if environment == "production" else "tofu"

    def trusts_local_agent_code(self, environment: str) -> bool:
        if self.trust_local_agent_code is not None:
            return self.trust_local_agent_code
        return environment != "production"


class RolloutSettings(BaseModel):
    """Staged rollouts (docs/rollouts.md): the tick, and defaults for new rollouts."""

    # How often the rollout job steps every active rollout: a gate decision lands within
    # one interval (plus the tick's own cost, ~0.05-0.2 s at 1,000 devices on SQLite) of a
    # soak's end, so 0.5 s keeps it under 1 s.
    tick_interval_s: float = Field(default=0.5, gt=0)
    default_soak_s: float = Field(default=600.0, ge=0)
    default_min_samples: int = Field(default=50, ge=0)
    # A device silent this long after assignment (or since its last message) times out.
    default_device_timeout_s: float = Field(default=900.0, gt=0)
    # A device that has not installed this long after assignment times out.
    default_install_timeout_s: float = Field(default=3600.0, gt=0)
    # Latency budget when a rollout sets none: the model's expected latency times this.
    latency_budget_factor: float = Field(default=1.5, gt=0)


class HttpLimitSettings(BaseModel):
    """Request bodies the API reads (docs/configuration.md): larger ones are refused with
    413 and JSON nested deeper or holding more values than this with 422, before any route
    parses them. Model uploads have their own limit (``updates.max_upload_bytes``)."""

    # Every API body but a drill report's (``max_drill_report_bytes``) and a model upload's
    # (``updates.max_upload_bytes``): read and refused as soon as it passes this, before the
    # request is authenticated.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # POST /api/drills: a report is stored up to 2 MiB as compact JSON; the body may be
    # indented.
    max_drill_report_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # At most 128: the JSON parser refuses nesting near 200 itself, and recursive code
    # downstream (serializers, json.dumps) fails a few hundred levels deep.
    max_json_depth: int = Field(default=32, ge=2, le=128)
    max_json_elements: int = Field(default=250_000, ge=100)


class HttpTlsSettings(BaseModel):
    """HTTPS for the API and console (docs/tls.md): the server certificate (chain) and its
    key, PEM. Unset: plain HTTP, for loopback or behind a TLS-terminating reverse proxy."""

    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _key_needs_cert(self) -> "HttpTlsSettings":
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("http_tls.key_file set without http_tls.cert_file")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


def _proxy_address(value: str) -> str:
    try:
        ip_network(value, strict=False)
    except ValueError as e:
        raise ValueError(
            f"forwarded_allow_ips: {value!r} is not an IP address or network (name the"
            " reverse proxy's own address; '*' is refused)"
        ) from e
    return value


class LoginLimitSettings(BaseModel):
    """Console login throttling (docs/access.md): failed logins counted per username and per
    client address over a sliding window, in the database so every replica sees them."""

    window_s: float = Field(default=900.0, gt=0)
    # Per username: guessing one account's password. Low, since a real user mistypes a
    # handful of times at most; an attacker can lock an account out for one window.
    max_failures_per_user: int = Field(default=5, ge=1)
    # Per client address: spraying many usernames from one place. Higher, since an office
    # behind one NAT address shares it.
    max_failures_per_ip: int = Field(default=20, ge=1)


class DeadLetterSettings(BaseModel):
    """What ingest keeps of refused messages (docs/protocol.md): rejections of one device
    and reason within ``window_s`` share a row; opening a row takes a token from the
    device's bucket and the fleet's; stored rows are capped per device and in total."""

    window_s: float = Field(default=60.0, gt=0)
    device_rows_per_minute: float = Field(default=6.0, ge=0)
    device_burst: int = Field(default=20, ge=1)
    rows_per_second: float = Field(default=20.0, ge=0)
    burst: int = Field(default=200, ge=1)
    max_rows_per_device: int = Field(default=1_000, ge=1)
    max_rows: int = Field(default=100_000, ge=1)
    flush_s: float = Field(default=1.0, gt=0)


class PlausibilitySettings(BaseModel):
    """How far a device's counters may advance past what ingest last accepted
    (docs/protocol.md, "Plausible sequences"): ``slack`` plus ``per_s`` for every second
    since then. A message beyond it is refused as ``implausible_seq`` and never adopted."""

    heartbeat_seq_slack: int = Field(default=1_000, ge=0)
    heartbeat_seq_per_s: float = Field(default=10.0, ge=0)
    bd_seq_slack: int = Field(default=1_000, ge=0)
    bd_seq_per_s: float = Field(default=1.0, ge=0)
    reported_version_slack: int = Field(default=1_000, ge=0)
    reported_version_per_s: float = Field(default=1.0, ge=0)
    telemetry_seq_slack: int = Field(default=100_000, ge=0)
    telemetry_seq_per_s: float = Field(default=1_000.0, ge=0)
    telemetry_epoch_slack: int = Field(default=1_000, ge=0)
    telemetry_epoch_per_s: float = Field(default=1.0, ge=0)


class RetentionSettings(BaseModel):
    """The retention job (docs/telemetry.md, "Retention"): how often it runs, how much it
    deletes per transaction, and how long the tables outside telemetry keep their rows
    (telemetry's own are ``telemetry.raw_retention_h`` and the rollups' settings). None
    keeps a table's rows for ever: the audit log's default."""

    interval_s: float = Field(default=60.0, gt=0)
    # Rows deleted per transaction (short, so writers are never blocked long), and
    # transactions per table and run (the rest waits for the next run).
    batch_rows: int = Field(default=5_000, ge=100, le=100_000)
    max_batches: int = Field(default=2_000, ge=1)
    # Device status history (births, deaths, timeouts).
    status_events_days: float | None = Field(default=90.0, gt=0)
    # Attestation verdicts; each device's newest verdict and newest passing one are kept
    # whatever their age (the boot-epoch check compares with the newest passing one).
    attestation_results_days: float | None = Field(default=90.0, gt=0)
    # Dead letters (also capped by count: dead_letters.max_rows).
    dead_letters_days: float | None = Field(default=30.0, gt=0)
    # The audit log: kept for ever unless set.
    audit_days: float | None = Field(default=None, gt=0)


def _placeholder(value: str | None) -> bool:
    return value is not None and value.strip().lower() in PLACEHOLDER_SECRETS


def _database_password(url: str) -> str | None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        password = make_url(url).password
    except (ArgumentError, ValueError):
        return None  # the engine reports a malformed URL with its own words
    return None if password is None else str(password)


def _passphrase_file_text(path: Path | None) -> str | None:
    # Only a small regular file is read; a missing one is reported by `edgefleet serve`.
    if path is None or not path.is_file() or path.stat().st_size > 4096:
        return None
    try:
        return path.read_text(encoding="utf-8").rstrip("\n")
    except (OSError, UnicodeDecodeError):
        return None


class Settings(BaseSettings):
    """Everything the controller reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="EDGEFLEET_", env_nested_delimiter="__", extra="forbid"
    )

    environment: Literal["production", "development", "demo"] = "production"
    database_url: str = "sqlite:///./edgefleet.db"
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=1, le=65535)
    http_tls: HttpTlsSettings = Field(default_factory=HttpTlsSettings)
    # Reverse proxies (addresses or networks) whose X-Forwarded-For and X-Forwarded-Proto
    # are believed; none by default, so a client cannot pick its own address (docs/tls.md).
    forwarded_allow_ips: list[str] = Field(default_factory=list, max_length=64)
    # Host names the API and console answer to besides loopback names and the literal address
    # a connection arrived at (docs/access.md, "Host header"): the name users and devices
    # reach the controller by. "*.example.com" covers names under it; "*" turns the check off.
    allowed_hosts: list[str] = Field(default_factory=list, max_length=64)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    ingest_queue_size: int = Field(default=10_000, ge=10)
    ingest_batch_size: int = Field(default=500, ge=1)
    dead_letters: DeadLetterSettings = Field(default_factory=DeadLetterSettings)
    plausibility: PlausibilitySettings = Field(default_factory=PlausibilitySettings)
    # A device is offline after this many heartbeat intervals without a message.
    missed_heartbeats_offline: int = Field(default=3, ge=2)
    liveness_sweep_s: float = Field(default=2.0, gt=0)
    session_ttl_hours: float = Field(default=12.0, gt=0)
    secure_cookies: bool = True
    login_limit: LoginLimitSettings = Field(default_factory=LoginLimitSettings)
    http_limits: HttpLimitSettings = Field(default_factory=HttpLimitSettings)
    # Refuse messages from devices without broker credentials (edgefleet devices provision),
    # a second check behind the broker's ACL.
    require_provisioned_devices: bool = False
    # How often desired documents not yet applied by their device are published again.
    desired_republish_s: float = Field(default=30.0, gt=0)
    attestation: AttestationSettings = Field(default_factory=AttestationSettings)
    updates: UpdatesSettings = Field(default_factory=UpdatesSettings)
    pki: PkiSettings = Field(default_factory=PkiSettings)
    rollouts: RolloutSettings = Field(default_factory=RolloutSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxy_addresses(cls, values: list[str]) -> list[str]:
        return [_proxy_address(v) for v in values]

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, values: list[str]) -> list[str]:
        try:
            return [check_host_pattern(v) for v in values]
        except ValueError as e:
            raise ValueError(f"allowed_hosts: {e}") from None

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> "Settings":
        """Outside the demo (which generates its own secrets) no tutorial secret is used."""
        if self.environment == "demo":
            return self
        broker = self.broker.password
        if broker is not None and _placeholder(broker.get_secret_value()):
            raise ValueError("broker.password is a placeholder; set a real secret")
        if _placeholder(_database_password(self.database_url)):
            raise ValueError("database_url has a placeholder password; set a real secret")
        if _placeholder(_passphrase_file_text(self.updates.passphrase_file)):
            raise ValueError(
                "updates.passphrase_file holds a placeholder passphrase; set a real secret"
            )
        return self


class _FileSettings(Settings):
    """Settings with a YAML file between the defaults and the environment."""

    file_values: ClassVar[dict[str, Any] | None] = None

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
        if cls.file_values is not None:
            sources.append(InitSettingsSource(settings_cls, init_kwargs=cls.file_values))
        return tuple(sources)


def read_config_file(config_file: Path) -> dict[str, Any]:
    """The mapping in the YAML file ``config_file``, read through the bounded loader (size,
    depth, element count, no aliases); ``ValueError`` saying what is wrong with the file."""
    try:
        raw = read_yaml_file(config_file)
    except OSError as e:
        raise ValueError(f"cannot read controller config file {config_file}: {e}") from e
    except YamlShapeError as e:
        raise ValueError(f"controller config file {e}") from e
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"controller config file {config_file} must be a YAML mapping")
    return raw


def _is_path(annotation: Any) -> bool:
    """``Path`` or ``Path | None``."""
    if annotation is Path:
        return True
    args = set(get_args(annotation))
    return get_origin(annotation) in (Union, types.UnionType) and args == {Path, type(None)}


def _relative(value: object) -> bool:
    return isinstance(value, str | PurePath) and str(value) != "" and not Path(value).is_absolute()


def sqlite_file(database_url: str) -> Path | None:
    """The file a SQLite ``database_url`` names (relative as written), None for another
    database, an in-memory one, a ``file:`` URI or a URL that does not parse."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(database_url)
    except (ArgumentError, ValueError):
        return None  # the engine reports a malformed URL with its own words
    name = url.database
    if url.get_backend_name() != "sqlite" or not name or name == ":memory:":
        return None
    return None if name.startswith("file:") else Path(name)


def _anchor_database_url(value: object, base: Path) -> object:
    if not isinstance(value, str):
        return value  # validation names the wrong type
    file = sqlite_file(value)
    if file is None or file.is_absolute():
        return value
    from sqlalchemy.engine import make_url

    url = make_url(value).set(database=str(base / file))
    return url.render_as_string(hide_password=False)


def anchor_paths(
    values: dict[str, Any], base: Path, model: type[BaseModel] = Settings
) -> dict[str, Any]:
    """``values`` (a config file's mapping for ``model``) with every relative path setting,
    written there or left at its default, joined to ``base`` (the file's folder): ``Path``
    fields at any depth, and the file of a SQLite ``database_url``. Values of the wrong type
    are left for validation to name."""
    out = dict(values)
    for name, field in model.model_fields.items():
        value = values.get(name, field.default)
        if model is Settings and name == "database_url":
            out[name] = _anchor_database_url(value, base)
        elif _is_path(field.annotation):
            if _relative(value):
                out[name] = str(base / value)
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            inner = values.get(name, {})
            if isinstance(inner, dict):
                anchored = anchor_paths(inner, base, field.annotation)
                if anchored or name in values:
                    out[name] = anchored
    return out


def load_settings(config_file: Path | None = None, **overrides: object) -> Settings:
    """Build settings from ``config_file`` (YAML, optional), the environment and overrides;
    relative paths from the file (and the defaults, with a file) are taken from its folder."""
    if config_file is not None and not config_file.is_file():
        raise ValueError(f"controller config file {config_file} does not exist")
    values = None
    if config_file is not None:
        values = anchor_paths(read_config_file(config_file), config_file.resolve().parent)

    class _Bound(_FileSettings):
        file_values = values

    return _Bound(**overrides)  # type: ignore[arg-type]
