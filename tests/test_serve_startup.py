"""`edgefleet serve` at start: the URL it answers on, a warning for each setting or state that
will bite later (and none otherwise), /healthz's tuf_signing before the timestamp expires,
and configuration errors that name the file and the key."""

import dataclasses
import os
import selectors
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from controller.app import create_app
from controller.attestation.service import DeviceIdentity
from controller.auth.credentials import create_api_token
from controller.auth.users import create_user
from controller.cli._startup import StartupFacts, gather_facts, startup_warnings
from controller.cli.common import describe_settings_error
from controller.cli.serve import informing_server, server_config, start_report
from controller.db import make_engine, session_scope
from controller.devices.tables import Device
from controller.migrations import init_db
from controller.services import Services
from controller.settings import Settings, load_settings
from controller.updates.keys import PASSPHRASE_ENV
from controller.updates.repository import TufRepository
from tests.conftest import free_port, wait_for

PASSPHRASE = "a-long-enough-test-passphrase"
CONFIG = Path("/etc/edgefleet/controller.yaml")


def _settings(root: Path, **extra: Any) -> Settings:
    """Settings for a controller whose files all live under ``root``."""
    updates = {"repo_dir": str(root / "repo"), "keys_dir": str(root / "keys")}
    updates |= extra.pop("updates", {})
    values: dict[str, Any] = {
        "environment": "development",
        "database_url": f"sqlite:///{root / 'controller.db'}",
        "http_port": free_port(),
        "broker": {"url": "mqtt://127.0.0.1:0"},
        "updates": updates,
    }
    return load_settings(None, **(values | extra))


# --- which warning, under which condition --------------------------------------------------
# A controller with nothing to warn about: a user, a repository it can sign, loopback broker.
QUIET = StartupFacts(
    users=1,
    has_passphrase=True,
    tuf_initialized=True,
    timestamp_expires="2026-12-08T07:00:00+00:00",
)
PRODUCTION = {
    "environment": "production",
    "broker": {"mode": "external", "url": "mqtts://broker.example.net"},
    "attestation": {"enrollment": "provisioned"},
}


@pytest.mark.parametrize(
    ("settings", "facts", "log_level", "expected"),
    [
        ({}, {}, "info", None),
        (PRODUCTION, {}, "info", None),
        ({}, {"users": 0}, "info", "edgefleet admin create --username admin --prompt -c " + str(CONFIG)),  # noqa: E501
        ({}, {"tuf_initialized": False, "has_passphrase": False}, "info", "no TUF key passphrase (updates.passphrase_file or EDGEFLEET_KEY_PASSPHRASE)"),  # noqa: E501
        ({}, {"tuf_initialized": False}, "info", None),
        ({}, {"signing_problem": "no key passphrase"}, "info", "the TUF timestamp cannot be re-signed: no key passphrase. It expires at 2026-12-08T07:00:00+00:00"),  # noqa: E501
        ({"broker": {"url": "mqtt://0.0.0.0:0"}}, {"broker_port": 41883}, "info", "the embedded broker listens on 0.0.0.0:41883, beyond this machine, and accepts anonymous clients"),  # noqa: E501
        ({"environment": "production", "attestation": {"enrollment": "provisioned"}}, {}, "info", "the embedded broker (127.0.0.1:0) accepts anonymous clients"),  # noqa: E501
        (PRODUCTION | {"attestation": {"enrollment": "tofu", "trust_local_agent_code": True}, "secure_cookies": False}, {}, "debug", "environment is production, but it runs with development settings: attestation.enrollment: tofu (any device's first key is trusted); attestation.trust_local_agent_code: true (the agent installed here is golden); secure_cookies: false (session cookies also sent over plain HTTP); --log-level debug"),  # noqa: E501
        ({"attestation": {"trust_local_agent_code": True}, "secure_cookies": False}, {}, "debug", None),  # noqa: E501
        (PRODUCTION | {"attestation": {}}, {}, "info", "attestation.enrollment is provisioned (the production default): only devices whose identity key was registered beforehand are trusted, any other is quarantined at its first birth (unknown_identity_key); no identity key is registered yet"),  # noqa: E501
        (PRODUCTION | {"attestation": {}}, {"identities": 3, "devices": 3}, "info", None),
        (PRODUCTION, {"devices": 3, "devices_without_identity": 2, "identities": 1}, "info", "attestation.enrollment is provisioned: only devices whose identity key was registered beforehand are trusted, any other is quarantined at its first birth (unknown_identity_key); 2 of 3 registered devices have no registered key"),  # noqa: E501
    ],
    ids=[
        "development-quiet",
        "production-quiet",
        "no-user",
        "no-passphrase-before-keys-init",
        "passphrase-before-keys-init",
        "cannot-re-sign-the-timestamp",
        "embedded-broker-beyond-loopback",
        "embedded-broker-in-production",
        "production-with-development-settings",
        "development-settings-in-development",
        "provisioned-by-default-no-keys",
        "provisioned-by-default-every-key-registered",
        "provisioned-devices-without-keys",
    ],
)  # fmt: skip
def test_each_warning_appears_under_its_condition_only(
    tmp_path: Path,
    settings: dict[str, Any],
    facts: dict[str, Any],
    log_level: str,
    expected: str | None,
) -> None:
    """From a controller with nothing to warn about, changing one setting or fact brings
    exactly its own warning (and an unchanged one, or the same in development, none)."""
    warnings = startup_warnings(
        _settings(tmp_path, **settings),
        dataclasses.replace(QUIET, **facts),
        config=CONFIG,
        log_level=log_level,
    )
    if expected is None:
        assert warnings == []
    else:
        assert len(warnings) == 1, warnings
        assert expected in warnings[0]


