"""Tar member checks: hostile archives (traversal, links, devices, sizes, counts) are refused."""

import contextlib
import gzip
import io
import tarfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from controller.db import make_engine, session_scope
from controller.images.flash import verified_image
from controller.images.manifest import ImageError
from controller.migrations import init_db
from controller.updates.errors import PublishError
from controller.updates.keys import KeyStore
from controller.updates.publish import ModelSpec, add_model_file
from controller.updates.repository import TufRepository
from shared.digests import tar_folder_sha256
from shared.tar_guard import (
    TarGuardError,
    TarLimits,
    check_members,
    extract_checked,
    safe_member_name,
)


@dataclass
class Member:
    """One member to write into a test archive."""

    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    link: str = ""
    size: int | None = None  # a header size other than len(data) (only for headers read)


@dataclass
class Case:
    """A hostile archive, the reason it must be refused with, and the limits applied."""

    members: list[Member]
    reason: str
    limits: TarLimits = field(default_factory=TarLimits)


def build(members: list[Member]) -> bytes:
    """The bytes of an uncompressed tar holding ``members`` exactly as named."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type = m.kind
            info.linkname = m.link
            if m.kind == tarfile.REGTYPE:
                info.size = len(m.data)
                tar.addfile(info, io.BytesIO(m.data))
            else:
                tar.addfile(info)
    return buffer.getvalue()


def huge_header(name: str, size: int) -> bytes:
    """A tar whose one member claims ``size`` bytes but carries none (a size bomb)."""
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 1024


R = tarfile.REGTYPE
HOSTILE: dict[str, Case] = {
    "absolute path": Case([Member("/etc/cron.d/evil", data=b"x")], "unsafe_name"),
    "dot-dot": Case([Member("../evil", data=b"x")], "unsafe_name"),
    "dot-dot inside": Case([Member("model/../../evil", data=b"x")], "unsafe_name"),
    "backslash": Case([Member("..\\evil", data=b"x")], "unsafe_name"),
    "symlink absolute": Case([Member("l", tarfile.SYMTYPE, link="/etc/passwd")], "link_outside"),
    "symlink climbing": Case([Member("a/l", tarfile.SYMTYPE, link="../../etc")], "link_outside"),
    "hardlink outside": Case([Member("h", tarfile.LNKTYPE, link="../etc/passwd")], "link_outside"),
    "hardlink absolute": Case([Member("h", tarfile.LNKTYPE, link="/etc/passwd")], "link_outside"),
    "hardlink to nothing": Case([Member("h", tarfile.LNKTYPE, link="missing")], "link_outside"),
    "links not allowed": Case(
        [Member("a", data=b"x"), Member("l", tarfile.SYMTYPE, link="a")],
        "special_file",
        TarLimits(allow_links=False),
    ),
    "through a link to its folder": Case(
        [Member("s", tarfile.SYMTYPE, link="."), Member("s/l", tarfile.SYMTYPE, link="..")],
        "link_outside",
    ),
    "file over an earlier link": Case(
        [Member("l", tarfile.SYMTYPE, link="a"), Member("l", data=b"x")], "duplicate_member"
    ),
    "a hard link over the file it names": Case(
        [Member("a", data=b"x"), Member("a", tarfile.LNKTYPE, link="a")], "duplicate_member"
    ),
    "a link below an earlier file (RecursionError in tarfile's fallback)": Case(
        [Member("a", data=b"x"), Member("a/m", tarfile.SYMTYPE, link="m")], "duplicate_member"
    ),
    "a link over a folder an earlier member's path made": Case(
        [Member("a/m", data=b"x"), Member("a", tarfile.LNKTYPE, link="a/m")], "duplicate_member"
    ),
    "a file listed twice": Case(
        [Member("a", data=b"x"), Member("a", data=b"y")], "duplicate_member"
    ),
    "a file over a folder": Case(
        [Member("m", tarfile.DIRTYPE), Member("m", data=b"y")], "duplicate_member"
    ),
    "character device": Case([Member("dev", tarfile.CHRTYPE)], "special_file"),
    "block device": Case([Member("dev", tarfile.BLKTYPE)], "special_file"),
    "fifo": Case([Member("pipe", tarfile.FIFOTYPE)], "special_file"),
    "member too large": Case(
        [Member("big", data=b"x" * 200)], "member_too_large", TarLimits(max_member_bytes=100)
    ),
    "total too large": Case(
        [Member(f"f{i}", data=b"x" * 60) for i in range(3)],
        "total_too_large",
        TarLimits(max_total_bytes=100),
    ),
    "too many members": Case(
        [Member(f"f{i}") for i in range(20)], "too_many_members", TarLimits(max_members=10)
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archives_are_refused_and_write_nothing(tmp_path: Path, case: str) -> None:
    """Each hostile archive raises TarGuardError with its reason, and nothing is unpacked
    into the target or next to it."""
    spec = HOSTILE[case]
    archive = tmp_path / "evil.tar"
    archive.write_bytes(build(spec.members))
    target = tmp_path / "deep" / "into"
    target.mkdir(parents=True)
    with pytest.raises(TarGuardError) as caught:
        extract_checked(archive, target, limits=spec.limits)
    assert caught.value.reason == spec.reason
    assert str(caught.value).startswith("evil.tar: ")
    assert list(target.iterdir()) == []
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["deep", "evil.tar", "into"]


def test_a_size_bomb_header_is_refused_before_reading_its_data(tmp_path: Path) -> None:
    """A member claiming a terabyte is refused from its header alone."""
    archive = tmp_path / "bomb.tar"
    archive.write_bytes(huge_header("model.onnx", 10**12))
    with tarfile.open(archive) as tar, pytest.raises(TarGuardError) as caught:
        check_members(tar, limits=TarLimits(), source="bomb.tar")
    assert caught.value.reason == "member_too_large"


def test_a_gzip_of_many_members_stops_at_the_member_limit(tmp_path: Path) -> None:
    """A compressed archive of many empty members stops at max_members, read as a stream."""
    archive = tmp_path / "many.tar.gz"
    archive.write_bytes(gzip.compress(build([Member(f"f{i}") for i in range(500)])))
    with tarfile.open(archive, "r|gz") as tar, pytest.raises(TarGuardError) as caught:
        check_members(tar, limits=TarLimits(max_members=100), source="many.tar.gz")
    assert caught.value.reason == "too_many_members"


def test_a_good_archive_unpacks_with_internal_links(tmp_path: Path) -> None:
    """Files, folders and links that stay inside unpack as they are."""
    archive = tmp_path / "good.tar"
    archive.write_bytes(
        build(
            [
                Member("m", tarfile.DIRTYPE),
                Member("./m/a.bin", data=b"weights"),
                Member("m/alias", tarfile.SYMTYPE, link="a.bin"),
                Member("m/hard", tarfile.LNKTYPE, link="m/a.bin"),
            ]
        )
    )
    target = tmp_path / "out"
    target.mkdir()
    members = extract_checked(archive, target, limits=TarLimits())
    assert [m.name for m in members] == ["m", "./m/a.bin", "m/alias", "m/hard"]
    assert (target / "m" / "alias").read_bytes() == b"weights"
    assert (target / "m" / "hard").read_bytes() == b"weights"


def test_damaged_archives_are_bad_tar(tmp_path: Path) -> None:
    """Truncated or corrupt compressed data is refused as bad_tar, not a zlib or EOF error."""
    good = gzip.compress(build([Member("a", data=b"x" * 5000)]))
    for n, data in enumerate([good[: len(good) // 2], b"\x1f\x8b\x08\x00" + b"junk" * 50]):
        archive = tmp_path / f"damaged{n}.tar.gz"
        archive.write_bytes(data)
        with pytest.raises(TarGuardError) as caught:
            extract_checked(archive, tmp_path, limits=TarLimits())
        assert caught.value.reason == "bad_tar"


@pytest.mark.parametrize(
    ("name", "normal"),
    [("a/b", "a/b"), ("./a//b/", "a/b"), ("./", "."), ("a/./b", "a/b")],
)
def test_safe_names_are_normalized(name: str, normal: str) -> None:
    """Harmless spellings of a relative path normalize to one name."""
    assert safe_member_name(name) == normal


def test_publishing_refuses_an_archive_the_agent_would_refuse(tmp_path: Path) -> None:
    """tar_folder_sha256 (the controller's publish check) refuses a traversal archive with a
    TarError, as the agent's unpack would."""
    archive = tmp_path / "model.tar"
    archive.write_bytes(build([Member("../genai_config.json", data=b"{}")]))
    with pytest.raises(tarfile.TarError, match="path traversal"):
        tar_folder_sha256(archive)


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_raise_only_tar_guard_error(tmp_path: Path, data: bytes) -> None:
    """Random bytes as an archive either unpack or raise TarGuardError, nothing else."""
    archive = tmp_path / "fuzz.tar"
    archive.write_bytes(data)
    target = tmp_path / "fuzz-out"
    target.mkdir(exist_ok=True)
    with contextlib.suppress(TarGuardError):
        extract_checked(archive, target, limits=TarLimits(max_total_bytes=1 << 20))


member_names = st.lists(
    st.sampled_from(["a", "b", "..", ".", "", "/", "m", "x.bin"]), min_size=1, max_size=5
).map("/".join)
kinds = st.sampled_from(
    [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE]
)
links = st.sampled_from(["a", "../a", "/etc/passwd", "m/a", "..", "m/../../x", "x.bin", ".", "m"])


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(member_names, kinds, links), min_size=1, max_size=6))
def test_whatever_the_members_nothing_lands_outside(
    tmp_path: Path, spec: list[tuple[str, bytes, str]]
) -> None:
    """Archives of random names, kinds and link targets either unpack entirely inside the
    target or raise TarGuardError; nothing is ever written next to it."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    for leftover in sorted(work.rglob("*"), key=lambda p: -len(p.parts)):
        leftover.unlink() if leftover.is_symlink() or not leftover.is_dir() else leftover.rmdir()
    archive = work / "fuzz.tar"
    archive.write_bytes(build([Member(n, k, b"x" if k == R else b"", link) for n, k, link in spec]))
    target = work / "deep" / "into"
    target.mkdir(parents=True)
    with contextlib.suppress(TarGuardError):
        extract_checked(archive, target, limits=TarLimits())
    outside = {p.name for p in work.rglob("*") if target not in p.parents and p != target}
    assert outside <= {"fuzz.tar", "deep"}
    for path in target.rglob("*"):
        # A link's target was judged by the guard (a loop such as m -> m is harmless and
        # cannot be resolved); everything else must resolve inside the target.
        assert path.is_symlink() or path.resolve().is_relative_to(target.resolve())


def test_publishing_a_hostile_archive_is_refused_and_stores_nothing(tmp_path: Path) -> None:
    """`models add` of an ort-genai archive with a symlink out of its folder is a
    PublishError naming the link, and no target is published."""
    repo = TufRepository(tmp_path / "repo", KeyStore(tmp_path / "keys", SecretStr("x" * 20)))
    repo.initialize(now=datetime.now(UTC))
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    init_db(engine)
    archive = tmp_path / "evil.tar"
    archive.write_bytes(
        build(
            [
                Member("genai_config.json", data=b"{}"),
                Member("model.onnx", tarfile.SYMTYPE, link="/etc/shadow"),
            ]
        )
    )
    spec = ModelSpec(name="evil", version="1", runtime="ort-genai", filename=archive.name)
    with pytest.raises(PublishError, match=r"model\.onnx"), session_scope(engine) as session:
        add_model_file(session, repo, archive, spec, actor="user:test")
    assert not list((repo.dir / "targets").rglob("*evil.tar"))
    engine.dispose()


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([Member("rootfs/etc/passwd", tarfile.SYMTYPE, link="/etc/passwd")], "is a link"),
        ([Member("rootfs/dev/sda", tarfile.BLKTYPE)], "not a file or folder"),
        ([Member("rootfs/../../x", data=b"x")], "path traversal"),
    ],
    ids=["symlink", "device", "traversal"],
)
def test_flash_refuses_hostile_image_members_before_the_signature(
    tmp_path: Path, members: list[Member], message: str
) -> None:
    """flash's image check refuses links, devices and traversal by their member, before
    reading the manifest or the signature."""
    image = tmp_path / "evil.tar"
    image.write_bytes(build(members))
    with (
        pytest.raises(ImageError, match=f"image refused: .*{message}"),
        verified_image(image, b"\0" * 32),
    ):
        pass
