"""The update manager: turns the desired shadow key ``model`` into an installed, serving model.

One supervised thread per agent (a step that raises is a defect: the supervisor logs it,
counts it and restarts the thread with backoff). The desired model may be a chat model
(``llama.cpp``, ``ort-genai``) or a perception classifier (``onnx``) of the agent config:
the same steps install both, only the smoke inference differs (``kinds``). For a desired
target it refreshes TUF metadata, checks the target against this device, downloads the
artifact into the inactive slot (resumable, verified), loads it beside the running model,
runs a smoke inference inside the latency budget, then switches the slot atomically and
hands the new runtime to the agent (hot swap). Anything that goes wrong leaves the running
model alone and is reported: the reported shadow key ``model`` and a ``model_install`` event
(contract 2). A switched slot stays on trial until the agent has stayed up
``confirm_after_s``; a crash loop rolls it back at the next start. The desired marker
``{"name": ..., "factory": true}`` (a rollout rolling back to the configured model) puts
that model back on its configured path.
"""

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from edge_agent.config import UpdatesConfig
from edge_agent.updates.decisions import (
    DesiredModel,
    DeviceFacts,
    FactoryModel,
    InstallFailed,
    Outcome,
    Status,
    TargetMeta,
    UpdateError,
    check_compatibility,
    next_step,
    parse_desired_model,
    parse_target_meta,
    status_for,
)
from edge_agent.updates.fetch import file_sha256
from edge_agent.updates.kinds import (
    LoadFn,
    ModelSpec,
    SwapFn,
    configured_runtime,
    health_check,
)
from edge_agent.updates.slots import (
    FACTORY,
    Rejection,
    SlotName,
    SlotRecord,
    Slots,
    artifact_name,
    unpack_archive,
)
from shared.supervision import Supervisor

if TYPE_CHECKING:  # python-tuf loads when the first update is installed (_install)
    from edge_agent.updates.client import TufClient, VerifiedTarget

log = logging.getLogger(__name__)

RETRY_BASE_S = 5.0


