"""The controller over HTTPS (``http_tls``) with a certificate made by the project's CA, and
the agent's TUF client verifying it with ``updates.ca_file``: real uvicorn on loopback,
real certificates, refusals for another CA, plaintext, old TLS and unusable files; and the
proxy headers the controller believes (none unless ``forwarded_allow_ips`` names a proxy)."""

import os
import re
import signal
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from sqlmodel import select
from typer.testing import CliRunner

from controller.app import create_app
from controller.auth.credentials import create_api_token
from controller.auth.tables import LoginFailure
from controller.auth.users import create_user
from controller.cli.main import app as cli_app
from controller.cli.serve import base_url, plaintext_beyond_loopback, server_config
from controller.db import session_scope
from controller.pki.https import server_context
from controller.services import Services
from controller.settings import Settings, load_settings
from controller.updates.repository import TufRepository
from edge_agent.config import ConfigError, UpdatesConfig, load_config
from edge_agent.updates.client import TufClient
from edge_agent.updates.decisions import RepositoryUnreachable
from edge_agent.updates.manager import repository_client
from shared.broker_url import Tls, TlsConfigError
from tests.conftest import free_port, wait_for
from tests.pki_world import TestCa
from tests.procs import Proc, processes

PASSPHRASE = "https tests passphrase"


@dataclass
class Https:
    url: str
    ca: TestCa
    other_ca: TestCa
    token: str
    repo: TufRepository
    services: Services


def _settings(root: Path, ca: TestCa, **extra: Any) -> Settings:
    cert_file, key_file = ca.server(["127.0.0.1", "localhost"], name="controller")
    (root / "passphrase").write_text(PASSPHRASE)
    return load_settings(
        None,
        environment="development",
        database_url=f"sqlite:///{root / 'controller.db'}",
        http_host="127.0.0.1",
        http_port=free_port(),
        http_tls={"cert_file": str(cert_file), "key_file": str(key_file)},
        updates={
            "repo_dir": str(root / "repo"),
            "keys_dir": str(root / "keys"),
            "passphrase_file": str(root / "passphrase"),
            "max_upload_bytes": 1024 * 1024,
        },
        **extra,
    )