def test_facts_come_from_the_database_and_the_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Users, devices and identity keys are counted from the database, and the timestamp
    key is tried with the passphrase: missing, wrong and right each say so."""
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    settings = _settings(tmp_path)
    engine = make_engine(settings.database_url)
    init_db(engine)
    with session_scope(engine) as session:
        create_user(session, username="alice", password="correct-horse-battery", role="admin")
        for device_id in ("dev-1", "dev-2", "dev-3"):
            session.add(Device(id=device_id))
        session.add(DeviceIdentity(device_id="dev-1", public_key="k", key_id="i", how="api"))
    signed = datetime.now(UTC)
    TufRepository.from_settings(settings, passphrase=PASSPHRASE).initialize(now=signed)

    missing = gather_facts(engine, TufRepository.from_settings(settings), 1883)
    wrong = gather_facts(engine, TufRepository.from_settings(settings, passphrase="x" * 20), None)
    right = gather_facts(engine, TufRepository.from_settings(settings, passphrase=PASSPHRASE), None)
    engine.dispose()

    assert (missing.users, missing.devices, missing.devices_without_identity) == (1, 3, 2)
    assert (missing.identities, missing.broker_port, missing.tuf_initialized) == (1, 1883, True)
    assert missing.signing_problem is not None and "no key passphrase" in missing.signing_problem
    assert wrong.signing_problem is not None and "wrong passphrase" in wrong.signing_problem
    assert right.signing_problem is None and right.has_passphrase
    assert (
        right.timestamp_expires == (signed.replace(microsecond=0) + timedelta(days=1)).isoformat()
    )


# --- serve's own start, in-process and as the command -----------------------------------------
@contextmanager
def _served(settings: Settings, config: Path | None) -> Iterator[list[str]]:
    """The controller run as serve runs it (the informing server), yielding its report."""
    app = create_app(settings)
    report: list[str] = []
    server = informing_server(
        server_config(settings, app),
        lambda bound: report.extend(start_report(settings, app, bound, config=config)),
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: report, 60, what="serve's start report")
        yield report
    finally:
        server.should_exit = True
        thread.join(30)


def test_serve_reports_the_bound_url_after_its_warnings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once it listens, serve names every problem of a fresh production controller (no
    user, no passphrase, an anonymous embedded broker, provisioned enrollment with no key),
    then the console and API URL on the port it bound, last."""
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    settings = _settings(tmp_path, environment="production", secure_cookies=False)
    with _served(settings, tmp_path / "controller.yaml") as report:
        port = settings.http_port
        url = f"http://127.0.0.1:{port}"
        assert report[-1] == f"serving {url} (console {url}/console, API {url}/api)"
        warnings = report[:-1]
        prefixes = [
            "warning: no console user yet: create the first admin with 'edgefleet admin create",
            "warning: no TUF key passphrase",
            "warning: the embedded broker (127.0.0.1:",
            "warning: environment is production, but it runs with development settings",
            "warning: attestation.enrollment is provisioned (the production default)",
        ]
        assert len(warnings) == len(prefixes), warnings
        for line, prefix in zip(warnings, prefixes, strict=True):
            assert line.startswith(prefix), line
        assert f"--prompt -c {tmp_path / 'controller.yaml'}'" in warnings[0]
        assert "secure_cookies: false" in warnings[3]


