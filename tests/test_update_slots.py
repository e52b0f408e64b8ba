"""A/B slots: the atomic switch, trial boots, crash-loop rollback and safe unpacking."""

import io
import json
import tarfile
import threading
from pathlib import Path

import pytest

from edge_agent.updates.decisions import DesiredModel, InstallFailed, boot_action, next_step
from edge_agent.updates.slots import SlotRecord, Slots, unpack_archive


def record(target: str = "m/2/model.gguf", entry: str = "model.gguf") -> SlotRecord:
    return SlotRecord(
        target=target,
        version=target.split("/")[1],
        sha256="ab" * 32,
        length=5,
        entry=entry,
        runtime="llama.cpp",
        installed_at=1.0,
        rollout=None,
    )


def open_slots(root: Path, factory: Path, boots: int = 3) -> Slots:
    """One agent start's view of the slots."""
    return Slots(root, factory_path=factory, crash_loop_boots=boots, clock=lambda: 1000.0)


def install(slots: Slots, target: str = "m/2/model.gguf") -> str:
    """Put a file into the inactive slot and switch to it; returns the slot name."""
    name = slots.inactive()
    folder = slots.prepare(name)
    (folder / "model.gguf").write_bytes(target.encode())
    slots.switch(name, record(target))
    return name


@pytest.fixture
def factory(tmp_path: Path) -> Path:
    path = tmp_path / "factory.gguf"
    path.write_bytes(b"factory")
    return path


def test_fresh_slots_serve_the_configured_model(tmp_path: Path, factory: Path) -> None:
    """Before any install the configured path is the 'factory' slot; installs go to a."""
    slots = open_slots(tmp_path / "slots", factory)
    assert (slots.active, slots.active_path(), slots.inactive()) == ("factory", factory, "a")
    assert not slots.trial


def test_switch_alternates_slots_and_survives_restarts(tmp_path: Path, factory: Path) -> None:
    """Each install goes to the slot not running, and a restart sees the switched state."""
    root = tmp_path / "slots"
    slots = open_slots(root, factory)
    assert install(slots, "m/2/model.gguf") == "a"
    assert (slots.active, slots.previous, slots.trial) == ("a", "factory", True)
    slots.confirm()
    assert install(slots, "m/3/model.gguf") == "b"
    slots.confirm()
    again = open_slots(root, factory)
    assert (again.active, again.previous, again.trial) == ("b", "a", False)
    assert again.active_path().read_bytes() == b"m/3/model.gguf"


@pytest.mark.parametrize("limit", [1, 3], ids=["limit-1", "limit-3"])
def test_crash_loop_rolls_back_after_the_boot_limit(
    tmp_path: Path, factory: Path, limit: int
) -> None:
    """Reopened (agent restarts) without a confirmation, the trial slot gets ``limit``
    runs in all; the restart after that rolls back to the previous slot on its own."""
    root = tmp_path / "slots"
    first = open_slots(root, factory, limit)
    install(first, "m/2/model.gguf")
    install_target = first.active_record()
    assert install_target is not None
    for boot in range(1, limit):
        restart = open_slots(root, factory, limit)
        assert restart.active == "a" and restart.boots == boot and restart.boot_rollback is None
    final = open_slots(root, factory, limit)
    assert (final.active, final.trial, final.active_path()) == ("factory", False, factory)
    assert final.boot_rollback is not None
    assert final.boot_rollback.target == "m/2/model.gguf"
    assert final.boot_rollback.outcome == "rolled_back"
    assert "crash loop" in final.boot_rollback.reason
    assert final.rejection("m/2/model.gguf", None) is not None
    assert open_slots(root, factory, limit).active == "factory"  # stays rolled back


def test_confirmed_slot_is_never_rolled_back_by_restarts(tmp_path: Path, factory: Path) -> None:
    """Once confirmed, any number of restarts keep the slot."""
    root = tmp_path / "slots"
    slots = open_slots(root, factory, 2)
    install(slots)
    slots.confirm()
    for _ in range(5):
        assert open_slots(root, factory, 2).active == "a"


def test_rollback_returns_to_the_previous_installed_slot(tmp_path: Path, factory: Path) -> None:
    """With two installs, a crash-looping b goes back to a (not to factory)."""
    root = tmp_path / "slots"
    slots = open_slots(root, factory, 1)
    install(slots, "m/2/model.gguf")
    slots.confirm()
    install(slots, "m/3/model.gguf")
    after = open_slots(root, factory, 1)
    assert after.active == "a" and after.active_path().read_bytes() == b"m/2/model.gguf"


def test_switch_is_atomic_for_readers(tmp_path: Path, factory: Path) -> None:
    """A reader polling slots.json during hundreds of switches always parses a complete
    document naming an installed slot, and no temporary files are left behind."""
    root = tmp_path / "slots"
    slots = open_slots(root, factory)
    stop = threading.Event()
    seen: list[str] = []
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                body = json.loads((root / "slots.json").read_text())
            except FileNotFoundError:
                continue
            except ValueError as e:
                problems.append(str(e))
                continue
            seen.append(body["active"])
            if body["active"] != "factory" and body["slots"][body["active"]] is None:
                problems.append(f"active {body['active']} without a record")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(150):
            install(slots, f"m/{i + 2}/model.gguf")
            slots.confirm()
    finally:
        stop.set()
        thread.join()
    assert problems == []
    assert {"a", "b"} <= set(seen)
    assert sorted(p.name for p in root.iterdir()) == ["a", "b", "slots.json"]


