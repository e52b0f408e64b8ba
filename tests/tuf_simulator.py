"""A real TUF repository for tests, served over loopback HTTP, that tests can attack.

``TufRepo`` builds top-level metadata with ``tuf.api.metadata``, signs it with in-memory
Ed25519 keys (securesystemslib ``CryptoSigner``) and writes it in the controller's
layout (contract 1): ``metadata/N.root.json``, ``N.targets.json``, ``N.snapshot.json``,
``timestamp.json``, and ``targets/<dir>/<sha256>.<basename>`` (consistent snapshots).
Nothing is mocked: attacks are made by writing other signed (or badly signed) files.

``RepoServer`` serves the folder with ``http.server`` (HTTP/1.1, Range requests answered
with 206) and has fault hooks for the artifact attacks: send extra bytes past the end,
or drop the connection once after N bytes of a body.

Run ``python -m tests.tuf_simulator FOLDER PORT`` to serve a folder from its own process
(the update benchmark does, so the server never shares a GIL with the client).
"""

import hashlib
import http.server
import io
import re
import socket
import sys
import tarfile
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from shared.messages import Desired

ROLES = ("root", "targets", "snapshot", "timestamp")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def model_custom(
    *,
    model: str = "tiny",
    version: str = "2",
    runtime: str = "ort-genai",
    quantization: str = "fp32",
    device_classes: list[str] | None = None,
    min_agent_version: str = "0.1.0",
    expected_latency_ms: int = 60_000,  # canonical JSON (what TUF signs) has no floats
) -> dict[str, Any]:
    """A model target's custom metadata (contract 1)."""
    return {
        "edgefleet": {
            "model": model,
            "version": version,
            "runtime": runtime,
            "quantization": quantization,
            "device_classes": device_classes or [],
            "min_agent_version": min_agent_version,
            "expected_latency_ms": expected_latency_ms,
        }
    }


class TufRepo:
    """A TUF repository on disk with its signing keys in memory."""

    def __init__(
        self,
        folder: Path,
        *,
        expires_in: timedelta = timedelta(days=7),
        thresholds: dict[str, int] | None = None,
    ) -> None:
        self.folder = folder
        self.metadata_dir = folder / "metadata"
        self.targets_dir = folder / "targets"
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        self.expires_in = expires_in
        thresholds = thresholds or {}
        self.signers: dict[str, list[CryptoSigner]] = {
            role: [CryptoSigner.generate_ed25519() for _ in range(thresholds.get(role, 1))]
            for role in ROLES
        }
        expires = self.expiry()
        self.root: Metadata[Root] = Metadata(Root(expires=expires, consistent_snapshot=True))
        for role, signers in self.signers.items():
            for signer in signers:
                self.root.signed.add_key(signer.public_key, role)
            self.root.signed.roles[role].threshold = len(signers)
        self.targets: Metadata[Targets] = Metadata(Targets(expires=expires))
        self.snapshot: Metadata[Snapshot] = Metadata(Snapshot(expires=expires))
        self.timestamp: Metadata[Timestamp] = Metadata(Timestamp(expires=expires))
        self.write_root()
        self.publish(bump=False)

    # --- building and signing -------------------------------------------------------------
    def expiry(self, delta: timedelta | None = None) -> datetime:
        return datetime.now(UTC) + (self.expires_in if delta is None else delta)

    def sign(
        self, md: Metadata[Any], role: str, signers: list[CryptoSigner] | None = None
    ) -> bytes:
        """Sign ``md`` as ``role`` (by default with all of that role's keys); its bytes."""
        md.signatures.clear()
        for signer in self.signers[role] if signers is None else signers:
            md.sign(signer, append=True)
        return md.to_bytes(JSONSerializer(compact=False))

    def write_root(self, signers: list[CryptoSigner] | None = None) -> bytes:
        data = self.sign(self.root, "root", signers)
        (self.metadata_dir / f"{self.root.signed.version}.root.json").write_bytes(data)
        return data

    @property
    def trusted_root(self) -> bytes:
        """The first root: what a device ships with."""
        return (self.metadata_dir / "1.root.json").read_bytes()

    def add_target(
        self, path: str, data: bytes, custom: dict[str, Any] | None = None
    ) -> TargetFile:
        """Store an artifact under its hash-prefixed name and list it in targets."""
        target = TargetFile.from_data(path, data, ["sha256"])
        if custom is not None:
            target.unrecognized_fields["custom"] = custom
        self.targets.signed.targets[path] = target
        self.artifact_path(path).parent.mkdir(parents=True, exist_ok=True)
        self.artifact_path(path).write_bytes(data)
        return target

    def artifact_path(self, path: str) -> Path:
        """Where the mirror keeps a target's bytes (``<dir>/<sha256>.<basename>``)."""
        sha = self.targets.signed.targets[path].hashes["sha256"]
        directory, _, basename = path.rpartition("/")
        return self.targets_dir / directory / f"{sha}.{basename}"

    def publish(
        self,
        *,
        bump: bool = True,
        targets_signers: list[CryptoSigner] | None = None,
        timestamp_expires: datetime | None = None,
    ) -> None:
        """Write a new repository state: targets, snapshot and timestamp, each one version
        up (the first call writes version 1 of each)."""
        if bump:
            self.targets.signed.version += 1
            self.snapshot.signed.version += 1
            self.timestamp.signed.version += 1
        for md in (self.targets, self.snapshot):
            md.signed.expires = self.expiry()
        self.timestamp.signed.expires = timestamp_expires or self.expiry()
        self.write_targets(signers=targets_signers)
        self.snapshot.signed.meta["targets.json"] = MetaFile(version=self.targets.signed.version)
        self.write_snapshot()
        self.timestamp.signed.snapshot_meta = MetaFile(version=self.snapshot.signed.version)
        self.write_timestamp()

    def write_targets(self, signers: list[CryptoSigner] | None = None) -> bytes:
        data = self.sign(self.targets, "targets", signers)
        (self.metadata_dir / f"{self.targets.signed.version}.targets.json").write_bytes(data)
        return data

    def write_snapshot(self) -> bytes:
        data = self.sign(self.snapshot, "snapshot")
        (self.metadata_dir / f"{self.snapshot.signed.version}.snapshot.json").write_bytes(data)
        return data

    def write_timestamp(self) -> bytes:
        data = self.sign(self.timestamp, "timestamp")
        (self.metadata_dir / "timestamp.json").write_bytes(data)
        return data

    def metadata_file(self, name: str) -> Path:
        return self.metadata_dir / name


