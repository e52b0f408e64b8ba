"""The agent's parts wired together: hardware profile, models, counters and MQTT link.

The served models live in the ``ModelRegistry`` (``model_registry.py``); the router and
the ``ChatService`` the HTTP API calls (``chat_service.py``) are built once, here, when
the agent is constructed.

Every long-lived thread of the agent (the link's network loop, heartbeat and outbox
publisher, the model update manager, the telemetry loops, the HTTP app's chat job worker)
runs under the agent's one ``Supervisor``: a crash is logged with its traceback, counted
(``edgefleet_worker_restarts_total``), shown by ``/healthz`` and restarted with backoff.
"""

import logging
import os
import platform
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import psutil

from edge_agent import __version__
from edge_agent.attestation.attester import Attester
from edge_agent.attestation.identity import FileIdentityKey, IdentityKey
from edge_agent.attestation.measure import agent_code, measure
from edge_agent.chat_service import ChatService, build_router
from edge_agent.config import AgentConfig
from edge_agent.hardware import HardwareProfile, probe
from edge_agent.model_registry import ModelRegistry
from edge_agent.routing.context import store_from_config
from edge_agent.routing.router import Router
from edge_agent.runtimes.base import ChatRuntime
from edge_agent.runtimes.probe import available_runtimes, execution_providers, nvidia_gpus
from edge_agent.shadow import DeviceShadow
from edge_agent.sync.counters import CounterStore
from edge_agent.sync.link import LoadSnapshot, MqttLink
from edge_agent.sync.outbox import Outbox, OutboxFull, Priority
from edge_agent.sync.trust import ControllerTrust
from edge_agent.telemetry.host import max_temperature_c
from edge_agent.telemetry.prometheus import AgentMetrics, AgentState, ModelState
from edge_agent.telemetry.windows import (
    ChatObservation,
    Clock,
    PerceptionObservation,
    WindowAggregator,
    utc_now,
)
from edge_agent.updates.decisions import DeviceFacts, disabled_status
from shared.attestation import encode_public_key
from shared.message_signing import DEVICE_DOMAIN, Signer, short_key_id
from shared.messages import (
    Birth,
    CertRequest,
    Challenge,
    Desired,
    HardwareInfo,
    ModelInfo,
    Quote,
    Reported,
)
from shared.provisioning import CONTROLLER_KEYS_FILE, IDENTITY_FOLDER
from shared.supervision import Supervisor

if TYPE_CHECKING:  # ONNX runtimes (and numpy) load only when an ONNX model is configured
    from edge_agent.runtimes.ort_perception import OrtPerceptionRuntime

    # Certificate renewal (cryptography.x509) loads with mqtt.renews_certificate only.
    from edge_agent.sync.renewal import CertRenewer

    # The update manager (httpx; TUF once an update arrives) loads with updates.enabled.
    from edge_agent.updates.manager import UpdateManager

log = logging.getLogger(__name__)


