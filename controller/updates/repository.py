"""The controller's TUF repository: root, targets, snapshot and timestamp metadata on disk.

Layout (contract 1, consistent snapshots)::

    <repo>/metadata/1.root.json, 2.root.json, ...   every root version, kept forever
    <repo>/metadata/N.targets.json, N.snapshot.json  versioned, never rewritten once published
    <repo>/metadata/timestamp.json                   the only file that changes in place
    <repo>/targets/<dir>/<sha256>.<basename>         artifacts, named by content
    <repo>/drafts/N.root.json                        root versions waiting for signatures
    <repo>/staging/                                  uploads being hashed (same filesystem)

Publishing writes the new targets and snapshot files first and ``timestamp.json`` last,
each atomically: a crash part-way leaves unreferenced files, never a set a client would see
half-done. Every change bumps versions monotonically. What is on disk is verified against
the root chain whenever it is read, so the controller never re-signs metadata someone
tampered with. All decisions take ``now``; nothing here reads the clock.

Root changes (expiry renewal, key rotation) go through drafts: a new root version must be
signed by a threshold of the previous root's keys *and* of its own, which is what lets
clients follow a rotation and lets the root keys live offline.
"""

import copy
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import SecretStr
from securesystemslib.signer import Key, Signer
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    RootVerificationResult,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from controller.updates._files import locked, write_atomic
from controller.updates.errors import KeyStoreError, PublishError, RepositoryStateError
from controller.updates.keys import ROLES, KeyStore, read_passphrase

if TYPE_CHECKING:
    from controller.settings import Settings, UpdatesSettings

M = TypeVar("M", Root, Timestamp, Snapshot, Targets)
ONLINE_ROLES = ("targets", "snapshot", "timestamp")
_ROOT_FILE = re.compile(r"^([1-9][0-9]*)\.root\.json$")
_COMPACT = JSONSerializer(compact=True)
_PRETTY = JSONSerializer(compact=False)


@dataclass(frozen=True)
class RepoPolicy:
    """Lifetimes, thresholds and the re-sign margin of each role."""

    expiry: Mapping[str, timedelta] = field(
        default_factory=lambda: {
            "root": timedelta(days=365),
            "targets": timedelta(days=90),
            "snapshot": timedelta(days=7),
            "timestamp": timedelta(days=1),
        }
    )
    thresholds: Mapping[str, int] = field(default_factory=lambda: dict.fromkeys(ROLES, 1))
    refresh_fraction: float = 0.5

    @classmethod
    def from_settings(cls, updates: "UpdatesSettings") -> "RepoPolicy":
        return cls(
            expiry={role: getattr(updates.expiry, role) for role in ROLES},
            thresholds={role: getattr(updates.thresholds, role) for role in ROLES},
            refresh_fraction=updates.refresh_fraction,
        )


def needs_refresh(expires: datetime, lifetime: timedelta, now: datetime, fraction: float) -> bool:
    """True once less than ``fraction`` of a role's ``lifetime`` is left before ``expires``."""
    return expires - now <= lifetime * fraction


def describe_root_result(result: RootVerificationResult, version: int) -> str:
    """'signed by 1/2 keys of root v3 and 0/1 of its own' for error messages."""
    old, new = result.first, result.second
    return (
        f"root v{version} is signed by {len(old.signed)}/{old.threshold} keys of root"
        f" v{version - 1} and {len(new.signed)}/{new.threshold} of its own keys"
    )


@dataclass(frozen=True)
class RepoState:
    """One verified, published metadata set, as a client would see it."""

    roots: list[Metadata[Root]]
    targets: Metadata[Targets]
    snapshot: Metadata[Snapshot]
    timestamp: Metadata[Timestamp]
    # Roles still signed only by keys of the previous root (mid key-rotation).
    stale: frozenset[str] = frozenset()

    @property
    def root(self) -> Metadata[Root]:
        return self.roots[-1]

    def versions(self) -> dict[str, int]:
        return {
            "root": self.root.signed.version,
            "targets": self.targets.signed.version,
            "snapshot": self.snapshot.signed.version,
            "timestamp": self.timestamp.signed.version,
        }

    def expires(self) -> dict[str, datetime]:
        return {
            "root": self.root.signed.expires,
            "targets": self.targets.signed.expires,
            "snapshot": self.snapshot.signed.expires,
            "timestamp": self.timestamp.signed.expires,
        }


