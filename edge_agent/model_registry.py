"""The models an agent serves, by name: loaded and warmed at start, hot-swapped by updates.

Chat runtimes and perception classifiers are kept apart (the router only knows chat
runtimes); both have the sha256 of their files (reported and measured) and, when they did
not load, the reason (``/healthz``, the birth message). The dictionaries are shared, not
copied: the router reads ``chat`` and ``load_errors`` on every request, so a swap is seen
by the next request without rebuilding anything.
"""

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from edge_agent.config import (
    AUTO_MODEL,
    AgentConfig,
    ModelConfig,
    PerceptionModelConfig,
    alias_targets,
)
from edge_agent.hardware import HardwareProfile
from edge_agent.runtimes import factory
from edge_agent.runtimes.base import ChatRuntime, RuntimeLoadError
from edge_agent.updates.kinds import Classifier, ModelSpec, Served
from shared.messages import ModelInfo

if TYPE_CHECKING:  # ONNX runtimes (and numpy) load only when an ONNX model is configured
    from edge_agent.runtimes.ort_perception import OrtPerceptionRuntime

log = logging.getLogger(__name__)
_Spec = TypeVar("_Spec", ModelConfig, PerceptionModelConfig)
_Loaded = TypeVar("_Loaded")
# Seconds a runtime replaced by an update stays open for requests that already picked it.
RETIRE_GRACE_S = 5.0


class SlotSource(Protocol):
    """Where an update installed a model (the update manager), asked at start."""

    def model_path(self, name: str) -> Path | None: ...

    def start_failed(self, name: str, reason: str) -> Path | None: ...