def test_serve_says_only_where_it_serves_when_all_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`edgefleet serve` with a user, a signing passphrase and a loopback broker in
    development prints the URL line and no warning."""
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    (tmp_path / "passphrase").write_text(PASSPHRASE + "\n")
    port = free_port()
    config = tmp_path / "controller.yaml"
    config.write_text(
        "environment: development\n"
        f"database_url: sqlite:///{tmp_path / 'controller.db'}\n"
        f"http_port: {port}\n"
        "updates:\n"
        f"  repo_dir: {tmp_path / 'repo'}\n  keys_dir: {tmp_path / 'keys'}\n"
        f"  passphrase_file: {tmp_path / 'passphrase'}\n"
    )
    settings = load_settings(config)
    engine = make_engine(settings.database_url)
    init_db(engine)
    with session_scope(engine) as session:
        create_user(session, username="alice", password="correct-horse-battery", role="admin")
    engine.dispose()
    TufRepository.from_settings(settings).initialize(now=datetime.now(UTC))

    output = _serve_until_url(config)
    url = f"http://127.0.0.1:{port}"
    assert output == [f"edgefleet: serving {url} (console {url}/console, API {url}/api)"]


def _serve_until_url(config: Path, env: dict[str, str] | None = None) -> list[str]:
    """Run `edgefleet serve -c config`, read its output up to the URL line, stop it; the
    lines that start with ``edgefleet:``."""
    process = subprocess.Popen(
        [sys.executable, "-m", "controller", "serve", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != PASSPHRASE_ENV} | (env or {}),
    )
    assert process.stderr is not None
    lines: list[str] = []
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(process.stderr, selectors.EVENT_READ)
            while not any(line.startswith("edgefleet: serving ") for line in lines):
                assert selector.select(90), f"no URL line in 90 s: {lines}"
                line = process.stderr.readline()
                assert line, f"serve exited ({process.wait()}): {lines}"
                lines.append(line.rstrip("\n"))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return [line for line in lines if line.startswith("edgefleet:")]


# --- /healthz before the timestamp expires ---------------------------------------------------
def _health_after(tmp_path: Path, age: timedelta, passphrase: str | None) -> dict[str, Any]:
    """/healthz of a controller (real app, services and scheduler) whose TUF metadata was
    signed ``age`` ago, started with ``passphrase`` (None: none), once its refresh job ran."""
    settings = _settings(
        tmp_path,
        updates={} if passphrase is None else {"passphrase_file": str(tmp_path / "pp")},
    )
    if passphrase is not None:
        (tmp_path / "pp").write_text(passphrase)
    signed = datetime.now(UTC) - age
    repo = TufRepository.from_settings(settings, passphrase=PASSPHRASE)
    repo.initialize(now=signed)
    services = Services.create(settings)
    with session_scope(services.engine) as session:
        viewer = create_user(
            session, username="prom", password="correct-horse-battery", role="viewer"
        )
        token = create_api_token(session, viewer, name="prometheus")
    with TestClient(create_app(settings, services=services)) as client:
        wait_for(  # the job failed, or re-signed the timestamp
            lambda: (
                services.tuf_refresh_error is not None
                or (repo.timestamp_expires() or signed) > signed + timedelta(days=1)
            ),
            30,
            what="the tuf-refresh job's first run",
        )
        wait_for(lambda: services.ingest is not None and services.ingest.connected, 30)
        response = client.get("/healthz")
        metrics = client.get("/metrics", headers={"Authorization": f"Bearer {token}"}).text
        return {
            "code": response.status_code,
            "signed": signed,
            "metrics": metrics,
        } | response.json()


def _gauge(metrics: str, name: str) -> float:
    """The value of the unlabelled gauge ``name`` in a Prometheus text exposition."""
    values = [
        sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == name
    ]
    assert len(values) == 1, f"{name}: {values}"
    return values[0]


def test_healthz_warns_while_the_timestamp_is_due_and_cannot_be_signed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a passphrase, a timestamp past its re-signing point (13 of its 24 hours
    gone) makes /healthz a 200 'warning' with tuf_signing degraded, its expiry and why."""
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    health = _health_after(tmp_path, timedelta(hours=13), None)
    expires = health["signed"].replace(microsecond=0) + timedelta(days=1)
    assert (health["code"], health["status"]) == (200, "warning")
    assert health["tuf_signing"] == {
        "status": "degraded",
        "timestamp_expires": expires.isoformat(),
        "can_sign": False,
        "problem": f"no key passphrase (updates.passphrase_file or {PASSPHRASE_ENV})",
    }
    assert _gauge(health["metrics"], "edgefleet_tuf_can_sign") == 0
    assert _gauge(health["metrics"], "edgefleet_tuf_timestamp_expiry_timestamp_seconds") == (
        expires.timestamp()
    )


