"""Pure update decisions: what the device accepts, refuses, retries or rolls back.

Nothing here does I/O or reads a clock: the TUF client, the downloader, the slot store and
the update manager hand in bytes counts, digests, expiry times and ``now``, and act on the
answer. The error family below is what every part of ``edge_agent.updates`` raises for bad
remote input; each error says which reported status and event outcome it leads to.
"""

import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

Status = Literal[
    "active",
    "downloading",
    "installing",
    "failed",
    "rolled_back",
    "refused",
    "metadata_expired",
]
Outcome = Literal["installed", "failed", "rolled_back", "refused", "metadata_expired"]
Runtime = Literal["llama.cpp", "ort-genai", "onnx"]
RUNTIMES: tuple[Runtime, ...] = ("llama.cpp", "ort-genai", "onnx")
# Chat models (config ``models``) run on these; ``onnx`` is a perception classifier
# (config ``perception``).
CHAT_RUNTIMES: tuple[Runtime, ...] = ("llama.cpp", "ort-genai")


def model_kind(runtime: str) -> str:
    """The kind of model a runtime serves, as the agent config groups them."""
    return "chat" if runtime in CHAT_RUNTIMES else "perception"


def status_for(outcome: Outcome | None) -> Status:
    """The reported status an event outcome leaves behind (None: still trying)."""
    if outcome is None:
        return "downloading"
    if outcome == "installed":
        return "active"
    return outcome


def disabled_status(wanted: Mapping[str, Any]) -> dict[str, Any]:
    """The reported ``model`` of an agent with updates disabled that was asked for one."""
    return {
        "name": wanted.get("name"),
        "target": None,
        "version": None,
        "sha256": None,
        "slot": None,
        "status": "refused",
        "error": "model updates are disabled on this device (updates.enabled is false)",
        "desired_target": wanted.get("target"),
        "rollout": wanted.get("rollout"),
        "installed_at": None,
        "confirmed": True,
    }


# Roles whose expiry freezes the device when it cannot fetch fresh copies (root expiring
# only matters once a newer root must be fetched, which needs the network anyway).
EXPIRING_ROLES = ("timestamp", "snapshot", "targets")


# --- the error family ------------------------------------------------------------------


class UpdateError(Exception):
    """An update did not happen. ``outcome`` is the event outcome (None: not an outcome yet,
    just a pause); ``retry`` says whether trying again later can help."""

    outcome: ClassVar[Outcome | None] = "failed"
    retry: ClassVar[bool] = False


class UpdateRefused(UpdateError):
    """Signed metadata or the artifact failed verification, or the target does not fit this
    device: never installed, never retried for the same desired target."""

    outcome: ClassVar[Outcome | None] = "refused"


class LengthExceeded(UpdateRefused):
    """The server sent more bytes than the signed length (endless-data attack)."""


class HashMismatch(UpdateRefused):
    """The artifact's length or SHA-256 differs from the signed target (tampered artifact)."""


class IncompatibleTarget(UpdateRefused):
    """The target's custom metadata rules this device out (runtime, class, agent version)."""


class MetadataExpired(UpdateError):
    """The trusted metadata is expired and no fresh copy can be had: keep the current model,
    refuse installs, try again later (the repository may come back or re-sign)."""

    outcome: ClassVar[Outcome | None] = "metadata_expired"
    retry: ClassVar[bool] = True


class RepositoryUnreachable(UpdateError):
    """The controller or mirror cannot be reached right now; a partial download is kept."""

    outcome: ClassVar[Outcome | None] = None
    retry: ClassVar[bool] = True


class InstallFailed(UpdateError):
    """The verified artifact did not load or failed its health check on this device."""

    outcome: ClassVar[Outcome | None] = "failed"


# --- desired state ---------------------------------------------------------------------

_TARGET_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def check_target_path(path: str) -> str:
    """A TUF target path the device will ask a mirror for: relative, no ``..``, no oddities."""
    parts = path.split("/")
    if not 1 <= len(parts) <= 8 or len(path) > 512:
        raise ValueError("target must be 1-8 path segments, at most 512 characters")
    for part in parts:
        if part in (".", "..") or not _TARGET_PART.match(part):
            raise ValueError(f"target segment {part!r} is not allowed")
    return path


