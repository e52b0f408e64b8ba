"""The PostgreSQL the tests use: the server named by ``EDGEFLEET_TEST_POSTGRES_URL``, else
a passwordless local one at the default URL, else a throwaway cluster made for the run from
Debian's ``postgresql`` package (``initdb`` in a temporary folder, a free loopback port,
trust authentication, a ``test`` database; ``pg_ctl stop`` and the folder removed after).

``initdb`` refuses to run as root, so as root the cluster belongs to the ``postgres`` system
user the package creates, and its commands run through ``runuser``.
"""

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

ENV_URL = "EDGEFLEET_TEST_POSTGRES_URL"
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
CLUSTER_USER = "postgres"  # the system user Debian's postgresql package creates
SUPERUSER = "postgres"  # the cluster's own superuser: the default URL's user name
DATABASE = "test"


class ClusterError(RuntimeError):
    """No PostgreSQL could be found or started; the message says what to install or set."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _version(bin_dir: str) -> tuple[int, ...]:
    """``/usr/lib/postgresql/15/bin`` -> (15,): the newest installed major version wins."""
    name = Path(bin_dir).parent.name
    return tuple(int(part) for part in re.findall(r"\d+", name)) or (0,)


def server_bin_dir() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl``: on PATH, else Debian's
    ``/usr/lib/postgresql/<major>/bin`` (the package keeps them off PATH)."""
    on_path = shutil.which("initdb")
    if on_path is not None and shutil.which("pg_ctl") is not None:
        return Path(on_path).parent
    found = [
        str(Path(p).parent)
        for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")
        if Path(p).with_name("pg_ctl").exists()
    ]
    if not found:
        raise ClusterError(
            "no PostgreSQL server binaries (initdb, pg_ctl): install Debian's postgresql "
            f"package (scripts/dev test does) or set {ENV_URL} to a server's URL"
        )
    return Path(max(found, key=_version))


def redacted(url: str) -> str:
    """``url`` with any password replaced, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def answers(url: str, timeout_s: int = 3) -> str | None:
    """None when ``url`` takes a connection, else why not (one line)."""
    try:
        with psycopg.connect(url, connect_timeout=timeout_s):
            return None
    except psycopg.Error as e:
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


@dataclass
class PgCluster:
    """A PostgreSQL cluster in its own temporary folder, listening on 127.0.0.1:``port``
    and on a unix socket in that folder; ``stop`` ends the server and removes the folder."""

    folder: Path
    port: int
    bin_dir: Path
    owner: str | None  # the user the server runs as when we are root; None: ourselves

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    @property
    def log_path(self) -> Path:
        return self.folder / "server.log"

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"

    @classmethod
    def start(cls) -> "PgCluster":
        """initdb, start and create the ``test`` database; on any failure nothing is left
        running and the error says what the server logged."""
        bin_dir = server_bin_dir()
        owner = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(CLUSTER_USER)
            except KeyError:
                raise ClusterError(
                    f"initdb refuses to run as root and there is no '{CLUSTER_USER}' user: "
                    f"install Debian's postgresql package or set {ENV_URL}"
                ) from None
            owner = CLUSTER_USER
        # Not under pytest's basetemp: that is private to the user running pytest, and
        # the cluster's owner must be able to reach its folder.
        folder = Path(tempfile.mkdtemp(prefix="edgefleet-pg-"))
        if owner is not None:
            shutil.chown(folder, owner, owner)
        cluster = cls(folder, _free_port(), bin_dir, owner)
        try:
            cluster._initdb()
            cluster._pg_ctl_start()
            with psycopg.connect(cluster.admin_url, autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{DATABASE}"')
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @property
    def admin_url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.owner is not None:
            command = ["runuser", "-u", self.owner, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            raise ClusterError(
                f"{' '.join(args[:2])} failed ({done.returncode}): "
                f"{done.stderr.strip() or done.stdout.strip()}\n{log[-2000:]}"
            )

    def _initdb(self) -> None:
        self._run(
            "initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust",
            "--encoding=UTF8", "--no-sync",
        )  # fmt: skip

    def _pg_ctl_start(self) -> None:
        # A throwaway cluster: no fsync; listen on loopback only, socket in our own folder
        # (the system's /var/run/postgresql may belong to a running server or be missing).
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            "pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_path), "-w",
            "-t", "60", "-o", options,
        )  # fmt: skip

    def running(self) -> bool:
        """Whether the server's pid file is there (what ``pg_ctl`` goes by too)."""
        return (self.data_dir / "postmaster.pid").exists()

    def stop(self) -> None:
        """``pg_ctl stop`` (fast: open sessions are ended) and the folder removed; safe to
        call twice, or after a failed start."""
        if self.running():
            try:
                self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w")
            except ClusterError:
                if answers(self.admin_url) is None:
                    raise  # still serving: its folder stays, for a look at its log
                # it had died already, leaving its pid file behind
        shutil.rmtree(self.folder, ignore_errors=True)


def resolve_server(
    env_url: str | None, default_url: str = DEFAULT_URL
) -> tuple[str, PgCluster | None]:
    """The URL of a database the tests may use and the cluster started for it, if any.

    A URL set in the environment is used as given (an unreachable one is an error, not a
    reason to start something else); else the default URL when it takes a connection; else
    a throwaway cluster, which the caller stops.
    """
    if env_url:
        problem = answers(env_url)
        if problem is not None:
            raise ClusterError(
                f"PostgreSQL at {redacted(env_url)} ({ENV_URL}) unreachable: {problem}"
            )
        return env_url, None
    if answers(default_url) is None:
        return default_url, None
    cluster = PgCluster.start()
    return cluster.url, cluster


__all__ = [
    "DEFAULT_URL",
    "ENV_URL",
    "ClusterError",
    "PgCluster",
    "answers",
    "redacted",
    "resolve_server",
]
