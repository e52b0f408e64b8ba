"""A/B model slots for one model: which copy runs, which is on trial, which to fall back to.

Layout under ``state_dir/models/<model name>/``::

    slots.json   the state below, replaced atomically (temp file, fsync, os.replace, fsync dir)
    a/ b/        the two slots; a slot holds one installed artifact (a GGUF or .onnx file,
                 or the folder an ORT GenAI archive unpacked to)

The configured model path is slot ``factory`` until the first install. A new model goes
into the inactive slot and becomes active with one atomic rewrite of ``slots.json``; it is
then on *trial* until confirmed. Every agent start during a trial counts a boot; too many
boots without a confirmation means a crash loop, and the start rolls back by itself.
"""

import json
import logging
import os
import shutil
import tarfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from edge_agent.updates.decisions import InstallFailed, Outcome, boot_action
from shared.files import write_atomic
from shared.tar_guard import TarLimits, extract_checked

log = logging.getLogger(__name__)

SlotName = Literal["a", "b"]
ActiveName = Literal["a", "b", "factory"]
SLOT_NAMES: tuple[SlotName, SlotName] = ("a", "b")
FACTORY: ActiveName = "factory"
MAX_REJECTIONS = 32  # remembered refused/failed targets (oldest forgotten first)


@dataclass(frozen=True, slots=True)
class SlotRecord:
    """What an installed slot holds."""

    target: str
    version: str
    sha256: str
    length: int
    entry: str  # the model's path inside the slot folder (file or folder name)
    runtime: str
    installed_at: float
    rollout: int | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """A desired target this device will not try again (for the same rollout)."""

    target: str
    rollout: int | None
    outcome: Outcome
    reason: str
    at: float
    slot: str | None = None


@dataclass(slots=True)
class SlotsState:
    """The content of ``slots.json``."""

    active: ActiveName = FACTORY
    previous: ActiveName | None = None
    trial: bool = False
    boots: int = 0
    switched_at: float | None = None
    slots: dict[str, SlotRecord | None] = field(default_factory=lambda: {"a": None, "b": None})
    rejected: list[Rejection] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["version"] = 1
        return body

    @classmethod
    def from_json(cls, raw: Any) -> "SlotsState":
        if not isinstance(raw, dict) or raw.get("version") != 1:
            raise ValueError("not a version 1 slots document")
        slots = raw.get("slots") or {}
        state = cls(
            active=raw["active"],
            previous=raw.get("previous"),
            trial=bool(raw.get("trial", False)),
            boots=int(raw.get("boots", 0)),
            switched_at=raw.get("switched_at"),
            slots={n: SlotRecord(**slots[n]) if slots.get(n) else None for n in SLOT_NAMES},
            rejected=[Rejection(**r) for r in raw.get("rejected", [])],
        )
        if state.active not in (*SLOT_NAMES, FACTORY) or (
            state.active != FACTORY and state.slots[state.active] is None
        ):
            raise ValueError(f"active slot {state.active!r} has nothing installed")
        return state


def write_json_atomically(path: Path, body: dict[str, Any]) -> None:
    """Readers see the old file or the new one, never a mix, even across a power cut."""
    write_atomic(path, json.dumps(body, sort_keys=True, indent=1).encode())


