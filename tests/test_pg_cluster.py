"""The tests' PostgreSQL without a prepared server: with nothing answering at the default
URL a throwaway cluster from Debian's postgresql package serves a usable ``test`` database
and is stopped after the session, also when a test failed. Whether a server runs at
127.0.0.1:5432 on this machine does not matter: the default URL is pointed at a port that
refuses connections."""

import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests import pg_cluster
from tests.pg_cluster import ClusterError, answers, resolve_server

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A PostgreSQL URL whose port is bound but not listening: every connection is refused
    (nothing else can take the port while the test holds it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        yield f"postgresql://postgres@127.0.0.1:{port}/test"


def _round_trip(url: str) -> list[tuple[int, str]]:
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("CREATE TABLE t (id int PRIMARY KEY, name text)")
        db.execute("INSERT INTO t VALUES (1, 'edge-1'), (2, 'edge-2')")
        return db.execute("SELECT id, name FROM t ORDER BY id").fetchall()


def test_nothing_answering_starts_a_throwaway_cluster_that_stop_removes(
    refused_url: str,
) -> None:
    """With no URL in the environment and nothing at the default, a cluster is started on
    another port with a usable ``test`` database (owned by the postgres user when run as
    root); a server that answers at the default is used as is; ``stop`` ends the server
    and removes its folder."""
    url, cluster = resolve_server(None, refused_url)
    assert cluster is not None
    try:
        assert url == cluster.url != refused_url
        assert url.endswith("/test")
        assert _round_trip(url) == [(1, "edge-1"), (2, "edge-2")]
        if os.geteuid() == 0:
            assert cluster.owner == "postgres"
            assert cluster.data_dir.stat().st_uid != 0
        assert resolve_server(None, cluster.url) == (cluster.url, None)
    finally:
        cluster.stop()
    assert not cluster.running()
    assert not cluster.folder.exists()
    assert answers(url) is not None
    cluster.stop()  # a second stop is harmless


def test_an_unreachable_url_from_the_environment_is_an_error(refused_url: str) -> None:
    """A URL set in EDGEFLEET_TEST_POSTGRES_URL that refuses connections fails with the
    variable and the URL named (its password masked), instead of starting a cluster."""
    with_password = refused_url.replace("postgres@", "postgres:s3cret-pw@")
    with pytest.raises(ClusterError, match="EDGEFLEET_TEST_POSTGRES_URL") as caught:
        resolve_server(with_password, refused_url)
    assert refused_url.replace("postgres@", "postgres:***@") in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)


def test_the_session_fixture_stops_its_cluster_after_a_failing_run(
    refused_url: str, tmp_path: Path
) -> None:
    """A pytest run with no EDGEFLEET_TEST_POSTGRES_URL and nothing at the default URL gets
    a per-test database on a throwaway cluster through ``postgres_url``; the run's test
    fails, and the cluster is stopped and its folder gone when pytest exits."""
    record = tmp_path / "seen.txt"
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text(
        textwrap.dedent(f"""
            from tests import pg_cluster
            from tests.conftest import postgres_server, postgres_url  # noqa: F401

            pg_cluster.DEFAULT_URL = {refused_url!r}
            """)
    )
    (suite / "test_uses_postgres.py").write_text(
        textwrap.dedent(f"""
            import psycopg
            from tests import pg_cluster

            def test_fails_after_using_the_database(postgres_url: str) -> None:
                with psycopg.connect(postgres_url, autocommit=True) as db:
                    db.execute("CREATE TABLE t (n int)")
                    db.execute("INSERT INTO t VALUES (42)")
                    (n,) = db.execute("SELECT n FROM t").fetchone()
                    folder = db.execute("SHOW unix_socket_directories").fetchone()[0]
                with open({str(record)!r}, "w") as out:
                    out.write(f"{{postgres_url}}\\n{{n}}\\n{{folder}}\\n")
                raise AssertionError("this run must fail")
            """)
    )
    env = {k: v for k, v in os.environ.items() if k != pg_cluster.ENV_URL}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(suite), "-q", "-p", "no:cacheprovider",
         "--rootdir", str(suite)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 failed" in done.stdout
    used, n, folder = record.read_text().splitlines()
    assert n == "42"
    assert used.startswith("postgresql://postgres@127.0.0.1:")
    assert not used.startswith(refused_url.rsplit("/", 1)[0] + "/")
    assert Path(folder).name.startswith("edgefleet-pg-")
    assert not Path(folder).exists()
    assert answers(used.rsplit("/", 1)[0] + "/test") is not None
