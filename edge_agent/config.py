"""The agent's YAML configuration, validated up front so a wrong key fails at start.

Every key is documented in ``docs/configuration.md``; keep the two in step.
"""

from ipaddress import ip_address
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from edge_agent.api_keys import ApiKeysError, read_keys_file
from shared.broker_url import (
    Tls,
    TlsConfigError,
    check_tls_files,
    parse_broker_url,
    protocol_as_text,
)
from shared.http_guard import check_host_pattern
from shared.provisioning import STATE_DIR
from shared.topics import is_valid_device_id
from shared.yaml_guard import YamlShapeError, read_yaml_file


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
    # TLS (``mqtts://`` URLs only): the CA that signed the broker's certificate (None: the
    # system's trust store), and this device's client certificate and its key.
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    # The controller message keys this device trusts (docs/protocol.md, "Signatures").
    # None: <state_dir>/identity/controller-keys.json, where flashing writes them; a device
    # without the file pins the controller's key from its first controller_keys message.
    controller_keys_file: Path | None = None
    # Renewal over MQTT (docs/tls.md): with cert_file and key_file set, a new certificate
    # is requested once less than this fraction of the current one's lifetime is left;
    # unanswered or refused requests are retried after a doubling delay between these.
    renew_certificate: bool = True
    renew_before_fraction: float = Field(default=1 / 3, gt=0, lt=1)
    renew_retry_min_s: float = Field(default=60.0, gt=0)
    renew_retry_max_s: float = Field(default=6 * 3600.0, gt=0)

    _protocol_number = field_validator("protocol", mode="before")(protocol_as_text)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parse_broker_url(value)
        return value

    @model_validator(mode="after")
    def _tls_files_need_mqtts(self) -> "MqttConfig":
        check_tls_files(self.url, self.ca_file, self.cert_file, self.key_file)
        return self

    @property
    def renews_certificate(self) -> bool:
        """True if this device renews its client certificate over MQTT."""
        return (
            self.renew_certificate
            and self.tls() is not None
            and self.cert_file is not None
            and self.key_file is not None
        )

    def tls(self) -> Tls | None:
        """The TLS settings of an ``mqtts://`` URL, None for plaintext."""
        if not parse_broker_url(self.url).tls:
            return None
        return Tls(self.ca_file, self.cert_file, self.key_file)

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
    # Request bodies are refused past these before any route parses them (413 for size,
    # 400 for JSON nested too deep or holding too many values). A perception request's
    # tensor as JSON needs room: a 3x224x224 image is 150,528 numbers, about 2 MB.
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    # At most 128: the JSON parser refuses nesting near 200 itself, and recursive code
    # downstream (serializers, json.dumps) fails a few hundred levels deep.
    max_json_depth: int = Field(default=32, ge=2, le=128)
    max_json_elements: int = Field(default=1_000_000, ge=100)
    # Named bearer keys, one per local app (edge-agent api-key add; docs/tls.md). With a
    # file, every route but /healthz needs `Authorization: Bearer <key>`; without one the
    # API is open, so it may only listen on loopback.
    keys_file: Path | None = None
    # Host names the API answers to besides loopback names and the literal address a
    # connection arrived at (a web page that rebinds its own name to this address is
    # refused): add the name local apps use for this device, if any. "*" turns it off.
    allowed_hosts: list[str] = Field(default_factory=list, max_length=64)

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, values: list[str]) -> list[str]:
        try:
            return [check_host_pattern(v) for v in values]
        except ValueError as e:
            raise ValueError(f"api.allowed_hosts: {e}") from None

    @model_validator(mode="after")
    def _keys_beyond_loopback(self) -> "ApiConfig":
        if self.keys_file is None and not is_loopback(self.host):
            raise ValueError(
                f"api.host {self.host!r} is not a loopback address and api.keys_file is not"
                " set: an open API is only served on loopback (add keys with"
                " 'edge-agent api-key add NAME --keys-file FILE')"
            )
        return self


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1); any other name or address
    (0.0.0.0 and :: included) may be reached from the network."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# A model name as configured and as a request may give it.
ModelName = Annotated[str, Field(min_length=1, max_length=128)]
# The model name that asks for any allowed tier: the router's policy picks (docs/api.md).
AUTO_MODEL = "auto"