@contextmanager
def serving(settings: Settings, services: Services) -> Iterator[str]:
    """The controller in uvicorn, configured as ``edgefleet serve`` does; its base URL."""
    import uvicorn

    server = uvicorn.Server(server_config(settings, create_app(settings, services=services)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 30, what="uvicorn to start")
        yield base_url(settings)
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def https(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Https]:
    root = tmp_path_factory.mktemp("https")
    ca = TestCa(root / "ca")
    other = TestCa(root / "other-ca", name="someone else's CA")
    settings = _settings(root, ca)
    repo = TufRepository.from_settings(settings)
    repo.initialize(now=datetime.now(UTC))
    services = Services.create(settings)
    with session_scope(services.engine) as session:
        operator = create_user(
            session, username="op", password="operator-password", role="operator"
        )
        token = create_api_token(session, operator, name="tests")
    with serving(settings, services) as url:
        yield Https(url, ca, other, token, repo, services)


def _tuf_client(https: Https, tmp_path: Path, ca_file: Path) -> TufClient:
    (tmp_path / "1.root.json").write_bytes(https.repo.root_bytes(1))
    config = UpdatesConfig(
        enabled=True,
        metadata_url=f"{https.url}/tuf/metadata/",
        targets_url=f"{https.url}/tuf/targets/",
        trusted_root=tmp_path / "1.root.json",
        ca_file=ca_file,
    )
    assert config.trusted_root is not None
    return TufClient(
        metadata_dir=tmp_path / "tuf",
        metadata_url=str(config.metadata_url),
        targets_url=str(config.targets_url),
        trusted_root=config.trusted_root,
        http=repository_client(config),
        max_artifact_bytes=1024 * 1024,
        clock=time.time,
    )


def test_serve_says_https_when_tls_is_set(https: Https) -> None:
    """With http_tls the controller's URL is https://, and a client trusting the project's
    CA gets its health answer over TLS 1.2 or newer."""
    assert https.url.startswith("https://127.0.0.1:")
    with httpx.Client(verify=Tls(https.ca.ca_file).context()) as client:
        response = client.get(f"{https.url}/healthz")
        assert response.status_code == 200
        stream = response.extensions["network_stream"]
        version = stream.get_extra_info("ssl_object").version()
    assert version in ("TLSv1.2", "TLSv1.3")


def test_agent_tuf_client_installs_over_https_with_updates_ca_file(
    https: Https, tmp_path: Path
) -> None:
    """A model uploaded over HTTPS is refreshed and downloaded by the agent's TUF client,
    whose HTTP verifies the controller's certificate against updates.ca_file."""
    data = os.urandom(200_000)
    verify = Tls(https.ca.ca_file).context()
    response = httpx.post(
        f"{https.url}/api/models",
        params={"name": "tls-model", "version": "1.0", "runtime": "onnx", "filename": "m.onnx"},
        content=data,
        headers={"Authorization": f"Bearer {https.token}"},
        verify=verify,
        timeout=30,
    )
    assert response.status_code == 201, response.text
    client = _tuf_client(https, tmp_path, https.ca.ca_file)
    client.refresh()
    target = client.target("tls-model/1.0/m.onnx")
    (tmp_path / "slot").mkdir()
    client.download(target, tmp_path / "slot" / "m.onnx")
    assert (tmp_path / "slot" / "m.onnx").read_bytes() == data


def test_agent_refuses_a_controller_certificate_from_another_ca(
    https: Https, tmp_path: Path
) -> None:
    """With updates.ca_file naming another CA, the refresh fails on certificate verification
    and nothing is fetched: the device keeps its model and says why."""
    client = _tuf_client(https, tmp_path, https.other_ca.ca_file)
    with pytest.raises(RepositoryUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
        client.refresh()
    assert not (tmp_path / "tuf" / "timestamp.json").exists()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
def test_plaintext_and_old_tls_are_refused(https: Https) -> None:
    """The HTTPS port answers no plaintext request, and a client limited to TLS 1.1 gets
    no handshake."""
    plain = https.url.replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{plain}/healthz", timeout=5)
    old = Tls(https.ca.ca_file).context()
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{https.url}/healthz", verify=old, timeout=5)


def _failed_login_from(url: str, ca: TestCa, forwarded_for: str) -> None:
    with httpx.Client(base_url=url, verify=Tls(ca.ca_file).context()) as client:
        page = client.get("/login")
        found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert found, page.text
        response = client.post(
            "/login",
            data={"username": "op", "password": "wrong", "csrf_token": found.group(1)},
            headers={"X-Forwarded-For": forwarded_for, "X-Forwarded-Proto": "http"},
        )
        assert response.status_code in (400, 401, 403), response.text


def _failure_addresses(services: Services) -> list[str]:
    with session_scope(services.engine) as session:
        return [f.client_ip for f in session.exec(select(LoginFailure)).all()]


def test_forwarded_headers_are_ignored_by_default(https: Https) -> None:
    """Without forwarded_allow_ips a client's X-Forwarded-For is not believed: a failed
    login is counted against the connection's own address."""
    _failed_login_from(https.url, https.ca, "203.0.113.7")
    assert "203.0.113.7" not in _failure_addresses(https.services)
    assert "127.0.0.1" in _failure_addresses(https.services)


def test_forwarded_for_is_believed_from_a_listed_proxy(tmp_path: Path) -> None:
    """With the proxy's address in forwarded_allow_ips, the client address it forwards is
    the one login throttling counts."""
    ca = TestCa(tmp_path / "ca")
    settings = _settings(tmp_path, ca, forwarded_allow_ips=["127.0.0.1"])
    services = Services.create(settings)
    with session_scope(services.engine) as session:
        create_user(session, username="op", password="operator-password", role="operator")
    with serving(settings, services) as url:
        _failed_login_from(url, ca, "203.0.113.7")
    assert _failure_addresses(services) == ["203.0.113.7"]


def test_forwarded_allow_ips_refuses_wildcards_and_names() -> None:
    """forwarded_allow_ips takes addresses and networks only: '*' (anyone may forge its
    address) and host names are refused with the value named."""
    for bad in ("*", "proxy.example"):
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            load_settings(None, environment="development", forwarded_allow_ips=[bad])
    settings = load_settings(None, environment="development", forwarded_allow_ips=["10.0.0.0/8"])
    config = server_config(settings, object())
    assert config.proxy_headers and config.forwarded_allow_ips == "10.0.0.0/8"
    assert not server_config(load_settings(None, environment="development"), object()).proxy_headers


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    return TestCa(tmp_path / "ca").server(["127.0.0.1"], name="controller")


def test_unusable_certificate_files_are_named(pair: tuple[Path, Path], tmp_path: Path) -> None:
    """A missing file, a key that is not the certificate's, an encrypted key and a
    certificate that is not PEM each fail with the setting and the file named."""
    cert_file, key_file = pair
    with pytest.raises(TlsConfigError, match=f"http_tls.cert_file {tmp_path}/nope.crt: no such"):
        server_context(tmp_path / "nope.crt", key_file)
    with pytest.raises(TlsConfigError, match=f"http_tls.key_file {tmp_path}/nope.key: no such"):
        server_context(cert_file, tmp_path / "nope.key")
    _, other_key = TestCa(tmp_path / "other").server(["127.0.0.1"], name="other")
    with pytest.raises(TlsConfigError, match=f"http_tls.key_file {other_key}: not the private"):
        server_context(cert_file, other_key)
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"a passphrase"),
        )
    )
    with pytest.raises(TlsConfigError, match=f"http_tls.key_file {locked}: the key is encrypted"):
        server_context(cert_file, locked)
    with pytest.raises(TlsConfigError, match=f"http_tls.cert_file {key_file}: not a PEM cert"):
        server_context(key_file, key_file)