class UpdateManager:
    """Installs desired models into A/B slots and reports how it went.

    ``models`` are the chat and perception models of the agent config (a name is managed
    once: the first model with it). Construct it at agent start (opening the slots counts a
    trial boot and may roll a crash-looping slot back), take ``model_path(name)`` for each
    model to load, then
    ``start()`` the thread; ``wake()`` it when the desired document changes. Tests (and
    the thread) drive it with ``reconcile()``, one step at a time.
    """

    def __init__(
        self,
        config: UpdatesConfig,
        *,
        state_dir: Path,
        models: Sequence[ModelSpec],
        device: DeviceFacts,
        load: LoadFn,
        swap: SwapFn,
        desired: Callable[[], Mapping[str, Any]],
        record_event: Callable[[str, dict[str, object]], None],
        on_status: Callable[[], None] | None = None,
        hashes: Callable[[], Mapping[str, str]] | None = None,
        clock: Callable[[], float] = time.time,
        http: httpx.Client | None = None,
        rng: random.Random | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        if config.metadata_url is None or config.targets_url is None:
            raise ValueError("updates need metadata_url and targets_url")
        if config.trusted_root is None:
            raise ValueError("updates need trusted_root")
        self.config = config
        self.device = device
        self._models: dict[str, ModelSpec] = {}
        for model in models:
            if model.name in self._models:
                log.error(
                    "model name %s is configured twice; updates manage the first one only",
                    model.name,
                )
                continue
            self._models[model.name] = model
        self._load = load
        self._swap = swap
        self._desired = desired
        self._record_event = record_event
        self._on_status = on_status or (lambda: None)
        self._hashes = hashes or dict
        # The reference time of every expiry, retry and confirm decision (tests steer it).
        self.clock = clock
        self._rng = rng or random.Random()  # noqa: S311 (retry jitter, not cryptography)
        self._own_http = http is None
        self._http = http or repository_client(config)
        self._tuf_args: dict[str, Any] = {
            "metadata_dir": state_dir / "tuf",
            "metadata_url": config.metadata_url,
            "targets_url": config.targets_url,
            "trusted_root": config.trusted_root,
            "max_artifact_bytes": config.max_artifact_bytes,
        }
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        # The agent's supervisor, or one of our own when used alone (tests).
        self._own_supervisor = supervisor is None
        self._supervisor = supervisor or Supervisor()
        self._started = False
        self._retry_at: dict[tuple[str, int | None], float] = {}
        self._failures: dict[tuple[str, int | None], int] = {}
        self._emitted: dict[tuple[str, int | None], Outcome] = {}
        self._unknown: dict[tuple[str, int | None], str] = {}
        self._confirm_at: dict[str, float] = {}
        self._factory_failed: dict[str, str] = {}
        self.slots: dict[str, Slots] = {}
        for model in self._models.values():
            slots = Slots(
                state_dir / "models" / model.name,
                factory_path=model.path,
                crash_loop_boots=config.crash_loop_boots,
                clock=lambda: self.clock(),
            )
            self.slots[model.name] = slots
            if slots.boot_rollback is not None:
                self._rolled_back(model.name, slots.boot_rollback)
            elif slots.trial:
                self._confirm_at[model.name] = self.clock() + config.confirm_after_s
        self._status: dict[str, Any] | None = None
        self._refresh_status()

    # --- what the agent asks ----------------------------------------------------------------
    def model_path(self, name: str) -> Path | None:
        """The path to load for ``name`` (its active slot), or None if it is not managed."""
        slots = self.slots.get(name)
        return slots.active_path() if slots is not None else None

    def start_failed(self, name: str, reason: str) -> Path | None:
        """The agent could not load ``name`` at start. A slot on trial is rolled back, and
        the path to load instead is returned; otherwise None (nothing to fall back to)."""
        slots = self.slots.get(name)
        if slots is None or not slots.trial:
            return None
        rejection = slots.rollback(f"did not load at start: {reason}")
        self._confirm_at.pop(name, None)
        self._rolled_back(name, rejection)
        self._refresh_status()
        return slots.active_path()

    def reported(self) -> dict[str, Any] | None:
        """The reported shadow value ``model`` (contract 2), or None with no managed model."""
        with self._lock:
            status = dict(self._status) if self._status is not None else None
        if status is not None and status["sha256"] is None:
            # The configured model is hashed by its runtime when loaded (after we start).
            status["sha256"] = self._hashes().get(status["name"])
        return status

    # --- the thread -------------------------------------------------------------------------
    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._supervisor.spawn("model-updates", self._run, stopping=self._stopping)

    def wake(self) -> None:
        """The desired document changed (or something else worth a look happened)."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._started:
            self._supervisor.join("model-updates", timeout)
        if self._own_supervisor:
            self._supervisor.stop(timeout)
        if self._own_http:
            self._http.close()

    def _run(self) -> None:
        # A step that raises ends this run; the supervisor restarts it after a backoff.
        while not self._stopping.is_set():
            delay = self.reconcile()
            self._wake.wait(delay)
            self._wake.clear()

    # --- one step ---------------------------------------------------------------------------
    def reconcile(self) -> float | None:
        """Move one step towards the desired model; returns seconds until the next step is
        due (a trial to confirm, a retry), or None to wait for ``wake()``."""
        now = self.clock()
        waits: list[float] = []
        for name, due in list(self._confirm_at.items()):
            if now >= due:
                self.slots[name].confirm()
                del self._confirm_at[name]
                log.info("model %s confirmed in slot %s", name, self.slots[name].active)
                self._refresh_status()
            else:
                waits.append(due - now)
        settings = self._desired()
        if "model" in settings and settings["model"] is None:
            self._revert_all()  # an explicit null: back to the configured models
            return min(waits, default=None)
        wanted = self._desired_model()
        if isinstance(wanted, FactoryModel):
            self._revert_factory(wanted.name)  # the marker: that model's configured path
            return min(waits, default=None)
        desired = wanted
        if desired is None:
            self._refresh_status()
            return min(waits, default=None)
        self._factory_failed.clear()
        key = (desired.target, desired.rollout)
        slots = self.slots.get(desired.name)
        if slots is None:
            if key not in self._unknown:
                reason = f"no model named {desired.name!r} is configured on this device"
                self._unknown[key] = reason
                self._event(desired, "refused", reason, None)
            self._set_status(desired, "refused", self._unknown[key])
            return min(waits, default=None)
        record = slots.active_record()
        rejection = slots.rejection(*key)
        before = slots.record(slots.previous)
        step = next_step(
            desired,
            active_target=record.target if record else None,
            trial=slots.trial,
            rejected=rejection is not None,
            retry_at=self._retry_at.get(key),
            now=now,
            reverting=before is not None and before.target == desired.target,
        )
        if step == "current":
            self._set_status(desired, "active", None)
        elif step == "rejected" and rejection is not None:
            self._set_status(desired, status_for(rejection.outcome), rejection.reason)
        elif step == "wait_retry":
            waits.append(self._retry_at[key] - now)
        elif step == "install":
            retry_in = self._attempt(desired, slots)
            if retry_in is not None:
                waits.append(retry_in)
        return min(waits, default=None)

    def _desired_model(self) -> DesiredModel | FactoryModel | None:
        try:
            return parse_desired_model(self._desired().get("model"))
        except ValueError:
            return None  # the shadow rejected it already

    def _revert_all(self) -> None:
        """Desired ``model`` is an explicit null (what older controllers meant to send):
        every managed model runs its configured path again."""
        for name in self.slots:
            self._revert_factory(name)

    def _revert_factory(self, name: str) -> None:
        """Model ``name`` runs its configured path again: loaded, health-checked and
        swapped in (how a rollout rolls back a device whose previous model was the factory
        one, with the desired marker ``{"name": name, "factory": true}``)."""
        slots = self.slots.get(name)
        if slots is None:
            reason = f"no model named {name!r} is configured on this device"
            self._publish(self._snapshot(name, "refused", reason, None))
            return
        if slots.active == FACTORY:
            self._publish(self._snapshot(name, "active", None, None))
            return
        if name in self._factory_failed:
            self._publish(self._snapshot(name, "failed", self._factory_failed[name], None))
            return
        try:
            runtime, measured = self._load(self._models[name])
        except Exception as e:  # the configured model must not take the agent down
            reason = f"the configured model did not load: {e}"
        else:
            try:
                health_check(self._models[name], runtime, None, self.config)
            except UpdateError as e:
                runtime.close()
                reason = str(e)
            else:
                slots.revert_to_factory()
                self._confirm_at.pop(name, None)
                self._swap(name, runtime, measured)
                log.info("model %s reverted to its configured path", name)
                self._factory_event(name, "installed", "reverted to the configured model")
                self._publish(self._snapshot(name, "active", None, None))
                return
        self._factory_failed[name] = reason
        self._factory_event(name, "failed", reason)
        self._publish(self._snapshot(name, "failed", reason, None))

    def _factory_event(self, name: str, outcome: Outcome, reason: str) -> None:
        self._record_event(
            "model_install",
            {
                "target": None,
                "version": None,
                "rollout": None,
                "outcome": outcome,
                "reason": f"{name}: {reason}",
                "slot": FACTORY,
            },
        )

    def _attempt(self, desired: DesiredModel, slots: Slots) -> float | None:
        key = (desired.target, desired.rollout)
        slot = slots.inactive()
        try:
            self._install(desired, slots, slot)
        except UpdateError as e:
            reason = str(e)
            log.warning("model %s target %s: %s", desired.name, desired.target, reason)
            if e.retry:
                failures = self._failures.get(key, 0)
                self._failures[key] = failures + 1
                ceiling = min(self.config.retry_max_s, RETRY_BASE_S * 2.0 ** min(failures, 16))
                delay = ceiling / 2 + self._rng.uniform(0, ceiling / 2)
                self._retry_at[key] = self.clock() + delay
                if e.outcome is not None:
                    self._event(desired, e.outcome, reason, slot)
                self._set_status(
                    desired, status_for(e.outcome), f"{reason} (retrying in {delay:.0f}s)"
                )
                return delay
            outcome: Outcome = e.outcome or "failed"
            slots.reject(desired.target, desired.rollout, outcome, reason, slot)
            slots.clear(slot)
            self._event(desired, outcome, reason, slot)
            self._set_status(desired, status_for(outcome), reason)
            return None
        self._retry_at.pop(key, None)
        self._failures.pop(key, None)
        return None

    def _install(self, desired: DesiredModel, slots: Slots, slot: SlotName) -> None:
        model = self._models[desired.name]
        self._set_status(desired, "downloading", None)
        from edge_agent.updates.client import TufClient

        client = TufClient(**self._tuf_args, http=self._http, clock=self.clock)
        target = client.target(desired.target)
        meta = parse_target_meta(target.custom)
        check_compatibility(
            meta, desired=desired, configured_runtime=configured_runtime(model), device=self.device
        )
        entry = self._place(client, target, meta, slots, slot)
        self._set_status(desired, "installing", None)
        candidate_cfg = model.model_copy(update={"path": slots.slot_dir(slot) / entry})
        try:
            runtime, measured = self._load(candidate_cfg)
        except Exception as e:  # any load failure is the candidate's fault, never fatal
            raise InstallFailed(f"candidate did not load: {e}") from e
        try:
            health_check(candidate_cfg, runtime, meta, self.config)
            slots.switch(
                slot,
                SlotRecord(
                    target=desired.target,
                    version=desired.version,
                    sha256=target.sha256,
                    length=target.length,
                    entry=entry,
                    runtime=meta.runtime,
                    installed_at=self.clock(),
                    rollout=desired.rollout,
                ),
            )
        except BaseException:
            runtime.close()
            raise
        self._swap(desired.name, runtime, measured)
        self._confirm_at[desired.name] = self.clock() + self.config.confirm_after_s
        log.info("model %s now serves %s from slot %s", desired.name, desired.target, slot)
        self._event(desired, "installed", None, slot)
        self._set_status(desired, "active", None)

    def _place(
        self,
        client: "TufClient",
        target: "VerifiedTarget",
        meta: TargetMeta,
        slots: Slots,
        slot: SlotName,
    ) -> str:
        """Put the verified artifact into ``slot``; returns the model's entry in the slot.

        A slot that already holds exactly this target (switching back to the previous
        version) is re-verified from disk instead of downloaded again.
        """
        kept = slots.record(slot)
        if kept is not None and kept.sha256 == target.sha256 and kept.length == target.length:
            path = slots.slot_dir(slot) / kept.entry
            if path.is_file() and file_sha256(path) == (target.length, target.sha256):
                return kept.entry
            if path.is_dir() and meta.runtime == "ort-genai":
                return kept.entry  # unpacked archive: the runtime hashes the folder on load
        from edge_agent.updates.client import partial_name

        name = artifact_name(target.path)
        folder = slots.prepare(slot, keep=partial_name(target.sha256))
        client.download(target, folder / name)
        if meta.runtime == "ort-genai":
            return unpack_archive(folder / name, folder, max_bytes=self.config.max_artifact_bytes)
        return name

    # --- reporting --------------------------------------------------------------------------
    def _event(
        self, desired: DesiredModel, outcome: Outcome, reason: str | None, slot: str | None
    ) -> None:
        key = (desired.target, desired.rollout)
        if outcome != "installed" and self._emitted.get(key) == outcome:
            return  # a retry that ends the same way is not news
        self._emitted[key] = outcome
        self._record_event(
            "model_install",
            {
                "target": desired.target,
                "version": desired.version,
                "rollout": desired.rollout,
                "outcome": outcome,
                "reason": reason,
                "slot": slot,
            },
        )

    def _rolled_back(self, name: str, rejection: Rejection) -> None:
        # The rolled-back slot keeps its record until it is reused: the version is there.
        version = next(
            (
                r.version
                for r in self.slots[name].state.slots.values()
                if r is not None and r.target == rejection.target
            ),
            "",
        )
        self._record_event(
            "model_install",
            {
                "target": rejection.target,
                "version": version,
                "rollout": rejection.rollout,
                "outcome": "rolled_back",
                "reason": rejection.reason,
                "slot": rejection.slot,
            },
        )
        self._emitted[(rejection.target, rejection.rollout)] = "rolled_back"

    def _snapshot(
        self, name: str, status: Status, error: str | None, desired: DesiredModel | None
    ) -> dict[str, Any]:
        slots = self.slots.get(name)
        record = slots.active_record() if slots is not None else None
        return {
            "name": name,
            "target": record.target if record else None,
            "version": record.version if record else None,
            "sha256": record.sha256 if record else None,
            "slot": slots.active if slots is not None else None,
            "status": status,
            "error": error,
            "desired_target": desired.target if desired else None,
            "rollout": desired.rollout if desired else None,
            "installed_at": record.installed_at if record else None,
            "confirmed": not slots.trial if slots is not None else True,
        }

    def _set_status(self, desired: DesiredModel, status: Status, error: str | None) -> None:
        self._publish(self._snapshot(desired.name, status, error, desired))

    def _refresh_status(self) -> None:
        """The status as the slots show it, for the desired model or the first managed one."""
        wanted = self._desired_model()
        name = wanted.name if wanted else next(iter(self.slots), None)
        if name is None:
            return
        slots = self.slots.get(name)
        status: Status = "active"
        error: str | None = None
        if isinstance(wanted, FactoryModel):
            if slots is None:
                status, error = "refused", f"no model named {name!r} is configured on this device"
            elif name in self._factory_failed:
                status, error = "failed", self._factory_failed[name]
            self._publish(self._snapshot(name, status, error, None))
            return
        desired = wanted
        if desired is not None and slots is not None:
            rejection = slots.rejection(desired.target, desired.rollout)
            record = slots.active_record()
            if rejection is not None and (record is None or record.target != desired.target):
                status, error = status_for(rejection.outcome), rejection.reason
        self._publish(self._snapshot(name, status, error, desired))

    def _publish(self, status: dict[str, Any]) -> None:
        with self._lock:
            changed = status != self._status
            self._status = status
        if changed:
            try:
                self._on_status()
            except Exception:  # reporting must never break an install
                log.exception("could not publish the model status")


def repository_client(config: UpdatesConfig) -> httpx.Client:
    """The HTTP client of the TUF repository: HTTPS certificates verified against
    ``updates.ca_file`` (host name included, TLS 1.2+), or httpx's default public CAs."""
    tls = config.tls()
    return httpx.Client(
        timeout=httpx.Timeout(config.http_timeout_s, connect=min(10.0, config.http_timeout_s)),
        follow_redirects=True,
        verify=True if tls is None else tls.context(),
    )