class ModelConfig(_Strict):
    """One model served by the local tier."""

    name: str = Field(min_length=1, max_length=128)
    # llama.cpp: path is a GGUF file; ort-genai: path is a folder with genai_config.json.
    runtime: Literal["llama.cpp", "ort-genai"] = "llama.cpp"
    path: Path
    n_ctx: int = Field(default=2048, ge=128)
    n_threads: int | None = Field(default=None, ge=1)
    # None: the hardware profile's choice (all layers on a Jetson or NVIDIA GPU, none on a
    # CPU); 0 keeps every layer on the CPU; -1 offloads all.
    n_gpu_layers: int | None = Field(default=None, ge=-1)
    max_tokens_default: int = Field(default=128, ge=1)
    # Lock the weights in RAM (mlock) so the OS never pages them out under memory pressure;
    # where RLIMIT_MEMLOCK is too small llama.cpp warns and carries on unlocked.
    mlock: bool = True
    # More names a request's "model" may give for this model (an OpenAI client's
    # "gpt-4o-mini"); each is listed in GET /v1/models.
    aliases: list[ModelName] = Field(default_factory=list)


class PerceptionModelConfig(_Strict):
    """An ONNX classifier (image or audio), ideally int8-quantized, served locally only."""

    name: str = Field(min_length=1, max_length=128)
    path: Path
    labels: list[str] | None = None
    threads: int | None = Field(default=None, ge=1)


class OutboxConfig(_Strict):
    """The durable outbox of metrics and events (see docs/configuration.md)."""

    max_bytes: int = Field(default=64 * 1024 * 1024, ge=4096)
    batch_records: int = Field(default=200, ge=1, le=500)
    batch_bytes: int = Field(default=48 * 1024, ge=1024, le=60 * 1024)
    inflight_batches: int = Field(default=8, ge=1, le=1000)
    ack_timeout_s: float = Field(default=15.0, gt=0)


class TelemetryConfig(_Strict):
    """Windowed request and drift telemetry (see docs/telemetry.md)."""

    # Seconds per inference.window / drift.window record set; windows are epoch-aligned,
    # so a divisor of 3600 keeps them inside the controller's hourly rollups.
    window_s: float = Field(default=60.0, ge=5, le=3600)

    @field_validator("window_s")
    @classmethod
    def _divides_an_hour(cls, value: float) -> float:
        if 3600 % value:
            raise ValueError("must divide 3600 (e.g. 10, 30, 60, 300)")
        return value


TierName = Literal["local", "private", "cloud"]


class RemoteTierConfig(_Strict):
    """An OpenAI-compatible server: ``private`` (inside the organisation) or ``cloud``."""

    base_url: str = Field(pattern=r"^https?://[^\s]+$")  # up to and including /v1
    model: str = Field(min_length=1, max_length=256)
    # Name of the environment variable holding the API key (keys never go in the YAML).
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Z_][A-Z0-9_]*$")
    timeout_s: float = Field(default=60.0, gt=0)
    connect_timeout_s: float = Field(default=3.0, gt=0)
    # Prices (any currency) per 1,000 tokens: the router prefers the cheaper tier.
    cost_per_1k_input: float = Field(default=0.0, ge=0)
    cost_per_1k_output: float = Field(default=0.0, ge=0)
    # Ask streams for their token counts (stream_options.include_usage); false for a
    # server that refuses the option (its streams are then counted by chunks, prompt 0).
    stream_usage: bool = True

    def api_key(self) -> str | None:
        if self.api_key_env is None:
            return None
        import os

        return os.environ.get(self.api_key_env) or None


class TiersConfig(_Strict):
    """Remote tiers; each is optional (the local tier is the ``models`` list)."""

    private: RemoteTierConfig | None = None
    cloud: RemoteTierConfig | None = None


class RoutingRule(_Strict):
    """Send a task class to a tier (and optionally a model), when sensitivity allows it."""

    task_class: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$")
    tier: TierName
    model: str | None = None


class CascadeConfig(_Strict):
    """Try local first; escalate when the local answer's confidence is below threshold."""

    enabled: bool = True
    # Geometric-mean probability of the local model's tokens below which we escalate.
    threshold: float = Field(default=0.5, ge=0, le=1)
    # Task classes that may cascade; None: every task without a rule sending it elsewhere.
    task_classes: list[str] | None = None
    # If more than this share of cascaded requests escalates within window_s (after at
    # least min_requests), cascading stops for cooldown_s and an alert event is recorded.
    max_escalation_share: float = Field(default=0.5, gt=0, le=1)
    window_s: float = Field(default=300.0, gt=0)
    min_requests: int = Field(default=20, ge=1)
    cooldown_s: float = Field(default=300.0, gt=0)