class Agent:
    """One device's agent. Construct, ``load_models()``, ``start_link()``, serve, ``stop()``."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        root: Path = Path("/"),
        config_path: Path | None = None,
        identity: IdentityKey | None = None,
        clock: Clock = utc_now,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.config = config
        # Owned by the agent and stopped by stop(); a caller may pass one to tune backoff.
        self.supervisor = supervisor or Supervisor()
        self.root = root
        self.config_path = config_path
        # Flashing creates the key; an agent that finds none makes one (development).
        self.identity: IdentityKey = identity or FileIdentityKey.load_or_create(
            config.state_dir / IDENTITY_FOLDER
        )
        self.attester = Attester(self.identity, self.measurements)
        # The code tree's first walk happens here, not in the first quote: in a process of
        # many agents (a simulation), quotes then never wait for one another.
        agent_code()
        self.started_monotonic = time.monotonic()
        self.profile: HardwareProfile = probe(
            root,
            execution_providers=execution_providers(),
            cpu_count=os.cpu_count() or 1,
            memory_bytes=psutil.virtual_memory().total,
            machine=platform.machine(),
            nvidia=nvidia_gpus(),
        )
        self._stopping = threading.Event()
        self.models = ModelRegistry(
            config, self.profile, on_load_failed=self._load_failed, stopping=self._stopping
        )
        self.counters = CounterStore(config.state_dir / "counters.json")
        self.outbox = Outbox(config.state_dir / "outbox.db", max_bytes=config.outbox.max_bytes)
        self.shadow = DeviceShadow(
            config.state_dir / "shadow.json",
            device_id=config.device_id,
            defaults={
                "heartbeat_interval_s": config.heartbeat_interval_s,
                "telemetry_interval_s": config.telemetry_interval_s,
                "labels": {},
            },
            reported_extra=self._reported_extra,
        )
        self.updates: UpdateManager | None = None
        self.link: MqttLink | None = None
        self.renewer: CertRenewer | None = None
        self.sessions = store_from_config(config.routing.context)
        self._requests = 0
        self._errors = 0
        self._stats_lock = threading.Lock()
        # Built once: the router reads the registry's models on every request.
        self.router: Router = build_router(
            config,
            self.models,
            on_alert=lambda name, body: self.record_event("alert", {"alert": name, **body}),
            tier_veto=self.tier_veto,
        )
        self.chat = ChatService(
            config=config,
            models=self.models,
            router=self.router,
            sessions=self.sessions,
            recorder=self,
        )
        self.windows = WindowAggregator(
            config.telemetry.window_s, clock=clock, version_of=self.model_version
        )
        self.metrics = AgentMetrics(self._metrics_state)
        psutil.cpu_percent(None)  # prime: the first call always returns 0.0
        self.record_event(
            "agent_started", {"agent_version": __version__, "epoch": self.outbox.epoch}
        )
        if config.updates.enabled:
            # Opening the slots counts a trial boot: it may roll a crash loop back now.
            self.updates = self._update_manager()

    def _update_manager(self) -> "UpdateManager":
        """The model update manager (imported here: httpx loads only with updates on)."""
        from edge_agent.updates.manager import UpdateManager

        config = self.config
        return UpdateManager(
            config.updates,
            state_dir=config.state_dir,
            models=[*config.models, *config.perception],
            device=DeviceFacts(
                device_class=config.device_class or self.profile.device_class,
                agent_version=__version__,
                runtimes=tuple(
                    "onnx" if name == "onnxruntime" else name for name in available_runtimes()
                ),
            ),
            load=self.models.open_any,
            swap=self.models.swap,
            desired=lambda: self.shadow.current.settings,
            record_event=self.record_event,
            on_status=self._publish_reported,
            hashes=lambda: dict(self.model_hashes),
            supervisor=self.supervisor,
        )

    # --- models -------------------------------------------------------------------------
    @property
    def runtimes(self) -> dict[str, ChatRuntime]:
        """The chat runtimes served now, by model name (the registry's own dict)."""
        return self.models.chat

    @property
    def perception(self) -> "dict[str, OrtPerceptionRuntime]":
        return self.models.perception

    @property
    def model_hashes(self) -> dict[str, str]:
        return self.models.hashes

    @property
    def load_errors(self) -> dict[str, str]:
        return self.models.load_errors

    def load_models(self) -> None:
        """Load and warm every configured model; a failure marks that model, never crashes."""
        self.models.load_all(self.updates)

    def _load_failed(self, name: str, reason: str) -> None:
        self.record_event("model_load_failed", {"model": name, "reason": reason})

    def _reported_extra(self) -> dict[str, object]:
        """Reported keys owned by the update manager (contract 2)."""
        if self.updates is not None:
            status = self.updates.reported()
            return {"model": status} if status is not None else {}
        wanted = self.shadow.current.settings.get("model")
        if isinstance(wanted, dict):  # asked for an update this agent will not do
            return {"model": disabled_status(wanted)}
        return {}

    def _publish_reported(self) -> None:
        if self.link is not None:
            self.link.publish_reported(self.shadow.report())

    @property
    def local_tier_healthy(self) -> bool:
        return self.models.local_tier_healthy

    # --- stats --------------------------------------------------------------------------
    def count_request(self, *, error: bool = False, rejected: str | None = None) -> None:
        """Count a request; ``rejected`` is the error code of one refused before routing."""
        with self._stats_lock:
            self._requests += 1
            if error:
                self._errors += 1
        if rejected is not None:
            self.metrics.observe_rejected(rejected)

    @property
    def requests_total(self) -> int:
        with self._stats_lock:
            return self._requests

    def snapshot(self) -> LoadSnapshot:
        return LoadSnapshot(
            uptime_s=time.monotonic() - self.started_monotonic,
            cpu_percent=psutil.cpu_percent(None),
            memory_percent=psutil.virtual_memory().percent,
            requests_total=self.requests_total,
            local_tier_healthy=self.local_tier_healthy,
        )

    # --- telemetry (never prompt or completion contents) ------------------------------
    def record(
        self,
        kind: Literal["metric", "event"],
        name: str,
        body: dict[str, object],
        priority: Priority,
    ) -> int | None:
        """Keep one record in the outbox and wake the publisher; returns its seq (None if
        it is larger than the whole quota)."""
        try:
            seq = self.outbox.append(kind, name, body, priority=priority)
        except OutboxFull as e:
            log.error("telemetry record %s not kept: %s", name, e)
            return None
        if self.link is not None:
            self.link.wake()
        return seq

    def record_event(self, name: str, body: dict[str, object]) -> None:
        self.record("event", name, body, Priority.EVENT)

    def record_inference(
        self,
        *,
        outcome: dict[str, Any],
        latency_ms: float,
        prompt_tokens: int,
        completion_tokens: int,
        stream: bool,
        status: str,
        task_class: str | None,
        local_model: str | None = None,
        app: str | None = None,
    ) -> None:
        """One record per request: the routing decision and its cost, never the content;
        the request also goes into the telemetry window and the Prometheus counters.
        ``local_model`` is the local model the router used or would use; ``app`` is the
        name of the local app's API key (never the key), when keys are configured."""
        route = outcome.get("route")
        confidence = outcome.get("confidence")
        observation = ChatObservation(
            tier=route if isinstance(route, str) else "none",
            task_class=task_class,
            model=outcome.get("model"),
            status=status,
            escalated=bool(outcome.get("escalated")),
            cascaded=bool(outcome.get("cascaded")),
            fallback=bool(outcome.get("degraded")),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_ms=latency_ms,
            # The router reports the local model's confidence, whichever tier answered.
            local_model=local_model if confidence is not None else None,
            local_confidence=float(confidence) if confidence is not None else None,
            redactions=tuple((outcome.get("redacted") or {}).items()),
        )
        self.observe(observation)
        self.record(
            "metric",
            "inference",
            {
                **outcome,
                "task_class": task_class,
                "latency_ms": round(latency_ms, 2),
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "stream": stream,
                "status": status,
                **({"app": app} if app is not None else {}),
            },
            Priority.NORMAL,
        )

    def record_perception(
        self,
        *,
        model: str,
        status: str,
        latency_ms: float,
        label_index: int | None = None,
        confidence: float | None = None,
    ) -> None:
        """One record per request to a configured perception model: its status and latency
        (and the answer's class), never the inputs; also windowed and counted."""
        self.observe(
            PerceptionObservation(
                model=model,
                status=status,
                latency_ms=latency_ms,
                confidence=confidence,
                label_index=label_index,
            )
        )
        answer: dict[str, object] = {}
        if label_index is not None:
            answer["label_index"] = label_index
        if confidence is not None:
            answer["confidence"] = round(confidence, 4)
        self.record(
            "metric",
            "perception",
            {"model": model, "status": status, "latency_ms": round(latency_ms, 2), **answer},
            Priority.NORMAL,
        )

    def observe(self, observation: ChatObservation | PerceptionObservation) -> None:
        """Feed one request to the telemetry window and the Prometheus counters."""
        try:
            if isinstance(observation, ChatObservation):
                self.windows.observe_chat(observation)
                self.metrics.observe_chat(observation)
            else:
                self.windows.observe_perception(observation)
                self.metrics.observe_perception(observation)
        except Exception:  # telemetry must never fail a request
            log.exception("telemetry observation failed")

    def flush_windows(self, *, final: bool = False) -> int:
        """Put every ended telemetry window (all of them with ``final``) in the outbox;
        returns how many records that made."""
        records = self.windows.flush(final=final)
        for name, body in records:
            self.record("metric", name, body, Priority.NORMAL)
        return len(records)

    def _windows_loop(self) -> None:
        # Wake just after each window boundary; never spin if the clock stands still. A
        # failed flush raises into the supervisor (logged, counted, retried after backoff).
        while not self._stopping.wait(max(0.5, self.windows.seconds_to_boundary() + 0.05)):
            self.flush_windows()

    def model_version(self, name: str) -> str | None:
        """The version of ``name`` an update installed, None for the configured model (or
        when updates are off, or for a remote model)."""
        slots = self.updates.slots.get(name) if self.updates is not None else None
        record = slots.active_record() if slots is not None else None
        return record.version if record is not None else None

    def _metrics_state(self) -> AgentState:
        tiers: dict[str, bool] = {"local": self.local_tier_healthy}
        for name, breaker in self.router.breakers.items():
            tiers[name] = breaker.available()
        chat = {m.name for m in self.config.models}
        return AgentState(
            outbox_records=self.outbox.pending(),
            outbox_bytes=self.outbox.used_bytes,
            tiers_healthy=tiers,
            models=tuple(
                ModelState(
                    name=info.name,
                    kind="chat" if info.name in chat else "perception",
                    runtime=info.runtime,
                    loaded=info.loaded,
                    version=self.model_version(info.name),
                )
                for info in self.model_infos()
            ),
            invalid_observations=self.windows.invalid,
            workers=tuple(self.supervisor.statuses()),
            mqtt_rejected=self.link.stats.rejected.snapshot() if self.link else {},
            mqtt_handler_errors=self.link.stats.handler_errors.snapshot() if self.link else {},
            **self._certificate_state(),
        )

    def _certificate_state(self) -> dict[str, Any]:
        if self.renewer is None:
            return {}
        not_after = self.renewer.not_after()
        return {
            "certificate_not_after": not_after.timestamp() if not_after else None,
            "certificate_renewals": self.renewer.outcomes(),
        }

    def record_system_metrics(self) -> None:
        disk = psutil.disk_usage(str(self.config.state_dir))
        body: dict[str, object] = {
            "cpu_percent": psutil.cpu_percent(None),
            "memory_percent": psutil.virtual_memory().percent,
            "disk_percent": disk.percent,
            "load1": round(os.getloadavg()[0], 2),
            "outbox_bytes": self.outbox.used_bytes,
        }
        temperature = max_temperature_c()
        if temperature is not None:
            body["temperature_c"] = temperature
        self.record("metric", "system", body, Priority.LOW)

    def _metrics_loop(self) -> None:
        while not self._stopping.wait(self.telemetry_interval_s):
            self.record_system_metrics()

    @property
    def telemetry_interval_s(self) -> float:
        return float(self.shadow.current.settings["telemetry_interval_s"])

    # --- shadow ---------------------------------------------------------------------------
    def on_desired(self, desired: Desired) -> Reported:
        """Apply a newer desired document; always answer with what is in effect now."""
        applied = self.shadow.apply(desired)
        if applied is not None:
            if self.link is not None:
                self.link.heartbeat_interval_s = float(applied.settings["heartbeat_interval_s"])
            self.record_event(
                "desired_applied", {"version": desired.version, "rejected": applied.rejected}
            )
            log.info("desired version %d applied", desired.version)
            if self.updates is not None:
                self.updates.wake()
        return self.shadow.report()

    # --- controller link ----------------------------------------------------------------
    def model_infos(self) -> list[ModelInfo]:
        return self.models.infos()

    def birth(self, bd_seq: int) -> Birth:
        api = self.config.api
        return Birth(
            device_id=self.config.device_id,
            bd_seq=bd_seq,
            agent_version=__version__,
            hardware=HardwareInfo(
                device_class=self.config.device_class or self.profile.device_class,
                arch=self.profile.arch,
                accelerator=self.profile.accelerator,
                cpu_count=self.profile.cpu_count,
                memory_mb=self.profile.memory_mb,
                execution_providers=list(self.profile.execution_providers),
                detail=self.profile.detail,
            ),
            runtimes=available_runtimes(),
            models=self.model_infos(),
            api_url=f"http://{api.host}:{api.port}",
            heartbeat_interval_s=self.config.heartbeat_interval_s,
            identity_key=encode_public_key(self.identity.public_key_raw()),
            controller_key_ids=self.link.trust.kids()
            if self.link is not None and self.link.trust is not None
            else [],
        )

    # --- attestation ------------------------------------------------------------------------
    def measurements(self) -> dict[str, str]:
        """What a quote reports now (see edge_agent/attestation/measure.py)."""
        return measure(
            config=self.config,
            config_path=self.config_path,
            root=self.root,
            model_hashes=dict(self.model_hashes),
            boot_epoch=self.outbox.epoch,
        )

    def on_challenge(self, challenge: Challenge) -> Quote:
        quote = self.attester.answer(challenge)
        log.info("answered attestation challenge %s...", challenge.nonce[:12])
        return quote

    @property
    def quarantine(self) -> str | None:
        """The controller's quarantine reason while this device is quarantined, else None."""
        value = self.shadow.current.settings.get("quarantine")
        return str(value.get("reason", "")) if isinstance(value, dict) else None

    def tier_veto(self, tier: str) -> str | None:
        """A quarantined device may not use the cloud tier (nor its credentials)."""
        if tier == "cloud" and self.quarantine is not None:
            return "quarantined"
        return None

    def start_link(self) -> None:
        """Connect to the controller's broker in the background (no-op without ``mqtt``),
        and start acting on desired model updates (when ``updates`` is enabled)."""
        if self.updates is not None:
            self.updates.start()
        if self.config.mqtt is None:
            log.info("no mqtt section: running standalone")
            return
        if self.config.mqtt.renews_certificate:
            self.renewer = self._make_renewer()
        self.link = MqttLink(
            device_id=self.config.device_id,
            config=self.config.mqtt,
            counters=self.counters,
            make_birth=self.birth,
            snapshot=self.snapshot,
            heartbeat_interval_s=float(self.shadow.current.settings["heartbeat_interval_s"]),
            outbox=self.outbox,
            outbox_config=self.config.outbox,
            on_desired=self.on_desired,
            current_reported=self.shadow.report,
            on_challenge=self.on_challenge,
            on_cert_issued=self.renewer.on_issued if self.renewer else None,
            supervisor=self.supervisor,
            signer=Signer(
                DEVICE_DOMAIN, short_key_id(self.identity.public_key_raw()), self.identity.sign
            ),
            trust=ControllerTrust(
                self.config.mqtt.controller_keys_file
                or self.config.state_dir / IDENTITY_FOLDER / CONTROLLER_KEYS_FILE
            ),
        )
        self.link.start()
        if self.renewer is not None:
            renewer, link = self.renewer, self.link
            self.supervisor.spawn(
                "cert-renewal",
                lambda: renewer.run(self._stopping, lambda: link.connected),
                stopping=self._stopping,
            )

    def _make_renewer(self) -> "CertRenewer":
        """The certificate renewer; a renewal a crash interrupted is finished first, so the
        link loads a matching certificate and key."""
        from edge_agent.sync.renewal import CertRenewer, recover

        mqtt = self.config.mqtt
        assert mqtt is not None and mqtt.cert_file is not None and mqtt.key_file is not None
        recover(mqtt.cert_file, mqtt.key_file)

        def send(request: CertRequest) -> bool:
            return self.link is not None and self.link.publish_cert_request(request)

        def reload() -> None:
            if self.link is not None:
                self.link.transport.reload_certificate()

        return CertRenewer(
            device_id=self.config.device_id,
            config=mqtt,
            send=send,
            reload=reload,
            record_event=self.record_event,
        )

    def start_metrics(self) -> None:
        """Record system metrics every ``telemetry_interval_s`` (low priority in the outbox)
        and the telemetry windows as each ends (``telemetry.window_s``)."""
        self.supervisor.spawn("system-metrics", self._metrics_loop, stopping=self._stopping)
        self.supervisor.spawn("telemetry-windows", self._windows_loop, stopping=self._stopping)

    def workers_down(self) -> list[str]:
        """Names of the agent's workers that crashed and wait for their restart."""
        return self.supervisor.down()

    def stop(self) -> None:
        self._stopping.set()
        self.supervisor.join("telemetry-windows", 5)
        # The window in progress goes into the outbox now (the link may still send it).
        try:
            self.flush_windows(final=True)
        except Exception:
            log.exception("final telemetry window flush failed")
        if self.updates is not None:
            self.updates.stop()
        if self.link is not None:
            self.link.stop()
        self.supervisor.join("system-metrics", 5)
        self.supervisor.stop()
        self.models.close()
        for remote in self.router.remotes.values():
            remote.close()
        self.outbox.close()
