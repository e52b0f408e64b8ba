"""The processes a drill runs: agents, and the controller it may kill and restart.

Agents are real ``python -m edge_agent run`` processes; the controller is either the
drill's own (``--embedded``: ``python -m controller serve`` on SQLite in the drill's work
folder), one started by an operator-given shell command (``--controller-cmd``), or a
remote one the drill cannot restart (controller-crash is skipped there).
"""

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

import yaml

from controller.api_client import ApiError, Target, request_json

T = TypeVar("T")
# The embedded controller's throwaway TUF key store lives and dies with the drill folder.
PASSPHRASE = "edgefleet offline drill embedded controller"  # noqa: S105
EMBEDDED_USER = "drill"


class DrillError(RuntimeError):
    """The drill could not set itself up (a process did not start, a call was refused)."""


def free_port() -> int:
    """A port nothing listens on, below the kernel's ephemeral range when one is free there.

    A port the kernel handed out for ``bind(0)`` is an ephemeral one: before the drill's
    process binds it (or binds it again after a restart), any outgoing connection on the
    machine may take it as its source port ("address already in use", seen in CI). Ports
    below the range are never handed out that way."""
    low, _high = _ephemeral_range()
    for _ in range(50):
        port = random.randrange(max(1024, low - 12000), low)  # noqa: S311  # not a secret
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll ``predicate`` until it returns something truthy; ``DrillError`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DrillError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Process:
    """A child process with its output in ``<log_dir>/<name>.log``."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, *, shell: bool = False) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("ab")
        try:
            self.popen = subprocess.Popen(
                argv if not shell else argv[0],
                shell=shell,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own group: a kill reaches a shell's children too
            )
        except BaseException:
            self._log.close()
            raise

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        """Signal the process group (even when its leader, a shell, already exited and left
        children behind), SIGKILL it after ``timeout``; safe to call twice."""
        try:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)
            if self.popen.poll() is None:
                try:
                    self.popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.popen.pid, signal.SIGKILL)
                    self.popen.wait()
        finally:
            self._log.close()


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


class ControllerHandle:
    """A controller the drill talks to; ``restartable`` says whether it can crash it."""

    url: str
    token: str
    restartable: bool = False
    tuf_root: Path | None = None  # trusted root on disk, for rollout drills

    def kill(self) -> None:
        raise DrillError("this controller is remote: the drill cannot stop it")

    def start(self) -> None:
        """Start (or restart) the controller and wait until it answers."""

    def close(self) -> None:
        """Stop whatever the drill started."""

    @property
    def target(self) -> Target:
        """Where the controller's API is and the token the drill uses there."""
        return Target(self.url, self.token)

    def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        timeout: float = 30,
    ) -> Any:
        """One API call (``controller.api_client``): the JSON answer, or ApiError."""
        return request_json(self.target, method, path, params=params, body=body, timeout=timeout)

    def ready(self) -> bool:
        try:
            self.call("GET", "/api/ingest/stats", timeout=3)
        except ApiError:
            return False
        return True


class RemoteController(ControllerHandle):
    """A controller somebody else runs (the demo's, or a fleet's)."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.token = token


class CommandController(ControllerHandle):
    """A controller started by the operator's ``--controller-cmd`` (kill -9 and rerun it)."""

    restartable = True

    def __init__(self, command: str, url: str, token: str, log_dir: Path) -> None:
        self.command = command
        self.url = url.rstrip("/")
        self.token = token
        self.log_dir = log_dir
        self.proc: Process | None = None
        self.runs = 0

    def start(self) -> None:
        self.proc = Process(f"controller-{self.runs}", [self.command], self.log_dir, shell=True)  # noqa: S604 - the operator's own command line
        self.runs += 1
        proc = self.proc
        try:
            wait_until(
                lambda: self.ready() or not proc.alive(),
                60,
                f"the controller at {self.url} (started by --controller-cmd)",
            )
            if not proc.alive():
                raise DrillError(f"--controller-cmd exited:\n{proc.log_tail()}")
        except BaseException:
            proc.stop()  # its own session: nobody else would ever stop it
            raise

    def kill(self) -> None:
        if self.proc is None:
            raise DrillError(
                f"the controller at {self.url} was not started by the drill: it cannot kill it"
            )
        self.proc.stop(signal.SIGKILL)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stop()


class EmbeddedController(ControllerHandle):
    """The drill's own ``controller serve`` on SQLite, on a fixed port, with an API token;
    with ``repository`` it also has a TUF repository (for rollout drills)."""

    restartable = True

    def __init__(
        self, workdir: Path, broker_url: str, *, protocol: str, repository: bool = False
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = ""
        self.config = workdir / "controller.yaml"
        self.runs = 0
        self.proc: Process | None = None
        settings: dict[str, Any] = {
            "environment": "development",
            "database_url": f"sqlite:///{workdir / 'controller.db'}",
            "broker": {
                "mode": "external",
                "url": broker_url,
                "protocol": protocol,
                "client_id": f"edgefleet-drill-{self.port}",
                "keepalive_s": 5,
            },
            "liveness_sweep_s": 0.5,
            "desired_republish_s": 1.0,
            "secure_cookies": False,
            "rollouts": {"tick_interval_s": 0.3},
            # Drill agents run this checkout's code: trust it, or attestation quarantines
            # them and a quarantined device may not use the cloud tier.
            "attestation": {
                "enrollment": "tofu",
                "trust_local_agent_code": True,
                "timeout_s": 60.0,
                "nonce_ttl_s": 120.0,
            },
        }
        if repository:
            passphrase = workdir / "passphrase"
            passphrase.write_text(PASSPHRASE + "\n")
            passphrase.chmod(0o600)
            settings["updates"] = {
                "repo_dir": str(workdir / "tuf"),
                "keys_dir": str(workdir / "keys"),
                "passphrase_file": str(passphrase),
            }
            self.tuf_root = workdir / "tuf" / "metadata" / "1.root.json"
        self.config.write_text(yaml.safe_dump(settings))

    def cli(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            _python("-m", "controller", *args, "--config", str(self.config)),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            raise DrillError(f"edgefleet {' '.join(args[:2])} failed: {done.stderr.strip()}")
        return done.stdout

    def bootstrap(self) -> None:
        """An admin and its API token in the fresh database."""
        self.cli(
            "admin", "create", "--username", EMBEDDED_USER, "--password-stdin",
            stdin="drill-" + os.urandom(12).hex() + "\n",
        )  # fmt: skip
        self.token = self.cli("token", "create", "--username", EMBEDDED_USER).strip()

    def start(self) -> None:
        self.proc = Process(
            f"controller-{self.runs}",
            _python("-m", "controller", "serve", "--config", str(self.config),
                    "--port", str(self.port), "--log-level", "warning"),
            self.workdir,
        )  # fmt: skip
        self.runs += 1
        proc = self.proc
        try:
            try:
                wait_until(lambda: self.ready() or not proc.alive(), 60, "the embedded controller")
            except DrillError:
                raise DrillError(
                    f"embedded controller did not come up:\n{proc.log_tail()}"
                ) from None
            if not proc.alive():
                raise DrillError(f"embedded controller exited:\n{proc.log_tail()}")
        except BaseException:
            proc.stop()  # its own session: nobody else would ever stop it
            raise

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.stop(signal.SIGKILL)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stop()


__all__ = [
    "CommandController",
    "ControllerHandle",
    "DrillError",
    "EmbeddedController",
    "Process",
    "RemoteController",
    "free_port",
    "port_open",
    "wait_until",
]