class BreakerConfig(_Strict):
    """Per remote tier: open after failure_threshold failures within window_s."""

    failure_threshold: int = Field(default=3, ge=1)
    window_s: float = Field(default=30.0, gt=0)
    open_s: float = Field(default=30.0, gt=0)
    max_open_s: float = Field(default=600.0, gt=0)  # cap on a 429's Retry-After


class SensitivitySettings(_Strict):
    """Extra rules for the on-device sensitivity detector."""

    internal_keywords: list[str] = Field(default_factory=list)
    internal_domains: list[str] = Field(default_factory=list)
    extra_restricted_patterns: dict[str, str] = Field(default_factory=dict)
    # Every request is at least this sensitive (``internal``: nothing goes to the cloud).
    minimum: Literal["public", "internal", "restricted"] = "public"


TaskClass = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,63}$")]


class RedactionSettings(_Strict):
    """Reversible redaction (``edge_agent/routing/redaction.py``, docs/routing.md)."""

    # Task classes (X-Task-Class) whose restricted requests are redacted and may leave,
    # instead of staying local; X-Redact: true|false decides per request.
    task_classes: list[TaskClass] = Field(default_factory=list, max_length=256)


# A constraint marker: a word or phrase, matched case-insensitively as whole words.
ConstraintMarker = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)
]


class ContextSettings(_Strict):
    """Session history and its compaction (``edge_agent/routing/context.py``)."""

    # Per session: the first anchor_turns and the last tail_turns messages stay verbatim.
    anchor_turns: int = Field(default=2, ge=0, le=1000)
    tail_turns: int = Field(default=6, ge=0, le=1000)
    # Tokens of the budget left for the answer.
    reserve_answer_tokens: int = Field(default=256, ge=1)
    # Largest share of the prompt budget the summary of the middle may take.
    summary_max_fraction: float = Field(default=0.25, gt=0, le=1)
    # None: the built-in markers (DEFAULT_CONSTRAINT_MARKERS); a list replaces them ([]: the
    # summary keeps no sentence); extra_constraint_markers are added to either.
    constraint_markers: list[ConstraintMarker] | None = Field(default=None, max_length=256)
    extra_constraint_markers: list[ConstraintMarker] = Field(default_factory=list, max_length=256)
    # The in-memory session store: least recently used sessions evicted beyond max_sessions,
    # oldest messages beyond max_turns, sessions idle for idle_ttl_s forgotten.
    max_sessions: int = Field(default=1000, ge=1, le=100_000)
    max_turns: int = Field(default=200, ge=1, le=10_000)
    idle_ttl_s: float = Field(default=3600.0, gt=0)

    @model_validator(mode="after")
    def _anchor_and_tail_within_history(self) -> "ContextSettings":
        # With anchor + tail >= max_turns no history message is ever summarised: the
        # "compaction" could only give turns up, which is surely not what was meant.
        if self.anchor_turns + self.tail_turns >= self.max_turns:
            raise ValueError(
                f"anchor_turns + tail_turns ({self.anchor_turns} + {self.tail_turns}) must be "
                f"below max_turns ({self.max_turns})"
            )
        return self