# The bound devices' ngclient puts on a root (edge_agent.updates.client.UPDATER_CONFIG).
MAX_ROOT_DRAFT_BYTES = 512_000


@dataclass(frozen=True)
class Rotation:
    """The outcome of ``rotate``: published now, or a draft waiting for offline keys."""

    role: str
    version: int
    new_keyids: list[str]
    revoked_keyids: list[str]
    published: bool
    draft_path: Path | None
    status: str
    resigned: list[str] = field(default_factory=list)


def read_root_draft(path: Path) -> Metadata[Root]:
    """Load a root draft file (it comes back from offline signing, so it is outside
    input): at most ``MAX_ROOT_DRAFT_BYTES``, with a clear error when it is not one."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_ROOT_DRAFT_BYTES + 1)
    except OSError as e:
        raise PublishError(f"cannot read root draft {path}: {e}") from e
    if len(data) > MAX_ROOT_DRAFT_BYTES:
        raise PublishError(f"{path} is larger than {MAX_ROOT_DRAFT_BYTES} bytes; not a root draft")
    try:
        md = Metadata[Root].from_bytes(data)
    except DeserializationError as e:
        raise PublishError(f"{path} is not TUF metadata: {e}") from e
    if not isinstance(md.signed, Root):
        raise PublishError(f"{path} holds {md.signed.type} metadata, not a root")
    return md


def write_root_draft(draft: Metadata[Root], path: Path) -> None:
    try:
        write_atomic(path, draft.to_bytes(_PRETTY), 0o644)
    except OSError as e:
        raise PublishError(f"cannot write root draft {path}: {e}") from e


def sign_root_draft(
    draft: Metadata[Root], signers: Sequence[Signer], previous: Root | None
) -> list[str]:
    """Add signatures to ``draft`` with keys that are root keys of the draft or of the
    ``previous`` root (None: only the draft's own keys are known). Returns the keyids."""
    allowed: dict[str, Key] = {k: draft.signed.keys[k] for k in draft.signed.roles["root"].keyids}
    if previous is not None:
        allowed |= {k: previous.keys[k] for k in previous.roles["root"].keyids}
    added: list[str] = []
    for signer in signers:
        keyid = signer.public_key.keyid
        if keyid not in allowed or allowed[keyid] != signer.public_key:
            versions = f"v{draft.signed.version}"
            if previous is not None:
                versions = f"v{previous.version} or {versions}"
            raise PublishError(f"key {keyid} is not a root key of root {versions}")
        draft.sign(signer, append=True)
        added.append(keyid)
    return added


def _parse(data: bytes, cls: type[M], name: str) -> Metadata[M]:
    try:
        md = Metadata[M].from_bytes(data)
    except DeserializationError as e:
        raise RepositoryStateError(f"metadata/{name} is corrupt: {e}") from e
    if not isinstance(md.signed, cls):
        raise RepositoryStateError(f"metadata/{name} holds {md.signed.type}, not {cls.type}")
    return md


class TufRepository:
    """Signs and publishes the repository's metadata; serving reads the same folders."""

    def __init__(self, repo_dir: Path, keys: KeyStore, policy: RepoPolicy | None = None) -> None:
        self.dir = repo_dir
        self.keys = keys
        self.policy = policy or RepoPolicy()

    @classmethod
    def from_settings(
        cls, settings: "Settings", *, passphrase: SecretStr | str | None = None
    ) -> "TufRepository":
        """The repository configured in ``settings.updates``; the key passphrase is
        ``passphrase`` if given, else ``updates.passphrase_file``, else
        ``EDGEFLEET_KEY_PASSPHRASE`` (none: serving works, signing says what is missing)."""
        updates = settings.updates
        if isinstance(passphrase, str):
            passphrase = SecretStr(passphrase)
        secret = passphrase if passphrase is not None else read_passphrase(updates.passphrase_file)
        return cls(
            updates.repo_dir, KeyStore(updates.keys_dir, secret), RepoPolicy.from_settings(updates)
        )

    def __repr__(self) -> str:
        return f"TufRepository({str(self.dir)!r})"

    # --- layout ---------------------------------------------------------------------------
    @property
    def metadata_dir(self) -> Path:
        return self.dir / "metadata"

    @property
    def targets_dir(self) -> Path:
        return self.dir / "targets"

    @property
    def staging_dir(self) -> Path:
        return self.dir / "staging"

    @property
    def drafts_dir(self) -> Path:
        return self.dir / "drafts"

    def is_initialized(self) -> bool:
        return (self.metadata_dir / "1.root.json").is_file()

    def target_file_path(self, target_path: str, sha256: str) -> Path:
        """Where the artifact for ``target_path`` with content ``sha256`` is stored."""
        parent, sep, name = target_path.rpartition("/")
        return self.targets_dir / f"{parent}{sep}{sha256}.{name}"

    def root_bytes(self, version: int = 1) -> bytes:
        """The bytes of root ``version``: what a device is provisioned to trust first."""
        path = self.metadata_dir / f"{version}.root.json"
        try:
            return path.read_bytes()
        except OSError as e:
            raise RepositoryStateError(f"cannot read {path}: {e}") from e

    def _lock(self) -> Any:
        return locked(self.dir / ".lock")

    # --- reading --------------------------------------------------------------------------
    def _read(self, name: str, cls: type[M]) -> Metadata[M]:
        path = self.metadata_dir / name
        try:
            data = path.read_bytes()
        except FileNotFoundError as e:
            raise RepositoryStateError(f"metadata/{name} is missing from {self.dir}") from e
        except OSError as e:
            raise RepositoryStateError(f"cannot read {path}: {e}") from e
        return _parse(data, cls, name)

    def load_root_chain(self) -> list[Metadata[Root]]:
        """Every root version, each verified against its predecessor like a client does."""
        if not self.is_initialized():
            raise RepositoryStateError(
                f"no TUF repository at {self.dir}: run 'edgefleet keys init' first"
            )
        numbers = sorted(
            int(m.group(1)) for p in self.metadata_dir.iterdir() if (m := _ROOT_FILE.match(p.name))
        )
        if numbers != list(range(1, len(numbers) + 1)):
            raise RepositoryStateError(
                f"root versions in {self.metadata_dir} are not contiguous: {numbers}"
            )
        chain: list[Metadata[Root]] = []
        for number in numbers:
            md = self._read(f"{number}.root.json", Root)
            if md.signed.version != number:
                raise RepositoryStateError(
                    f"metadata/{number}.root.json claims version {md.signed.version}"
                )
            previous = chain[-1].signed if chain else None
            result = md.signed.get_root_verification_result(
                previous, md.signed_bytes, md.signatures
            )
            if not result.verified:
                raise RepositoryStateError(
                    f"metadata/{number}.root.json fails verification: "
                    + describe_root_result(result, number)
                )
            chain.append(md)
        return chain

    def load(self, *, allow_stale: Collection[str] = ()) -> RepoState:
        """The published set (timestamp -> snapshot -> targets), verified against root.

        A role still signed by keys that only the previous root trusted (a key rotation
        whose re-signing did not finish) is refused unless named in ``allow_stale``: only
        an operator's explicit refresh, or the rotation itself, may re-sign it, so the
        scheduler never launders metadata signed with a revoked key."""
        roots = self.load_root_chain()
        root = roots[-1].signed
        previous = roots[-2].signed if len(roots) > 1 else None
        stale: set[str] = set()

        def check(role: str, name: str, md: Metadata[Any]) -> None:
            if root.get_verification_result(role, md.signed_bytes, md.signatures).verified:
                return
            if (
                previous is not None
                and previous.get_verification_result(role, md.signed_bytes, md.signatures).verified
            ):
                if role in allow_stale:
                    stale.add(role)
                    return
                raise RepositoryStateError(
                    f"metadata/{name} is signed by {role} keys of root v{previous.version}"
                    f" that root v{root.version} replaced (an unfinished key rotation?);"
                    f" check it, then run 'edgefleet keys refresh --force {role}'"
                )
            raise RepositoryStateError(
                f"metadata/{name} is not signed by a threshold of the {role} keys of"
                f" root v{root.version}; it was altered or signed with unknown keys"
            )

        timestamp = self._read("timestamp.json", Timestamp)
        check("timestamp", "timestamp.json", timestamp)
        snap_version = timestamp.signed.snapshot_meta.version
        snapshot = self._read(f"{snap_version}.snapshot.json", Snapshot)
        check("snapshot", f"{snap_version}.snapshot.json", snapshot)
        if snapshot.signed.version != snap_version:
            raise RepositoryStateError(
                f"metadata/{snap_version}.snapshot.json claims version {snapshot.signed.version}"
            )
        targets_meta = snapshot.signed.meta.get("targets.json")
        if targets_meta is None:
            raise RepositoryStateError(f"snapshot v{snap_version} does not list targets.json")
        targets = self._read(f"{targets_meta.version}.targets.json", Targets)
        check("targets", f"{targets_meta.version}.targets.json", targets)
        if targets.signed.version != targets_meta.version:
            raise RepositoryStateError(
                f"metadata/{targets_meta.version}.targets.json claims version"
                f" {targets.signed.version}"
            )
        return RepoState(roots, targets, snapshot, timestamp, frozenset(stale))

    # --- signing --------------------------------------------------------------------------
    def _signers(self, root: Root, role: str) -> list[Signer]:
        spec = root.roles[role]
        keys = {k: root.keys[k] for k in spec.keyids}
        signers: list[Signer] = list(self.keys.signers(keys).values())
        if len(signers) < spec.threshold:
            hint = " (root keys live offline: use the root-draft flow)" if role == "root" else ""
            raise KeyStoreError(
                f"{role} needs {spec.threshold} signature(s) but {len(signers)} of its"
                f" {len(keys)} key(s) are in {self.keys.dir}{hint}"
            )
        return signers

    def _sign(self, signed: M, root: Root, signers: Sequence[Signer]) -> Metadata[M]:
        md = Metadata(signed)
        for signer in signers:
            md.sign(signer, append=True)
        try:
            root.verify_delegate(signed.type, md.signed_bytes, md.signatures)
        except UnsignedMetadataError as e:
            raise KeyStoreError(f"signing {signed.type} failed: {e}") from e
        return md

    def _check_root_valid(self, root: Root, now: datetime) -> None:
        if root.is_expired(now):
            raise RepositoryStateError(
                f"root v{root.version} expired at {root.expires.isoformat()}: clients refuse"
                " everything it signs; publish a new root version ('edgefleet keys"
                " root-draft', 'sign-root', 'publish-root')"
            )

    def _commit(
        self, state: RepoState, roles: Collection[str], now: datetime, targets: Targets | None
    ) -> tuple[list[str], RepoState]:
        """Sign and write new versions of ``roles`` (plus the roles above them), timestamp
        last. Every signer is loaded before the first write, so missing keys write nothing."""
        wanted = set(roles) | {"timestamp"}
        if "targets" in wanted:
            wanted.add("snapshot")
        root = state.root.signed
        self._check_root_valid(root, now)
        signers = {role: self._signers(root, role) for role in ONLINE_ROLES if role in wanted}
        new_targets, new_snapshot = state.targets, state.snapshot
        written: list[str] = []
        if "targets" in wanted:
            body = copy.deepcopy(targets if targets is not None else state.targets.signed)
            body.version = self._next_version("targets", state.targets.signed.version)
            body.expires = now + self.policy.expiry["targets"]
            new_targets = self._sign(body, root, signers["targets"])
        if "snapshot" in wanted:
            snap = copy.deepcopy(state.snapshot.signed)
            snap.version = self._next_version("snapshot", snap.version)
            snap.expires = now + self.policy.expiry["snapshot"]
            snap.meta["targets.json"] = MetaFile(version=new_targets.signed.version)
            new_snapshot = self._sign(snap, root, signers["snapshot"])
        stamp = copy.deepcopy(state.timestamp.signed)
        stamp.version += 1
        stamp.expires = now + self.policy.expiry["timestamp"]
        stamp.snapshot_meta = MetaFile(version=new_snapshot.signed.version)
        new_timestamp = self._sign(stamp, root, signers["timestamp"])
        try:
            if "targets" in wanted:
                self._write(f"{new_targets.signed.version}.targets.json", new_targets)
                written.append("targets")
            if "snapshot" in wanted:
                self._write(f"{new_snapshot.signed.version}.snapshot.json", new_snapshot)
                written.append("snapshot")
            self._write("timestamp.json", new_timestamp)  # the switch clients see
            written.append("timestamp")
        except OSError as e:
            raise RepositoryStateError(f"cannot write metadata in {self.metadata_dir}: {e}") from e
        stale = state.stale - set(written)
        return written, RepoState(state.roots, new_targets, new_snapshot, new_timestamp, stale)

    def _next_version(self, role: str, published: int) -> int:
        """One past the published version and past any file a crashed publish left behind,
        so a versioned file, once written, is never rewritten (mirrors may cache it)."""
        pattern = re.compile(rf"^([1-9][0-9]*)\.{role}\.json$")
        existing = [
            int(m.group(1)) for p in self.metadata_dir.iterdir() if (m := pattern.match(p.name))
        ]
        return max([published, *existing]) + 1

    def _write(self, name: str, md: Metadata[Any]) -> None:
        write_atomic(self.metadata_dir / name, md.to_bytes(_COMPACT), 0o644)

    # --- operations -----------------------------------------------------------------------
    def initialize(
        self, *, now: datetime, root_keys: int = 1, root_threshold: int | None = None
    ) -> RepoState:
        """Generate every role's keys and publish version 1 of each role's metadata."""
        threshold = root_threshold if root_threshold is not None else self.policy.thresholds["root"]
        if root_keys < 1 or not 1 <= threshold <= root_keys:
            raise PublishError(
                f"root threshold {threshold} must be between 1 and the number of root keys"
                f" ({root_keys})"
            )
        with self._lock():
            if self.is_initialized() or (
                self.metadata_dir.is_dir() and any(self.metadata_dir.glob("*.json"))
            ):
                raise RepositoryStateError(f"a TUF repository already exists at {self.dir}")
            if self.keys.files():
                raise KeyStoreError(f"{self.keys.dir} already holds keys; use an empty folder")
            self.keys.check_passphrase()
            root = Root(expires=now + self.policy.expiry["root"], consistent_snapshot=True)
            for role in ROLES:
                count = root_keys if role == "root" else self.policy.thresholds[role]
                for _ in range(count):
                    root.add_key(self.keys.generate(role), role)
                root.roles[role].threshold = threshold if role == "root" else count
            root_md = self._sign(root, root, self._signers(root, "root"))
            expiry = self.policy.expiry
            targets = self._sign(
                Targets(version=1, expires=now + expiry["targets"]),
                root,
                self._signers(root, "targets"),
            )
            snapshot = self._sign(
                Snapshot(version=1, expires=now + expiry["snapshot"]),
                root,
                self._signers(root, "snapshot"),
            )
            timestamp = self._sign(
                Timestamp(version=1, expires=now + expiry["timestamp"]),
                root,
                self._signers(root, "timestamp"),
            )
            self.targets_dir.mkdir(parents=True, exist_ok=True)
            self._write("1.root.json", root_md)
            self._write("1.targets.json", targets)
            self._write("1.snapshot.json", snapshot)
            self._write("timestamp.json", timestamp)
            return RepoState([root_md], targets, snapshot, timestamp)

    def publish_targets(
        self,
        add: Sequence[TargetFile] = (),
        remove: Sequence[str] = (),
        *,
        now: datetime,
    ) -> RepoState:
        """Publish new targets (and snapshot, timestamp) adding ``add`` and dropping the
        target paths in ``remove``. The artifacts must already be in ``targets_dir``."""
        with self._lock():
            state = self.load()
            body = copy.deepcopy(state.targets.signed)
            for target in add:
                local = self.target_file_path(target.path, target.hashes["sha256"])
                if not local.is_file():
                    raise PublishError(f"artifact for {target.path} is not at {local}")
                body.targets[target.path] = target
            for path in remove:
                body.targets.pop(path, None)
            return self._commit(state, {"targets"}, now, body)[1]

    def refresh(self, *, now: datetime, force: Collection[str] = ()) -> list[str]:
        """Re-sign every online role within its refresh margin of expiry, and those named in
        ``force``. Idempotent: nothing due, nothing written."""
        unknown = set(force) - set(ONLINE_ROLES)
        if unknown:
            raise ValueError(f"cannot refresh {sorted(unknown)}: only {ONLINE_ROLES}")
        with self._lock():
            state = self.load(allow_stale=force)
            due = set(force)
            for role, md in (
                ("targets", state.targets),
                ("snapshot", state.snapshot),
                ("timestamp", state.timestamp),
            ):
                lifetime = self.policy.expiry[role]
                if needs_refresh(md.signed.expires, lifetime, now, self.policy.refresh_fraction):
                    due.add(role)
            if not due:
                return []
            return self._commit(state, due, now, None)[0]

    def timestamp_expires(self) -> datetime | None:
        """When the published timestamp expires (read, not verified: for health reports);
        None without a repository."""
        if not self.is_initialized():
            return None
        return self._read("timestamp.json", Timestamp).signed.expires

    def check_signing(self, role: str = "timestamp") -> None:
        """Raise KeyStoreError unless this controller's keys and passphrase can sign
        ``role`` (what the refresh job will need), decrypting its keys without signing."""
        self._signers(self.load_root_chain()[-1].signed, role)

    def root_expiring(self, now: datetime) -> bool:
        """Root is within its refresh margin: someone must sign a new root version soon."""
        root = self.load_root_chain()[-1].signed
        return needs_refresh(
            root.expires, self.policy.expiry["root"], now, self.policy.refresh_fraction
        )

    def draft_root(
        self,
        *,
        now: datetime,
        add: Sequence[tuple[str, Key]] = (),
        revoke: Sequence[tuple[str, str]] = (),
        thresholds: Mapping[str, int] | None = None,
    ) -> Metadata[Root]:
        """The next root version (new expiry, keys added/revoked, thresholds), signed with
        every root key, old or new, that is in the online key folder."""
        current = self.load_root_chain()[-1].signed
        body = copy.deepcopy(current)
        body.version += 1
        body.expires = now + self.policy.expiry["root"]
        try:
            for role, keyid in revoke:
                body.revoke_key(keyid, role)
            for role, key in add:
                body.add_key(key, role)
        except ValueError as e:
            raise PublishError(str(e)) from e
        for role, threshold in (thresholds or {}).items():
            if role not in ROLES or threshold < 1:
                raise PublishError(f"bad threshold {threshold} for role {role!r}")
            body.roles[role].threshold = threshold
        for role in ROLES:
            spec = body.roles[role]
            if len(spec.keyids) < spec.threshold:
                raise PublishError(
                    f"root v{body.version} would give {role} {len(spec.keyids)} key(s) for a"
                    f" threshold of {spec.threshold}"
                )
        draft = Metadata(body)
        candidates = {k: current.keys[k] for k in current.roles["root"].keyids}
        candidates |= {k: body.keys[k] for k in body.roles["root"].keyids}
        for signer in self.keys.signers(candidates).values():
            draft.sign(signer, append=True)
        return draft

    def check_root_draft(self, draft: Metadata[Root]) -> RootVerificationResult:
        """How far ``draft`` is from being publishable (signatures of old and new keys)."""
        current = self.load_root_chain()[-1].signed
        if draft.signed.version != current.version + 1:
            raise PublishError(
                f"the draft is root v{draft.signed.version} but the next version is"
                f" v{current.version + 1}"
            )
        return draft.signed.get_root_verification_result(
            current, draft.signed_bytes, draft.signatures
        )

    def publish_root(self, draft: Metadata[Root], *, now: datetime) -> list[str]:
        """Publish ``draft`` as the next root version once a threshold of both the previous
        root's keys and its own have signed it; then re-sign the online roles whose keys it
        changed. Returns the roles re-signed."""
        with self._lock():
            return self._publish_root(draft, now)

    def _publish_root(self, draft: Metadata[Root], now: datetime) -> list[str]:
        new = draft.signed
        result = self.check_root_draft(draft)
        if new.is_expired(now):
            raise PublishError(f"root draft v{new.version} expired at {new.expires.isoformat()}")
        if new.consistent_snapshot is not True:
            raise PublishError("root drafts must keep consistent_snapshot = true")
        if not result.verified:
            missing = ", ".join(sorted(result.unsigned)) or "none"
            raise PublishError(
                f"not enough signatures: {describe_root_result(result, new.version)};"
                f" keys that have not signed: {missing}"
            )
        previous = self.load_root_chain()[-1].signed
        try:
            write_atomic(
                self.metadata_dir / f"{new.version}.root.json", draft.to_bytes(_COMPACT), 0o644
            )
        except OSError as e:
            raise RepositoryStateError(f"cannot write root v{new.version}: {e}") from e
        changed = {r for r in ONLINE_ROLES if previous.roles[r] != new.roles[r]}
        state = self.load(allow_stale=changed)
        due = changed | set(state.stale)
        if not due:
            return []
        try:
            return self._commit(state, due, now, None)[0]
        except (KeyStoreError, RepositoryStateError) as e:
            raise PublishError(
                f"root v{new.version} is published, but re-signing {', '.join(sorted(due))}"
                f" failed: {e}; fix that, then run 'edgefleet keys refresh'"
            ) from e

    def rotate(
        self,
        role: str,
        *,
        now: datetime,
        revoke: Sequence[str] | None = None,
        new_keys: int | None = None,
        threshold: int | None = None,
        draft_path: Path | None = None,
    ) -> Rotation:
        """Replace keys of ``role`` (default: all of them, one new key per revoked one)
        through a new root version. Published at once when the online root keys suffice;
        otherwise written as a draft for ``sign-root`` with offline keys."""
        if role not in ROLES:
            raise PublishError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
        with self._lock():
            current = self.load_root_chain()[-1].signed
            old = list(current.roles[role].keyids)
            revoked = list(old if revoke is None else revoke)
            stray = [k for k in revoked if k not in old]
            if stray:
                raise PublishError(
                    f"{', '.join(stray)} is not a {role} key of root v{current.version}"
                )
            count = new_keys if new_keys is not None else max(len(revoked), 1)
            if count < 0:
                raise PublishError("the number of new keys cannot be negative")
            if count:
                self.keys.check_passphrase()
            added = [self.keys.generate(role) for _ in range(count)]
            draft = self.draft_root(
                now=now,
                add=[(role, key) for key in added],
                revoke=[(role, keyid) for keyid in revoked],
                thresholds={role: threshold} if threshold is not None else None,
            )
            result = self.check_root_draft(draft)
            new_ids = [key.keyid for key in added]
            if result.verified:
                resigned = self._publish_root(draft, now)
                return Rotation(
                    role, draft.signed.version, new_ids, revoked, True, None,
                    f"root v{draft.signed.version} published", resigned,
                )  # fmt: skip
            path = draft_path or self.drafts_dir / f"{draft.signed.version}.root.json"
            write_root_draft(draft, path)
            return Rotation(
                role, draft.signed.version, new_ids, revoked, False, path,
                describe_root_result(result, draft.signed.version),
            )  # fmt: skip


__all__ = [
    "ONLINE_ROLES",
    "RepoPolicy",
    "RepoState",
    "Rotation",
    "TufRepository",
    "describe_root_result",
    "needs_refresh",
    "read_root_draft",
    "sign_root_draft",
    "write_root_draft",
]