def test_unreadable_slots_file_falls_back_to_factory(tmp_path: Path, factory: Path) -> None:
    """Outside damage to slots.json does not stop the agent: it runs the configured model
    and keeps the damaged file for inspection."""
    root = tmp_path / "slots"
    install(open_slots(root, factory))
    (root / "slots.json").write_text("{not json")
    slots = open_slots(root, factory)
    assert slots.active == "factory" and slots.active_path() == factory
    assert [p.name for p in root.glob("slots.json.unreadable-*")] == ["slots.json.unreadable-1000"]


def test_prepare_never_touches_the_running_slot(tmp_path: Path, factory: Path) -> None:
    """The active slot cannot be emptied; preparing the other keeps a resumable partial."""
    slots = open_slots(tmp_path / "slots", factory)
    install(slots)
    with pytest.raises(RuntimeError, match="active"):
        slots.prepare("a")
    folder = slots.slot_dir("b")
    (folder / ".abc.partial").write_bytes(b"half")
    (folder / "old.gguf").write_bytes(b"old")
    slots.prepare("b", keep=".abc.partial")
    assert [p.name for p in folder.iterdir()] == [".abc.partial"]


def _tar(members: dict[str, bytes], *, link: tuple[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link is not None:
            info = tarfile.TarInfo(link[0])
            info.type = tarfile.SYMTYPE
            info.linkname = link[1]
            tar.addfile(info)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("members", "link", "entry"),
    [
        pytest.param({"genai_config.json": b"{}"}, None, "model", id="flat"),
        pytest.param({"tiny/genai_config.json": b"{}"}, None, "model/tiny", id="one-folder"),
    ],
)
def test_unpack_archive_layouts(
    tmp_path: Path, members: dict[str, bytes], link: None, entry: str
) -> None:
    """Model files at the archive's top level or inside one folder are both found."""
    archive = tmp_path / "model.tar"
    archive.write_bytes(_tar(members))
    assert unpack_archive(archive, tmp_path, max_bytes=1000) == entry
    assert (tmp_path / entry / "genai_config.json").read_bytes() == b"{}"
    assert not archive.exists()


@pytest.mark.parametrize(
    ("members", "link", "problem"),
    [
        pytest.param({"../evil": b"x"}, None, "could not be unpacked", id="path-traversal"),
        pytest.param({}, ("escape", "/etc/passwd"), "could not be unpacked", id="symlink-out"),
        pytest.param({"big": b"x" * 2000}, None, "2000 bytes, over 1000", id="too-big"),
        pytest.param(
            {"a": b"x" * 600, "b": b"x" * 600}, None, "more than 1000 bytes", id="total-too-big"
        ),
        pytest.param({"/tmp-evil-file": b"x"}, None, "absolute path", id="absolute"),
    ],
)
def test_unpack_archive_refuses_unsafe_archives(
    tmp_path: Path,
    members: dict[str, bytes],
    link: tuple[str, str] | None,
    problem: str,
) -> None:
    """Archives that would write outside the slot, or unpack beyond the cap, fail the
    install (a signed archive is still not trusted to place files anywhere)."""
    archive = tmp_path / "model.tar"
    archive.write_bytes(_tar(members, link=link))
    with pytest.raises(InstallFailed, match=problem):
        unpack_archive(archive, tmp_path, max_bytes=1000)
    assert not (tmp_path.parent / "evil").exists()


@pytest.mark.parametrize(
    ("trial", "boots", "limit", "expected"),
    [
        pytest.param(False, 0, 3, ("normal", 0), id="no-trial"),
        pytest.param(True, 0, 3, ("trial", 1), id="first-restart"),
        pytest.param(True, 1, 3, ("trial", 2), id="second-restart"),
        pytest.param(True, 2, 3, ("rollback", 3), id="third-restart-rolls-back"),
        pytest.param(True, 0, 1, ("rollback", 1), id="limit-one"),
    ],
)
def test_boot_action_table(trial: bool, boots: int, limit: int, expected: tuple[str, int]) -> None:
    """The boot counter rule, case by case."""
    assert boot_action(trial=trial, boots=boots, max_boots=limit) == expected


@pytest.mark.parametrize(
    ("active", "trial", "rejected", "retry_at", "expected"),
    [
        pytest.param("m/2/a", False, False, None, "current", id="already-running"),
        pytest.param("m/1/a", True, False, None, "wait_trial", id="trial-first"),
        pytest.param("m/1/a", False, True, None, "rejected", id="rejected"),
        pytest.param("m/1/a", False, False, 200.0, "wait_retry", id="backing-off"),
        pytest.param("m/1/a", False, False, 50.0, "install", id="retry-due"),
        pytest.param(None, False, False, None, "install", id="factory"),
    ],
)
def test_next_step_table(
    active: str | None, trial: bool, rejected: bool, retry_at: float | None, expected: str
) -> None:
    """What the manager does next for a desired target, from the slot state and time."""
    desired = DesiredModel("m", "m/2/a", "2")
    step = next_step(
        desired, active_target=active, trial=trial, rejected=rejected, retry_at=retry_at, now=100
    )
    assert step == expected