class Slots:
    """The slot store of one model. Opening it is an agent start (it counts trial boots).

    Not thread-safe on its own: the update manager is its only writer, from one thread
    (and the agent's start-up, before that thread runs).
    """

    def __init__(
        self,
        root: Path,
        *,
        factory_path: Path,
        crash_loop_boots: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if crash_loop_boots < 1:
            raise ValueError("crash_loop_boots must be at least 1")
        self.root = root
        self.factory_path = factory_path
        self._clock = clock
        self._path = root / "slots.json"
        root.mkdir(parents=True, exist_ok=True)
        for name in SLOT_NAMES:
            (root / name).mkdir(exist_ok=True)
        self.state = self._load()
        # Set when this start rolled a trial back (the manager reports it).
        self.boot_rollback: Rejection | None = None
        action, boots = boot_action(
            trial=self.state.trial, boots=self.state.boots, max_boots=crash_loop_boots
        )
        if action == "trial":
            self.state.boots = boots
            self._save()
            log.warning("slot %s on trial: start %d without confirmation", self.active, boots)
        elif action == "rollback":
            self.boot_rollback = self.rollback(
                f"crash loop: {boots} starts without confirmation (limit {crash_loop_boots})"
            )

    def _load(self) -> SlotsState:
        if not self._path.exists():
            return SlotsState()
        try:
            return SlotsState.from_json(json.loads(self._path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as e:
            # Writes are atomic, so this is outside damage: keep the evidence, run factory.
            kept = self._path.with_name(f"slots.json.unreadable-{int(self._clock())}")
            os.replace(self._path, kept)
            log.error("slots file unreadable (%s); kept as %s, running factory model", e, kept)
            return SlotsState()

    def _save(self) -> None:
        write_json_atomically(self._path, self.state.to_json())

    # --- reading ---------------------------------------------------------------------------
    @property
    def active(self) -> ActiveName:
        return self.state.active

    @property
    def previous(self) -> ActiveName | None:
        return self.state.previous

    @property
    def trial(self) -> bool:
        return self.state.trial

    @property
    def boots(self) -> int:
        return self.state.boots

    def slot_dir(self, name: SlotName) -> Path:
        return self.root / name

    def record(self, name: ActiveName | None) -> SlotRecord | None:
        if name is None or name == FACTORY:
            return None
        return self.state.slots.get(name)

    def active_record(self) -> SlotRecord | None:
        return self.record(self.active)

    def active_path(self) -> Path:
        """Where the running model lives: the active slot's entry, or the configured path."""
        record = self.active_record()
        if self.active == FACTORY or record is None:
            return self.factory_path
        return self.root / self.active / record.entry

    def inactive(self) -> SlotName:
        """The slot a new model goes into (never the running one)."""
        return "b" if self.active == "a" else "a"

    def rejection(self, target: str, rollout: int | None) -> Rejection | None:
        for item in reversed(self.state.rejected):
            if item.target == target and item.rollout == rollout:
                return item
        return None

    # --- changing ---------------------------------------------------------------------------
    def prepare(self, name: SlotName, *, keep: str | None = None) -> Path:
        """Empty slot ``name`` for a new install (except the file ``keep``, a partial
        download to resume). Its record is dropped first, so a crash while the slot is
        half-written never leaves a record pointing at it."""
        if name == self.active:
            raise RuntimeError(f"slot {name} is active; install into {self.inactive()}")
        if self.state.slots.get(name) is not None or self.state.previous == name:
            self.state.slots[name] = None
            if self.state.previous == name:
                self.state.previous = None
            self._save()
        folder = self.slot_dir(name)
        for child in folder.iterdir():
            if child.name == keep:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        return folder

    def clear(self, name: SlotName) -> None:
        """Remove a failed candidate's files (never the active slot's)."""
        if name != self.active and self.state.slots.get(name) is None:
            self.prepare(name)

    def switch(self, name: SlotName, record: SlotRecord) -> None:
        """Make ``name`` active, on trial, in one atomic write."""
        if name == self.active:
            raise RuntimeError(f"slot {name} is already active")
        if not (self.root / name / record.entry).exists():
            raise RuntimeError(f"slot {name} has no {record.entry}")
        self.state.slots[name] = record
        self.state.previous = self.state.active
        self.state.active = name
        self.state.trial = True
        self.state.boots = 0
        self.state.switched_at = self._clock()
        self._save()

    def revert_to_factory(self) -> None:
        """Run the configured model again (the controller asked for no managed model)."""
        if self.state.active == FACTORY:
            return
        self.state.previous = self.state.active
        self.state.active = FACTORY
        self.state.trial = False
        self.state.boots = 0
        self.state.switched_at = self._clock()
        self._save()

    def confirm(self) -> None:
        """The trial slot stayed healthy: it is the one to keep."""
        if self.state.trial:
            self.state.trial = False
            self.state.boots = 0
            self._save()

    def rollback(self, reason: str) -> Rejection:
        """Go back to the previous slot and remember the trial target as rolled back."""
        failed_slot = self.state.active
        failed = self.active_record()
        back = self.state.previous or FACTORY
        if back != FACTORY and self.state.slots.get(back) is None:
            back = FACTORY  # the previous slot was reused since: the factory model is left
        self.state.active = back
        self.state.previous = None
        self.state.trial = False
        self.state.boots = 0
        self.state.switched_at = self._clock()
        rejection = Rejection(
            target=failed.target if failed else "",
            rollout=failed.rollout if failed else None,
            outcome="rolled_back",
            reason=reason,
            at=self._clock(),
            slot=failed_slot,
        )
        self._remember(rejection)
        self._save()
        log.error("rolled back from slot %s to %s: %s", failed_slot, back, reason)
        return rejection

    def reject(
        self, target: str, rollout: int | None, outcome: Outcome, reason: str, slot: str | None
    ) -> Rejection:
        """Remember that ``target`` (for ``rollout``) must not be tried again."""
        rejection = Rejection(target, rollout, outcome, reason, self._clock(), slot)
        self._remember(rejection)
        self._save()
        return rejection

    def _remember(self, rejection: Rejection) -> None:
        kept = [
            r
            for r in self.state.rejected
            if (r.target, r.rollout) != (rejection.target, rejection.rollout)
        ]
        self.state.rejected = [*kept, rejection][-MAX_REJECTIONS:]


# --- putting an artifact into a slot ----------------------------------------------------

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def unpack_archive(archive: Path, into: Path, *, max_bytes: int) -> str:
    """Unpack an ORT GenAI model archive into ``into``; returns the model folder's name.

    ``shared.tar_guard`` checks every member first (no absolute path, no ``..``, no link
    out of the folder, no device file, at most ``TarLimits.max_members`` members (the
    controller's publish check uses the same default), the unpacked total at most
    ``max_bytes``) and unpacks with ``tarfile``'s ``data`` filter.
    The archive may hold the model files at its top level or inside one folder.
    """
    if not archive.name.endswith(ARCHIVE_SUFFIXES):
        raise InstallFailed(f"an ort-genai artifact must be a {'/'.join(ARCHIVE_SUFFIXES)} file")
    folder = into / "model"
    limits = TarLimits(max_member_bytes=max_bytes, max_total_bytes=max_bytes)
    try:
        folder.mkdir()
        extract_checked(archive, folder, limits=limits)
    except (tarfile.TarError, OSError) as e:
        raise InstallFailed(f"archive {archive.name} could not be unpacked: {e}") from e
    archive.unlink()
    children = list(folder.iterdir())
    if len(children) == 1 and children[0].is_dir():
        return f"model/{children[0].name}"
    return "model"


def artifact_name(target: str) -> str:
    """The file name an artifact gets in its slot (the target's last path segment)."""
    return target.rsplit("/", 1)[-1]