def test_serve_exits_naming_an_unusable_certificate(tmp_path: Path) -> None:
    """`edgefleet serve` with an http_tls.cert_file that does not exist stops with status 2
    and the file named, before anything starts."""
    (tmp_path / "passphrase").write_text(PASSPHRASE)
    config = tmp_path / "controller.yaml"
    config.write_text(
        f"environment: development\n"
        f"database_url: sqlite:///{tmp_path / 'c.db'}\n"
        f"http_tls: {{cert_file: {tmp_path / 'missing.crt'}}}\n"
        f"updates: {{passphrase_file: {tmp_path / 'passphrase'}}}\n"
    )
    result = CliRunner().invoke(cli_app, ["serve", "-c", str(config)])
    assert result.exit_code == 2, result.output
    assert f"http_tls.cert_file {tmp_path / 'missing.crt'}: no such file" in result.output


def test_serve_process_answers_https_and_prints_its_url(tmp_path: Path) -> None:
    """`edgefleet serve` with http_tls prints its https:// URL and answers over TLS with
    the certificate the project's CA signed, then stops cleanly on SIGTERM."""
    ca = TestCa(tmp_path / "ca")
    cert_file, key_file = ca.server(["127.0.0.1"], name="controller")
    (tmp_path / "passphrase").write_text(PASSPHRASE)
    port = free_port()
    config = tmp_path / "controller.yaml"
    config.write_text(
        f"environment: development\n"
        f"database_url: sqlite:///{tmp_path / 'c.db'}\n"
        f"http_port: {port}\n"
        f"http_tls: {{cert_file: {cert_file}, key_file: {key_file}}}\n"
        f"updates: {{passphrase_file: {tmp_path / 'passphrase'}, repo_dir: {tmp_path / 'repo'},"
        f" keys_dir: {tmp_path / 'keys'}}}\n"
    )
    verify = Tls(ca.ca_file).context()

    def healthy() -> bool:
        try:
            return httpx.get(f"https://127.0.0.1:{port}/healthz", verify=verify).is_success
        except httpx.HTTPError:
            return False

    with processes(tmp_path) as procs:
        procs.append(Proc("controller", ["-m", "controller", "serve", "-c", str(config)], tmp_path))
        wait_for(healthy, 60, what="the controller over HTTPS")
        assert f"serving https://127.0.0.1:{port} " in procs[0].log()
        assert procs[0].stop(signal.SIGTERM) == 0


def test_plain_http_beyond_loopback_is_flagged() -> None:
    """serve warns of plain HTTP on a routable address, not on loopback, with http_tls, or
    behind a listed reverse proxy."""
    cases = [
        ({"http_host": "0.0.0.0"}, True),
        ({"http_host": "10.1.2.3"}, True),
        ({"http_host": "127.0.0.1"}, False),
        ({"http_host": "::1"}, False),
        ({"http_host": "0.0.0.0", "http_tls": {"cert_file": "c.pem"}}, False),
        ({"http_host": "0.0.0.0", "forwarded_allow_ips": ["10.0.0.1"]}, False),
    ]
    for overrides, expected in cases:
        settings = load_settings(None, environment="development", **overrides)
        assert plaintext_beyond_loopback(settings) is expected, overrides


def test_key_file_without_cert_file_is_refused() -> None:
    """http_tls.key_file alone is a configuration error, not plain HTTP in disguise."""
    with pytest.raises(ValueError, match=r"http_tls\.key_file set without http_tls\.cert_file"):
        load_settings(None, environment="development", http_tls={"key_file": "k.pem"})


def test_agent_updates_ca_file_resolves_and_fails_at_load(tmp_path: Path) -> None:
    """updates.ca_file resolves against the config's folder; an unusable one fails at load
    naming it, and one with only http:// URLs is refused as security that gives none."""
    ca = TestCa(tmp_path / "ca")
    (tmp_path / "root.json").write_text("{}")
    base = (
        "device_id: dev-1\nmqtt: null\nupdates:\n  enabled: true\n"
        "  metadata_url: https://controller.example/tuf/metadata/\n"
        "  targets_url: https://controller.example/tuf/targets/\n  trusted_root: root.json\n"
    )
    path = tmp_path / "agent.yaml"
    path.write_text(base + "  ca_file: ca/ca.crt\n")
    assert load_config(path).updates.ca_file == ca.ca_file.resolve()
    path.write_text(base + "  ca_file: ca/missing.crt\n")
    with pytest.raises(ConfigError, match=r"updates.ca_file: CA file .*ca/missing.crt"):
        load_config(path)
    path.write_text(base.replace("https://", "http://") + "  ca_file: ca/ca.crt\n")
    with pytest.raises(ConfigError, match="neither metadata_url nor targets_url is https"):
        load_config(path)