# --- the HTTP server ----------------------------------------------------------------------


@dataclass
class Faults:
    """Misbehaviour per URL path (e.g. ``/targets/tiny/2/<sha>.model.tar``)."""

    extra_bytes: dict[str, int] = field(default_factory=dict)  # send N more bytes, no length
    # Cut the body after N bytes, one entry per request (the first request uses the first).
    drop_after: dict[str, list[int]] = field(default_factory=dict)
    ignore_range: set[str] = field(default_factory=set)  # answer 200 with everything
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(folder: Path, faults: Faults) -> type[http.server.BaseHTTPRequestHandler]:
    root = folder.resolve()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            with faults.lock:
                faults.requests.append((path, self.headers.get("Range")))
                extra = faults.extra_bytes.get(path)
                drops = faults.drop_after.get(path)
                drop = drops.pop(0) if drops else None
                ignore_range = path in faults.ignore_range
            file = (root / path.lstrip("/")).resolve()
            if root not in file.parents or not file.is_file():
                self._empty(404)
                return
            size = file.stat().st_size
            start, end = 0, size - 1
            status = 200
            ranged = None if ignore_range else _RANGE.match(self.headers.get("Range", ""))
            if ranged is not None:
                start = int(ranged.group(1))
                end = min(int(ranged.group(2)), size - 1) if ranged.group(2) else size - 1
                if start >= size:
                    self._empty(416, {"Content-Range": f"bytes */{size}"})
                    return
                status = 206
            count = end - start + 1
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            if extra is not None:
                # Delimited by closing the connection, so only the client's own count can
                # tell where the signed artifact ends.
                self.send_header("Connection", "close")
                self.close_connection = True
            else:
                self.send_header("Content-Length", str(count))
            self.end_headers()
            with file.open("rb") as f:
                if drop is not None:
                    f.seek(start)
                    self.wfile.write(f.read(min(drop, count)))
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.connection.sendfile(f, start, count)
            if extra is not None:
                self.wfile.write(b"\0" * extra)

        def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up mid-body is what the fault tests do on purpose