def test_healthz_fails_once_the_timestamp_expired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A timestamp that expired and cannot be re-signed makes /healthz 503, status degraded,
    tuf_signing expired."""
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    health = _health_after(tmp_path, timedelta(hours=25), None)
    assert (health["code"], health["status"]) == (503, "degraded")
    assert health["tuf_signing"]["status"] == "expired"


def test_healthz_stays_ok_when_the_job_can_re_sign(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the passphrase, the same due timestamp is re-signed at start by the scheduler's
    refresh job, and /healthz is ok with the new expiry a day ahead."""
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    health = _health_after(tmp_path, timedelta(hours=13), PASSPHRASE)
    assert (health["code"], health["status"]) == (200, "ok")
    signing = health["tuf_signing"]
    assert (signing["status"], signing["can_sign"]) == ("ok", True)
    assert _gauge(health["metrics"], "edgefleet_tuf_can_sign") == 1
    assert datetime.fromisoformat(signing["timestamp_expires"]) > datetime.now(UTC) + timedelta(
        hours=23
    )


# --- configuration errors --------------------------------------------------------------------
def _error(config: Path | None, **overrides: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        load_settings(config, **overrides)
    return describe_settings_error(caught.value, config)


def test_config_errors_name_the_file_and_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong value, an unknown key and a value from the environment are each one line
    naming where it came from and the key, without pydantic's class name or web link."""
    config = tmp_path / "controller.yaml"
    config.write_text("broker:\n  keepalive_s: 1\nhtp_port: 9000\n")
    monkeypatch.setenv("EDGEFLEET_INGEST_BATCH_SIZE", "0")
    message = _error(config)
    lines = message.splitlines()
    assert lines[0] == "invalid controller configuration (3 problems):"
    assert sorted(lines[1:]) == sorted(
        [
            "  EDGEFLEET_INGEST_BATCH_SIZE: ingest_batch_size:"
            " Input should be greater than or equal to 1",
            f"  {config}: broker.keepalive_s: Input should be greater than or equal to 5",
            f"  {config}: htp_port: unknown key (docs/configuration.md lists the keys)",
        ]
    )
    for leak in ("_Bound", "errors.pydantic.dev", "Value error", "For further information"):
        assert leak not in message


def test_serve_config_error_is_one_line_naming_file_and_key(tmp_path: Path) -> None:
    """`edgefleet serve` with a mistyped value exits 2 with one line naming the file and
    the key: no class name, no link, no traceback."""
    config = tmp_path / "controller.yaml"
    config.write_text("broker:\n  url: mqtt://127.0.0.1:0\n  protocol: '4'\n")
    result = subprocess.run(
        [sys.executable, "-m", "controller", "serve", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"edgefleet: invalid controller configuration: {config}: broker.protocol: Input should"
        " be '5' or '3.1.1'"
    ]