@dataclass(frozen=True, slots=True)
class DesiredModel:
    """The desired shadow key ``model`` (contract 2), validated."""

    name: str
    target: str
    version: str
    rollout: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "target": self.target,
            "version": self.version,
            "rollout": self.rollout,
        }


@dataclass(frozen=True, slots=True)
class FactoryModel:
    """The desired ``model`` marker ``{"name": ..., "factory": true}``: run the configured
    (factory) path of the model ``name`` again. A rollout sends it to roll back a device
    whose previous model was the configured one (a JSON merge patch cannot send a null:
    it would delete the key)."""

    name: str

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "factory": True, "rollout": None}


def parse_desired_model(value: Any) -> DesiredModel | FactoryModel | None:
    """Validate the desired ``model`` value; None means "no model update wanted"."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("must be an object or null")
    unknown = set(value) - {"name", "target", "version", "rollout", "factory"}
    if unknown:
        raise ValueError(f"unknown keys: {', '.join(sorted(unknown))}")
    name, target, version = value.get("name"), value.get("target"), value.get("version")
    rollout, factory = value.get("rollout"), value.get("factory")
    if not isinstance(name, str) or not 1 <= len(name) <= 128:
        raise ValueError("name must be a string of 1-128 characters")
    if factory is not None and not isinstance(factory, bool):
        raise ValueError("factory must be true, false or null")
    if rollout is not None and (isinstance(rollout, bool) or not isinstance(rollout, int)):
        raise ValueError("rollout must be an integer or null")
    if factory:
        if target is not None or version is not None:
            raise ValueError("factory (the configured model) takes no target or version")
        return FactoryModel(name=name)
    if not isinstance(target, str):
        raise ValueError("target must be a string")
    check_target_path(target)
    if not isinstance(version, str) or not 1 <= len(version) <= 64:
        raise ValueError("version must be a string of 1-64 characters")
    return DesiredModel(name=name, target=target, version=version, rollout=rollout)


# --- the target's custom metadata and compatibility -----------------------------------


@dataclass(frozen=True, slots=True)
class TargetMeta:
    """The ``custom["edgefleet"]`` block of a model target (contract 1)."""

    model: str
    version: str
    runtime: Runtime
    quantization: str
    device_classes: tuple[str, ...]
    min_agent_version: str | None
    expected_latency_ms: float | None


def parse_target_meta(custom: Any) -> TargetMeta:
    """Read a target's custom metadata; a target without a usable block is refused."""
    block = custom.get("edgefleet") if isinstance(custom, dict) else None
    if not isinstance(block, dict):
        raise UpdateRefused("target has no edgefleet custom metadata")

    def text(key: str, *, required: bool = True) -> str | None:
        value = block.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value:
            raise UpdateRefused(f"target custom metadata: {key} must be a non-empty string")
        return value

    runtime = block.get("runtime")
    if runtime not in RUNTIMES:
        raise UpdateRefused(f"target custom metadata: unknown runtime {runtime!r}")
    classes = block.get("device_classes", [])
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise UpdateRefused("target custom metadata: device_classes must be a list of strings")
    latency = block.get("expected_latency_ms")
    if latency is not None and (
        isinstance(latency, bool)
        or not isinstance(latency, int | float)
        or not math.isfinite(latency)
        or latency <= 0
    ):
        raise UpdateRefused("target custom metadata: expected_latency_ms must be positive")
    return TargetMeta(
        model=text("model") or "",
        version=text("version") or "",
        runtime=runtime,
        quantization=str(block.get("quantization") or ""),
        device_classes=tuple(classes),
        min_agent_version=text("min_agent_version", required=False),
        expected_latency_ms=float(latency) if latency is not None else None,
    )


MAX_VERSION_DIGITS = 18  # fits an int64; no release number is longer