class ModelRegistry:
    """Loaded runtimes by name. ``load_all()`` at start, ``swap()`` for updates, ``close()``."""

    def __init__(
        self,
        config: AgentConfig,
        profile: HardwareProfile,
        *,
        on_load_failed: Callable[[str, str], None],
        stopping: threading.Event,
    ) -> None:
        self.config = config
        self.profile = profile
        self.chat: dict[str, ChatRuntime] = {}
        self.perception: dict[str, OrtPerceptionRuntime] = {}
        self.hashes: dict[str, str] = {}
        self.load_errors: dict[str, str] = {}
        # Alias -> the chat model it names, or "auto" (validated with the config).
        self.aliases = alias_targets(
            config.models, [p.name for p in config.perception], config.routing.model_aliases
        )
        self._on_load_failed = on_load_failed
        self._stopping = stopping

    # --- opening (warm, not yet served) ---------------------------------------------------
    def open_any(self, model: ModelSpec) -> tuple[Served, str]:
        """Load and warm a chat or perception model without serving it (for updates)."""
        if isinstance(model, PerceptionModelConfig):
            return self.open_classifier(model)
        return self.open_chat(model)

    def open_chat(self, model: ModelConfig) -> tuple[ChatRuntime, str]:
        """Load and warm ``model`` without serving it: (runtime, sha256 of its files)."""
        return factory.open_chat(model, self.profile)

    def open_classifier(self, model: PerceptionModelConfig) -> "tuple[OrtPerceptionRuntime, str]":
        """Load and warm the classifier ``model`` without serving it: (runtime, sha256)."""
        return factory.open_classifier(model, self.profile)

    # --- serving ----------------------------------------------------------------------------
    def load_all(self, slots: SlotSource | None) -> None:
        """Load and warm every configured model; a failure marks that model, never crashes."""
        for model in self.config.models:
            runtime = self._start_model(model, self.open_chat, slots)
            if runtime is not None:
                self.chat[model.name] = runtime
        for classifier in self.config.perception:
            loaded = self._start_model(classifier, self.open_classifier, slots)
            if loaded is not None:
                self.perception[classifier.name] = loaded

    def _start_model(
        self,
        configured: _Spec,
        open_: Callable[[_Spec], tuple[_Loaded, str]],
        slots: SlotSource | None,
    ) -> _Loaded | None:
        """Load a configured model at start, from its active slot when an update installed
        it; a slot on trial that does not load is rolled back and the previous one loaded.
        None (and a recorded load error) when nothing loads."""
        started = time.perf_counter()
        slot_path = slots.model_path(configured.name) if slots else None
        try:
            runtime, sha256 = open_(
                configured.model_copy(update={"path": slot_path or configured.path})
            )
        except RuntimeLoadError as e:
            fallback = slots.start_failed(configured.name, str(e)) if slots else None
            if fallback is None:
                self._load_failed(configured.name, str(e))
                return None
            try:
                runtime, sha256 = open_(configured.model_copy(update={"path": fallback}))
            except RuntimeLoadError as again:
                self._load_failed(configured.name, str(again))
                return None
        self.hashes[configured.name] = sha256
        log.info(
            "model %s loaded and warm in %.1fs", configured.name, time.perf_counter() - started
        )
        return runtime

    def _load_failed(self, name: str, reason: str) -> None:
        self.load_errors[name] = reason
        log.error("model %s not loaded: %s", name, reason)
        self._on_load_failed(name, reason)

    def swap(self, name: str, runtime: Served, sha256: str) -> None:
        """Serve ``runtime`` (a chat runtime or a classifier) as ``name`` from the next
        request on (an update's hot swap); the runtime it replaces is closed once the
        requests already on it are done."""
        old: Served | None
        if isinstance(runtime, Classifier):
            from edge_agent.runtimes.ort_perception import OrtPerceptionRuntime

            if not isinstance(runtime, OrtPerceptionRuntime):
                raise TypeError(f"perception model {name} must run on OrtPerceptionRuntime")
            old = self.perception.get(name)
            self.perception[name] = runtime
        else:
            old = self.chat.get(name)
            self.chat[name] = runtime
        self.hashes[name] = sha256
        self.load_errors.pop(name, None)
        if old is not None:
            threading.Thread(
                target=self._retire, args=(old,), name=f"retire-{name}", daemon=True
            ).start()

    def _retire(self, runtime: Served) -> None:
        # All runtimes serialize their calls (one worker thread or one lock), so close()
        # waits for every request already handed to them. The pause covers a request that
        # looked the old runtime up just before the swap but has not called it yet.
        self._stopping.wait(RETIRE_GRACE_S)
        try:
            runtime.close()
        except Exception:  # a failing close must not take the agent down
            log.exception("closing the replaced runtime failed")

    # --- lookup -----------------------------------------------------------------------------
    def default_chat(self) -> str | None:
        """The chat model a request that names none gets (the first configured)."""
        return self.config.models[0].name if self.config.models else None

    def resolve(self, requested: str) -> str | None:
        """The chat model a request's model name stands for (an alias resolved), ``auto``,
        or None when it names no local model."""
        if requested == AUTO_MODEL or requested in self.chat or requested in self.load_errors:
            return requested
        if any(m.name == requested for m in self.config.models):
            return requested
        return self.aliases.get(requested)

    def auto_chat(self) -> str | None:
        """The local model ``auto`` uses: the first configured chat model that is loaded,
        else the default (whose load error then marks the local tier down)."""
        loaded = (m.name for m in self.config.models if m.name in self.chat)
        return next(loaded, self.default_chat())

    def listed(self) -> list[tuple[str, str | None]]:
        """What ``GET /v1/models`` lists, as (id, alias_for): each loaded chat model
        (alias_for None), each alias of a loaded model or of auto, then ``auto``."""
        entries: list[tuple[str, str | None]] = [(name, None) for name in self.chat]
        entries += [
            (alias, target)
            for alias, target in self.aliases.items()
            if target == AUTO_MODEL or target in self.chat
        ]
        return [*entries, (AUTO_MODEL, AUTO_MODEL)]

    @property
    def local_tier_healthy(self) -> bool:
        return bool(self.chat) and not self.load_errors

    def infos(self) -> list[ModelInfo]:
        """Every configured model: its runtime, hash, and whether it loaded (or why not)."""
        return [
            ModelInfo(
                name=m.name,
                runtime=m.runtime,
                sha256=self.hashes.get(m.name),
                loaded=m.name in self.chat,
                error=self.load_errors.get(m.name),
            )
            for m in self.config.models
        ] + [
            ModelInfo(
                name=p.name,
                runtime="onnxruntime",
                sha256=self.hashes.get(p.name),
                loaded=p.name in self.perception,
                error=self.load_errors.get(p.name),
            )
            for p in self.config.perception
        ]

    def close(self) -> None:
        for runtime in self.chat.values():
            runtime.close()
        for classifier in self.perception.values():
            classifier.close()