class RoutingConfig(_Strict):
    """How the agent picks a tier per request (see docs/routing.md)."""

    rules: list[RoutingRule] = Field(default_factory=list)
    # Names a request may give for a chat model in ``models`` (name -> that model's name),
    # or for ``auto`` (name -> "auto"): OpenAI clients keep their model names.
    model_aliases: dict[ModelName, ModelName] = Field(default_factory=dict)
    # Latency budget when a request sends no X-Latency-Budget-Ms (None: no budget).
    default_latency_budget_ms: float | None = Field(default=None, gt=0)
    # Samples in each tier's moving latency window (the p95 comes from it).
    latency_window: int = Field(default=200, ge=10)
    cascade: CascadeConfig = Field(default_factory=CascadeConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    sensitivity: SensitivitySettings = Field(default_factory=SensitivitySettings)
    redact: RedactionSettings = Field(default_factory=RedactionSettings)
    # Retry-After (seconds) on a 503 when no allowed tier is available.
    retry_after_s: int = Field(default=30, ge=1)
    # Context window (tokens) per session used when compacting history for a remote tier.
    remote_context_tokens: int = Field(default=8192, ge=256)
    context: ContextSettings = Field(default_factory=ContextSettings)

    @model_validator(mode="after")
    def _answer_reserve_fits(self) -> "RoutingConfig":
        # Otherwise every request with a session would be refused as too long.
        if self.context.reserve_answer_tokens >= self.remote_context_tokens:
            raise ValueError(
                f"context.reserve_answer_tokens ({self.context.reserve_answer_tokens}) must be "
                f"below remote_context_tokens ({self.remote_context_tokens})"
            )
        return self


class UpdatesConfig(_Strict):
    """Signed model updates over TUF and A/B install (see docs/model-install.md)."""

    enabled: bool = False
    # The controller's TUF repository (any mirror will do: TUF makes mirrors untrusted).
    metadata_url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$")
    targets_url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$")
    # The root metadata shipped with the device: the trust anchor for everything else.
    trusted_root: Path | None = None
    max_artifact_bytes: int = Field(default=8 * 1024**3, ge=1)
    health_prompt: str = Field(default="Reply with one short sentence.", min_length=1)
    health_max_tokens: int = Field(default=8, ge=1, le=256)
    # Budget for the smoke inference when the target states no expected_latency_ms.
    health_latency_budget_ms: float | None = Field(default=None, gt=0)
    crash_loop_boots: int = Field(default=3, ge=1, le=100)
    confirm_after_s: float = Field(default=120.0, ge=0)
    http_timeout_s: float = Field(default=30.0, gt=0)
    retry_max_s: float = Field(default=600.0, ge=1)
    # The CA that signed the controller's HTTPS certificate (edgefleet's own CA, or a
    # private one); None: the public CAs httpx trusts (certifi, or SSL_CERT_FILE). Only
    # for https:// URLs.
    ca_file: Path | None = None

    @field_validator("metadata_url", "targets_url")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        # URLs end up in reported status, events and logs; TUF makes the mirror untrusted,
        # so it needs no secret in its address.
        if value is not None and "@" in value.split("://", 1)[-1].split("/", 1)[0]:
            raise ValueError("must not carry credentials (user:password@)")
        return value

    @model_validator(mode="after")
    def _complete_when_enabled(self) -> "UpdatesConfig":
        if self.enabled:
            missing = [
                key
                for key in ("metadata_url", "targets_url", "trusted_root")
                if getattr(self, key) is None
            ]
            if missing:
                raise ValueError(f"updates enabled but {', '.join(missing)} not set")
        urls = [u for u in (self.metadata_url, self.targets_url) if u is not None]
        if self.ca_file is not None and not any(u.startswith("https://") for u in urls):
            # A CA for plaintext URLs would look like security and give none.
            raise ValueError("ca_file set, but neither metadata_url nor targets_url is https://")
        return self

    def tls(self) -> Tls | None:
        """What the TUF client verifies the repository's HTTPS certificate against: None
        for httpx's default (certifi's public CAs, or SSL_CERT_FILE)."""
        return None if self.ca_file is None else Tls(self.ca_file)


class AgentConfig(_Strict):
    """The whole agent configuration (one YAML file)."""

    device_id: str
    device_class: str | None = None
    state_dir: Path = Path("/" + STATE_DIR)
    mqtt: MqttConfig | None = Field(default_factory=MqttConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    heartbeat_interval_s: float = Field(default=5.0, gt=0, le=3600)
    telemetry_interval_s: float = Field(default=10.0, ge=1, le=86400)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    models: list[ModelConfig] = Field(default_factory=list)
    perception: list[PerceptionModelConfig] = Field(default_factory=list)
    tiers: TiersConfig = Field(default_factory=TiersConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    updates: UpdatesConfig = Field(default_factory=UpdatesConfig)

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

    @model_validator(mode="after")
    def _one_name_one_model(self) -> "AgentConfig":
        # Telemetry, attestation (model:<name>) and updates (desired model.name) identify a
        # model by name alone, whichever list it is in.
        names = [m.name for m in self.perception]
        if len(names) != len(set(names)):
            raise ValueError("perception model names must be unique")
        clash = sorted(set(names) & {m.name for m in self.models})
        if clash:
            raise ValueError(f"{', '.join(clash)} names both a chat and a perception model")
        alias_targets(self.models, names, self.routing.model_aliases)
        return self


def alias_targets(
    models: list[ModelConfig], perception: list[str], model_aliases: dict[str, str]
) -> dict[str, str]:
    """Every alias (``models[].aliases`` and ``routing.model_aliases``) and what it names: a
    chat model's name or ``auto``. Raises ``ValueError`` naming the alias that collides with
    another name or alias, or that points at no chat model."""
    owners: dict[str, str] = {m.name: f"the name of model {m.name!r}" for m in models}
    owners.update({name: f"the name of perception model {name!r}" for name in perception})
    if AUTO_MODEL in owners:
        raise ValueError(
            f"model name {AUTO_MODEL!r} is reserved: a request naming it is routed by policy"
        )
    owners[AUTO_MODEL] = "reserved (model: auto is routed by policy)"
    targets: dict[str, str] = {}
    for index, model in enumerate(models):
        for alias in model.aliases:
            if alias in owners:
                raise ValueError(
                    f"models[{index}].aliases: {alias!r} (alias of {model.name!r}) is already"
                    f" {owners[alias]}"
                )
            owners[alias] = f"an alias of model {model.name!r}"
            targets[alias] = model.name
    chat = {m.name for m in models}
    for alias, target in model_aliases.items():
        if alias in owners:
            raise ValueError(f"routing.model_aliases: {alias!r} is already {owners[alias]}")
        if target != AUTO_MODEL and target not in chat:
            known = ", ".join(sorted(chat)) or "none configured"
            raise ValueError(
                f"routing.model_aliases: {alias!r} points at {target!r}, which is neither a"
                f" chat model in models (names: {known}) nor {AUTO_MODEL!r}"
            )
        owners[alias] = f"an alias in routing.model_aliases (of {target!r})"
        targets[alias] = target
    return targets


def config_schema() -> dict[str, Any]:
    """The JSON Schema of ``AgentConfig`` (``edge-agent config-schema`` prints it)."""
    return AgentConfig.model_json_schema()


def under_root(root: Path, path: Path) -> Path:
    """``path`` as seen from a device whose filesystem root is ``root``: an absolute path is
    taken under ``root`` (``/etc/x`` -> ``root/etc/x``); a relative one is left alone."""
    if not path.is_absolute():
        return path
    return root.joinpath(*path.parts[1:])


def load_config(path: Path, *, root: Path | None = None) -> AgentConfig:
    """Read and validate ``path``; relative paths inside resolve against the file's folder.

    With ``root`` (a flashed device's filesystem, ``edge-agent run --root``), every absolute
    path in the file (state_dir, model paths, password_file, trusted_root, the CA,
    certificate and keys files) is taken under ``root``, so the device's own config works
    unchanged from wherever its root is mounted. The secrets and TLS files are read now,
    so one that cannot be used fails at start with its name rather than at first use.
    """
    config = read_config(path, root=root)
    _read_tls_and_keys(config)
    if config.mqtt is not None:
        config.mqtt.password()  # unreadable secrets fail now, with the path, not at connect
    return config


def read_config(path: Path, *, root: Path | None = None) -> AgentConfig:
    """``path`` validated, with every path in it placed as ``load_config`` places them, but
    no file it names read yet (``edge-agent check-config`` checks them all, not the first)."""
    try:
        raw = read_yaml_file(path)
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e}") from e
    except YamlShapeError as e:
        raise ConfigError(f"config {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a YAML mapping at the top level")
    try:
        config = AgentConfig.model_validate(raw)
    except ValidationError as e:
        lines = [
            f"  {'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}"
            for err in e.errors(include_url=False)
        ]
        raise ConfigError(f"invalid config {path}:\n" + "\n".join(lines)) from e
    base = path.resolve().parent

    def place(value: Path) -> Path:
        return base / (value if root is None else under_root(root, value))

    config.state_dir = place(config.state_dir)
    for model in config.models:
        model.path = place(model.path)
    for classifier in config.perception:
        classifier.path = place(classifier.path)
    updates = config.updates
    if updates.trusted_root is not None:
        updates.trusted_root = place(updates.trusted_root)
    if updates.ca_file is not None:
        updates.ca_file = place(updates.ca_file)
    if config.api.keys_file is not None:
        config.api.keys_file = place(config.api.keys_file)
    if config.mqtt is not None:
        for key in ("password_file", "ca_file", "cert_file", "key_file", "controller_keys_file"):
            value = getattr(config.mqtt, key)
            if value is not None:
                setattr(config.mqtt, key, place(value))
    return config


def _read_tls_and_keys(config: AgentConfig) -> None:
    """Read ``updates.ca_file`` and ``api.keys_file`` now, so a file that cannot be used
    fails at start with its name rather than at the first update or call."""
    tls = config.updates.tls()
    try:
        if tls is not None:
            tls.context()
    except TlsConfigError as e:
        raise ConfigError(f"updates.ca_file: {e}") from e
    if config.api.keys_file is not None:
        try:
            read_keys_file(config.api.keys_file)
        except ApiKeysError as e:
            raise ConfigError(str(e)) from e