class RepoServer:
    """``folder`` over loopback HTTP in a background thread, with fault hooks."""

    def __init__(self, folder: Path, *, port: int = 0) -> None:
        self.faults = Faults()
        self._server = _QuietServer(("127.0.0.1", port), _handler(folder, self.faults))
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metadata_url(self) -> str:
        return f"{self.url}/metadata/"

    @property
    def targets_url(self) -> str:
        return f"{self.url}/targets/"

    def url_path(self, repo: TufRepo, target: str) -> str:
        """The URL path a target's artifact is served at."""
        return "/" + repo.artifact_path(target).relative_to(repo.folder).as_posix()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tar_folder(folder: Path) -> bytes:
    """An ORT GenAI model folder as the archive an ort-genai target carries."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                info = tar.gettarinfo(str(path), arcname=path.relative_to(folder).as_posix())
                info.mtime = 0  # the same folder always makes the same bytes
                with path.open("rb") as f:
                    tar.addfile(info, f)
    return buffer.getvalue()


class UpdateWorld:
    """A signed repository on loopback HTTP and a real agent (no MQTT) that updates from it.

    Desired state goes in through ``Agent.on_desired`` (the same path MQTT uses); the
    manager is stepped with ``reconcile()`` so each test decides when things happen.
    """

    def __init__(
        self,
        folder: Path,
        *,
        factory: Path,
        runtime: str = "ort-genai",
        model_name: str = "tiny",
        thresholds: dict[str, int] | None = None,
        expires_in: timedelta = timedelta(days=7),
        **updates: Any,
    ) -> None:
        self.folder = folder
        self.repo = TufRepo(folder / "repo", thresholds=thresholds, expires_in=expires_in)
        self.server = RepoServer(self.repo.folder)
        self.trusted_root = folder / "trusted-root.json"
        self.trusted_root.write_bytes(self.repo.trusted_root)
        self.state_dir = folder / "state"
        self.model_name = model_name
        self.factory = factory
        self.runtime = runtime
        # The prompt is pinned: the tiny test models (seeds 0, 2, 4) answer it with clean text.
        self.mqtt: dict[str, Any] | None = None  # set to connect the agent to a broker
        self.updates: dict[str, Any] = {
            "confirm_after_s": 0,
            "health_prompt": "Reply with one short sentence.",
            "health_max_tokens": 8,
            **updates,
        }
        self._desired_version = 0

    def config(self) -> AgentConfig:
        model: dict[str, Any] = {"name": self.model_name, "runtime": self.runtime}
        model["path"] = str(self.factory)
        if self.runtime == "llama.cpp":
            model.update(n_ctx=512, n_threads=2, mlock=False)
        return AgentConfig.model_validate(
            {
                "device_id": "dev-updates",
                "device_class": "cpu-x86",
                "state_dir": str(self.state_dir),
                "mqtt": self.mqtt,
                "models": [model],
                "updates": {
                    "enabled": True,
                    "metadata_url": self.server.metadata_url,
                    "targets_url": self.server.targets_url,
                    "trusted_root": str(self.trusted_root),
                    **self.updates,
                },
            }
        )

    def start_agent(self) -> Agent:
        """A fresh agent process, as far as the state folder can tell (an agent start)."""
        agent = Agent(self.config(), root=self.folder)
        agent.load_models()
        return agent

    def want(
        self, agent: Agent, target: str | None, version: str = "2", rollout: int | None = None
    ) -> None:
        """Send a desired document whose ``model`` asks for ``target`` (None: nothing)."""
        self._desired_version += 1
        model = None
        if target is not None:
            model = {
                "name": self.model_name,
                "target": target,
                "version": version,
                "rollout": rollout,
            }
        agent.on_desired(
            Desired(device_id="dev-updates", version=self._desired_version, state={"model": model})
        )

    def events(self, agent: Agent, name: str = "model_install") -> list[dict[str, Any]]:
        """Bodies of the agent's outbox events called ``name``, oldest first."""
        bodies: list[dict[str, Any]] = []
        after: tuple[int, int] | None = None
        while batch := agent.outbox.read_batch(after, max_records=500, max_bytes=1 << 30):
            bodies += [r.body for r in batch if r.kind == "event" and r.name == name]
            after = (batch[-1].epoch, batch[-1].seq)
        return bodies

    def artifact_requests(self) -> list[tuple[str, str | None]]:
        return [r for r in self.server.faults.requests if r[0].startswith("/targets/")]

    def close(self) -> None:
        self.server.stop()


if __name__ == "__main__":
    server = RepoServer(Path(sys.argv[1]), port=int(sys.argv[2]))
    print(f"serving {sys.argv[1]} on {server.url}", flush=True)
    threading.Event().wait()