def version_key(version: str) -> tuple[int, ...]:
    """Numeric release segments of a version (``"1.10.0rc1"`` -> ``(1, 10, 0)``), trailing
    zeros dropped so ``1.2`` equals ``1.2.0``; pre-release suffixes are ignored."""
    parts: list[int] = []
    for piece in version.strip().lstrip("vV").split("."):
        digits = re.match(r"\d+", piece)
        # A version from signed metadata still is outside input: int() of 4,301+ digits
        # raises ValueError, so a segment longer than any real version number ends it.
        if digits is None or len(digits.group()) > MAX_VERSION_DIGITS:
            break
        parts.append(int(digits.group()))
        if len(digits.group()) != len(piece):
            break
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    """What the device is, for compatibility checks."""

    device_class: str
    agent_version: str
    runtimes: tuple[str, ...]  # runtime libraries importable here


def check_compatibility(
    meta: TargetMeta, *, desired: DesiredModel, configured_runtime: str, device: DeviceFacts
) -> None:
    """Raise ``IncompatibleTarget`` with every reason this device cannot run the target."""
    reasons: list[str] = []
    if meta.version != desired.version:
        reasons.append(
            f"target is version {meta.version!r}, the desired state asks for {desired.version!r}"
        )
    if meta.runtime != configured_runtime:
        target_kind, configured_kind = model_kind(meta.runtime), model_kind(configured_runtime)
        if target_kind != configured_kind:
            reasons.append(
                f"target runtime {meta.runtime} (a {target_kind} model) differs from the "
                f"configured {configured_runtime}: {desired.name} is a {configured_kind} model"
            )
        else:
            reasons.append(
                f"target runtime {meta.runtime} differs from the configured {configured_runtime}"
            )
    if meta.runtime not in device.runtimes:
        reasons.append(f"runtime {meta.runtime} is not available on this device")
    if meta.device_classes and device.device_class not in meta.device_classes:
        reasons.append(
            f"device class {device.device_class} is not in {', '.join(meta.device_classes)}"
        )
    if meta.min_agent_version is not None and version_key(device.agent_version) < version_key(
        meta.min_agent_version
    ):
        reasons.append(
            f"needs agent {meta.min_agent_version} or newer, this is {device.agent_version}"
        )
    if reasons:
        raise IncompatibleTarget("; ".join(reasons))


def check_declared_length(length: int, *, max_bytes: int) -> None:
    """Refuse a target larger than the device accepts (before a byte is downloaded)."""
    if length < 0:
        raise UpdateRefused(f"target length {length} is negative")
    if length > max_bytes:
        raise UpdateRefused(f"target is {length} bytes, more than max_artifact_bytes {max_bytes}")


# --- artifact verification -------------------------------------------------------------


def check_received(received: int, declared: int) -> None:
    """Called as bytes arrive: more than the signed length is refused at once."""
    if received > declared:
        raise LengthExceeded(
            f"server sent more than the signed length of {declared} bytes (at least {received})"
        )


def check_digest(*, received: int, declared: int, sha256: str, expected_sha256: str) -> None:
    """The finished artifact must have exactly the signed length and SHA-256."""
    if received != declared:
        raise HashMismatch(f"artifact is {received} bytes, the signed length is {declared}")
    if sha256.lower() != expected_sha256.lower():
        raise HashMismatch(
            f"artifact sha256 {sha256[:16]}... differs from the signed {expected_sha256[:16]}..."
        )


# --- the offline policy ----------------------------------------------------------------


def expired_roles(expiries: Mapping[str, float], now: float) -> list[str]:
    """The roles (of ``EXPIRING_ROLES``) whose locally trusted copy has expired at ``now``."""
    return [role for role in EXPIRING_ROLES if role in expiries and expiries[role] <= now]


def offline_error(reason: str, expiries: Mapping[str, float], now: float) -> UpdateError:
    """What a failed refresh means when the repository cannot be reached.

    With expired trusted metadata the device must not install anything (it cannot know
    what the repository would say today): ``MetadataExpired``. Otherwise the outage is
    just a pause: ``RepositoryUnreachable``. Either way the current model keeps serving.
    """
    expired = expired_roles(expiries, now)
    if expired:
        return MetadataExpired(
            f"controller unreachable ({reason}) and the trusted {', '.join(expired)} "
            "metadata has expired: installs refused until fresh metadata is fetched"
        )
    return RepositoryUnreachable(f"controller unreachable: {reason}")


