"""The device side of the shadow: apply newer desired documents, report what is in effect.

Pure apart from the JSON file it persists: which desired version was applied, the
settings in effect, and the reported version (monotonic, so the controller can ignore
re-delivered or reordered reports).
"""

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.updates.decisions import parse_desired_model
from shared.files import write_atomic
from shared.messages import Desired, Reported
from shared.shadow import is_newer

JsonObject = dict[str, Any]


def _interval(low: float, high: float) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("must be a number")
        if not low <= float(value) <= high:
            raise ValueError(f"must be between {low} and {high}")
        return float(value)

    return check


def _labels(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > 32:
        raise ValueError("must be an object of at most 32 labels")
    if not all(
        isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 128
        for k, v in value.items()
    ):
        raise ValueError("labels map short strings to short strings")
    return dict(value)


def _quarantine(value: Any) -> dict[str, str] | None:
    """Set by the controller after a failed or missing attestation quote; while present
    the router refuses the cloud tier (see ``Agent.tier_veto``)."""
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or set(value) != {"reason"}
        or not isinstance(value["reason"], str)
        or len(value["reason"]) > 512
    ):
        raise ValueError('must be {"reason": <text of at most 512 characters>} or null')
    return {"reason": value["reason"]}


def _model(value: Any) -> dict[str, Any] | None:
    """The model the controller wants installed (contract 2), or the factory marker
    ``{"name": ..., "factory": true}`` (back to that model's configured path); the update
    manager acts on it and reports its own ``model`` status, so this key is never echoed
    back as is."""
    desired = parse_desired_model(value)
    return desired.as_json() if desired is not None else None


# The settings the controller may change remotely, each with its validator.
SETTABLE: dict[str, Callable[[Any], Any]] = {
    "heartbeat_interval_s": _interval(0.5, 3600),
    "telemetry_interval_s": _interval(1, 86400),
    "labels": _labels,
    "quarantine": _quarantine,
    "model": _model,
}
# Desired keys that are requests, not settings: the reported document carries what the
# device made of them (from ``reported_extra``) instead of the request itself.
DESIRED_ONLY = frozenset({"model"})


@dataclass(frozen=True, slots=True)
class Applied:
    """The outcome of a desired document: the settings now in effect and what was refused."""

    settings: JsonObject
    rejected: dict[str, str]


def evaluate(desired: JsonObject, defaults: JsonObject) -> Applied:
    """Settings in effect under ``desired``: defaults overlaid with the valid desired keys."""
    settings = dict(defaults)
    rejected: dict[str, str] = {}
    for key, value in desired.items():
        check = SETTABLE.get(key)
        if check is None:
            rejected[key] = "not a setting this agent supports"
            continue
        try:
            settings[key] = check(value)
        except ValueError as e:
            rejected[key] = str(e)
    return Applied(settings, rejected)


class DeviceShadow:
    """Persistent device-side shadow state."""

    def __init__(
        self,
        path: Path,
        *,
        device_id: str,
        defaults: JsonObject,
        reported_extra: Callable[[], JsonObject] | None = None,
    ) -> None:
        self._path = path
        self._device_id = device_id
        self._defaults = dict(defaults)
        # Extra reported keys from other parts of the agent (the update manager's "model").
        self._reported_extra = reported_extra
        self._lock = threading.Lock()
        raw: JsonObject = {}
        if path.is_file():
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                raise RuntimeError(f"shadow file {path} is unreadable: {e}") from e
        self.applied_desired_version: int | None = raw.get("applied_desired_version")
        self.reported_version: int = int(raw.get("reported_version", 0))
        self._desired: JsonObject = raw.get("desired", {})
        self.current = evaluate(self._desired, self._defaults)

    def _save(self) -> None:
        body = {
            "applied_desired_version": self.applied_desired_version,
            "reported_version": self.reported_version,
            "desired": self._desired,
        }
        write_atomic(self._path, json.dumps(body, sort_keys=True).encode())

    def apply(self, desired: Desired) -> Applied | None:
        """Apply ``desired`` if newer than what was applied; None when it changes nothing."""
        with self._lock:
            if not is_newer(desired.version, self.applied_desired_version):
                return None
            self.current = evaluate(desired.state, self._defaults)
            self._desired = dict(desired.state)
            self.applied_desired_version = desired.version
            self._save()
            return self.current

    def report(self) -> Reported:
        """The next reported document (its version is persisted before it is handed out)."""
        with self._lock:
            self.reported_version += 1
            self._save()
            state = {k: v for k, v in self.current.settings.items() if k not in DESIRED_ONLY}
            if self._reported_extra is not None:
                state.update(self._reported_extra())
            return Reported(
                device_id=self._device_id,
                version=self.reported_version,
                applied_desired_version=self.applied_desired_version or 0,
                state=state,
                rejected=dict(self.current.rejected),
            )