# --- the health check ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SmokeResult:
    """One smoke inference on a candidate model."""

    text: str
    completion_tokens: int
    latency_ms: float


def latency_budget_ms(meta: TargetMeta | None, configured_ms: float | None) -> float | None:
    """The target's expected latency when it states one, else the configured budget."""
    if meta is not None and meta.expected_latency_ms is not None:
        return meta.expected_latency_ms
    return configured_ms


def _over_budget(latency_ms: float, budget_ms: float | None) -> str | None:
    if budget_ms is not None and latency_ms > budget_ms:
        return f"smoke inference took {latency_ms:.0f} ms, over the {budget_ms:.0f} ms budget"
    return None


def health_problem(result: SmokeResult, budget_ms: float | None) -> str | None:
    """Why the smoke inference of a chat model is not healthy, or None when it is.

    Sane output: at least one generated token, some visible text, no replacement
    characters (bytes that do not decode) and no control characters except whitespace.
    """
    if result.completion_tokens < 1:
        return "the model generated no tokens"
    if not result.text.strip():
        return "the model generated only empty or blank text"
    if "\ufffd" in result.text:
        return "the output contains undecodable bytes"
    controls = [c for c in result.text if unicodedata.category(c) == "Cc" and c not in "\t\n\r"]
    if controls:
        return f"the output contains {len(controls)} control characters"
    return _over_budget(result.latency_ms, budget_ms)


@dataclass(frozen=True, slots=True)
class ScoresSmoke:
    """One smoke inference on a candidate perception model (a neutral input)."""

    rows: tuple[tuple[float, ...], ...]  # raw scores, one row per sample of the input batch
    expected_classes: int | None  # configured labels, else the model's declared classes
    latency_ms: float


def scores_problem(result: ScoresSmoke, budget_ms: float | None) -> str | None:
    """Why the smoke inference of a classifier is not healthy, or None when it is.

    Sane output: at least one row of scores, each with one score per class (when the class
    count is known) and every score finite (no NaN, no infinity).
    """
    if not result.rows or not all(result.rows):
        return "the model returned no scores"
    if result.expected_classes is not None:
        wrong = {len(row) for row in result.rows if len(row) != result.expected_classes}
        if wrong:
            return (
                f"the model returned {min(wrong)} scores per input, "
                f"{result.expected_classes} classes expected"
            )
    bad = sum(1 for row in result.rows for score in row if not math.isfinite(score))
    if bad:
        return f"the output has {bad} non-finite scores (NaN or infinity)"
    return _over_budget(result.latency_ms, budget_ms)


# --- boots during a trial (crash-loop detection) ----------------------------------------

BootAction = Literal["normal", "trial", "rollback"]


def boot_action(*, trial: bool, boots: int, max_boots: int) -> tuple[BootAction, int]:
    """What an agent start does with the slots, and the new boot counter.

    A switched-to slot is on trial until confirmed. The hot swap counts as its first run;
    each start while still on trial counts one more; the start that would be run number
    ``max_boots + 1`` rolls back instead (so ``max_boots`` runs without a confirmation).
    """
    if not trial:
        return "normal", 0
    boots += 1
    if boots >= max_boots:
        return "rollback", boots
    return "trial", boots


# --- what to do about the desired model now --------------------------------------------

Step = Literal["idle", "current", "wait_trial", "rejected", "wait_retry", "install"]


def next_step(
    desired: DesiredModel | None,
    *,
    active_target: str | None,
    trial: bool,
    rejected: bool,
    retry_at: float | None,
    now: float,
    reverting: bool = False,
) -> Step:
    """The manager's next move for one desired model, from the slot state and ``now``.

    ``reverting``: the desired target is the one the trial replaced (a rollback), which
    must not wait for the trial to settle.
    """
    if desired is None:
        return "idle"
    if active_target == desired.target:
        return "current"
    if trial and not reverting:
        return "wait_trial"  # one change at a time: the running trial must settle first
    if rejected:
        return "rejected"
    if retry_at is not None and now < retry_at:
        return "wait_retry"
    return "install"
