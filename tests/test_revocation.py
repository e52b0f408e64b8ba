"""Revoking a device without a broker: the registry, the CRL the CA signs, ingest's refusal,
attestation's on_fail: revoke, the crl-refresh job and the revoke command."""

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from controller.attestation.service import AttestationService
from controller.audit import AuditEntry
from controller.broker.tables import BrokerCredential
from controller.db import make_engine, session_scope
from controller.devices.tables import Device
from controller.ingest.apply import Received, apply_batch
from controller.ingest.tables import RejectedMessage
from controller.migrations import init_db
from controller.pki.crl import crl_due, read_published, refresh_crl, revoked_entries
from controller.pki.errors import PkiError
from controller.pki.revocation import RevocationError, recommission, revoke_device
from controller.pki.service import issue_device_certificate
from controller.pki.store import PkiStore
from controller.pki.tables import IssuedCertificate, serial_number
from controller.services import Services
from controller.settings import AttestationSettings, PkiSettings, Settings
from shared.certificates import csr_for, new_private_key
from shared.messages import Challenge, encode_message
from tests.procs import run_cli
from tests.test_attestation_service import SETTINGS, FakeDevice, challenges, ingest
from tests.test_protocol import birth

T0 = datetime(2026, 11, 25, 6, 0, tzinfo=UTC)
PASSPHRASE = "revocation-tests-passphrase-7"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'controller.db'}")
    init_db(engine)
    yield engine
    engine.dispose()


def new_store(folder: Path, now: datetime = T0) -> PkiStore:
    store = PkiStore(folder, SecretStr(PASSPHRASE), PkiSettings(dir=folder))
    store.initialize(now=now)
    return store


def issue(engine: Engine, store: PkiStore, device_id: str, now: datetime = T0) -> int:
    with session_scope(engine) as session:
        issued = issue_device_certificate(
            session, store, device_id, csr_for(device_id, new_private_key()), now
        )
    return serial_number(issued.serial)


def crl_serials(store: PkiStore) -> set[int]:
    crl = x509.load_pem_x509_crl(store.crl_file.read_bytes())
    return {entry.serial_number for entry in crl}


def test_revoke_marks_certificates_login_and_registry_and_audits(
    engine: Engine, tmp_path: Path
) -> None:
    """Revoking revokes each live certificate of the device (not another's), its broker
    login, decommissions it with the reason and audits once; again, nothing changes."""
    store = new_store(tmp_path / "pki")
    a1, a2, b = (
        issue(engine, store, "dev-a"),
        issue(engine, store, "dev-a"),
        issue(engine, store, "dev-b"),
    )
    with session_scope(engine) as session:
        session.add(BrokerCredential(device_id="dev-a", username="dev-a", password_hash="x"))
    with session_scope(engine) as session:
        done = revoke_device(session, "dev-a", reason="stolen", actor="user:root", now=T0)
    assert {serial_number(s) for s in done.serials} == {a1, a2}
    assert done.credential_dropped and not done.already
    with Session(engine) as session:
        device = session.get(Device, "dev-a")
        assert device is not None and device.decommissioned
        assert device.decommission_reason == "stolen"
        credential = session.get(BrokerCredential, "dev-a")
        assert credential is not None and credential.revoked_at is not None
        live = session.exec(
            select(IssuedCertificate).where(col(IssuedCertificate.revoked_at).is_(None))
        ).all()
        assert [serial_number(row.serial) for row in live] == [b]
        entries = session.exec(
            select(AuditEntry).where(col(AuditEntry.action) == "device.revoke")
        ).all()
        assert [(e.actor, e.target, e.reason) for e in entries] == [
            ("user:root", "device:dev-a", "stolen")
        ]
    with session_scope(engine) as session:
        again = revoke_device(session, "dev-a", reason="twice", actor="user:root", now=T0)
    assert again.already and again.serials == ()


@pytest.mark.parametrize(
    ("device_id", "reason", "message"),
    [
        ("nobody", "gone", "'nobody' is not known"),
        ("dev-a", "   ", "give a reason"),
        ("dev-a", "two\nlines", "one line"),
    ],
    ids=["unknown device", "empty reason", "multi-line reason"],
)
def test_revoke_refusals(engine: Engine, device_id: str, reason: str, message: str) -> None:
    """An unknown device, an empty or multi-line reason are refused with a message naming it."""
    with session_scope(engine) as session:
        session.add(Device(id="dev-a"))
    with session_scope(engine) as session, pytest.raises(RevocationError, match=message):
        revoke_device(session, device_id, reason=reason, actor="t", now=T0)


def test_recommission_clears_the_mark_and_is_audited(engine: Engine) -> None:
    """Provisioning a revoked device again clears decommissioned (audited); a device that
    was never decommissioned is left alone."""
    with session_scope(engine) as session:
        session.add(Device(id="dev-a"))
    with session_scope(engine) as session:
        revoke_device(session, "dev-a", reason="lost", actor="t", now=T0)
    with session_scope(engine) as session:
        assert recommission(session, "dev-a", actor="cli:op", now=T0)
        assert not recommission(session, "dev-a", actor="cli:op", now=T0)
    with Session(engine) as session:
        device = session.get(Device, "dev-a")
        assert device is not None and not device.decommissioned
        actions = session.exec(select(AuditEntry.action)).all()
    assert "device.recommission" in actions


def test_crl_follows_the_table_and_is_resigned_before_it_lapses(
    engine: Engine, tmp_path: Path
) -> None:
    """refresh_crl signs a CRL listing exactly the revoked serials, does nothing while it
    is current, and signs again once less than half its lifetime is left."""
    store = new_store(tmp_path / "pki")
    serial = issue(engine, store, "dev-a")
    issue(engine, store, "dev-b")
    with Session(engine) as session:
        assert refresh_crl(session, store, now=T0) is None  # init's empty CRL is current
    with session_scope(engine) as session:
        revoke_device(session, "dev-a", reason="stolen", actor="t", now=T0)
    with Session(engine) as session:
        assert refresh_crl(session, store, now=T0) == "the revoked certificates changed"
        assert refresh_crl(session, store, now=T0 + timedelta(days=1)) is None
        lapsing = T0 + store.settings.crl_next_update * 0.6
        assert refresh_crl(session, store, now=lapsing) == "close to its next update"
    assert crl_serials(store) == {serial}


@pytest.mark.parametrize(
    ("content", "problem"),
    [(None, "missing"), (b"garbage", "not a PEM CRL"), ("other CA", "not signed by the CA")],
)
def test_a_missing_damaged_or_foreign_crl_is_replaced(
    engine: Engine, tmp_path: Path, content: bytes | str | None, problem: str
) -> None:
    """A CRL file that is missing, not a CRL, or signed by another CA is reported as the
    reason and signed anew by the CA."""
    store = new_store(tmp_path / "pki")
    if content is None:
        store.crl_file.unlink()
    elif content == "other CA":
        other = new_store(tmp_path / "other")
        store.crl_file.write_bytes(other.crl_file.read_bytes())
    else:
        assert isinstance(content, bytes)
        store.crl_file.write_bytes(content)
    with Session(engine) as session:
        assert refresh_crl(session, store, now=T0) == problem
    assert read_published(store).problem is None


def test_crl_due_is_pure_and_leaves_long_expired_certificates_out(
    engine: Engine, tmp_path: Path
) -> None:
    """A revoked certificate expired for more than a day leaves the CRL; crl_due compares
    serials and lifetime only."""
    store = new_store(tmp_path / "pki")
    issue(engine, store, "dev-a")
    with session_scope(engine) as session:
        revoke_device(session, "dev-a", reason="gone", actor="t", now=T0)
    with Session(engine) as session:
        assert len(revoked_entries(session, T0)) == 1
        after_expiry = T0 + timedelta(days=store.settings.device_cert_days + 2)
        assert revoked_entries(session, after_expiry) == []
        entries = revoked_entries(session, T0)
    published = read_published(store)
    assert crl_due(published, [], now=T0, lifetime=timedelta(days=7)) is None
    assert crl_due(published, entries, now=T0, lifetime=timedelta(days=7)) is not None


def test_ingest_refuses_a_decommissioned_device_and_counts_it(engine: Engine) -> None:
    """After revocation a device's messages are refused as revoked (counted, dead-lettered
    with its id); another device's messages in the same batch still land."""
    with session_scope(engine) as session:
        apply_batch(session, [Received(*encode_message(birth("dev-a")), T0)])
    with session_scope(engine) as session:
        revoke_device(session, "dev-a", reason="stolen", actor="t", now=T0)
    batch = [
        Received(*encode_message(birth("dev-a", bd_seq=2)), T0),
        Received(*encode_message(birth("dev-b")), T0),
    ]
    with session_scope(engine) as session:
        outcome = apply_batch(session, batch).outcome
    assert outcome == {"accepted": 1, "rejected:revoked": 1}
    with Session(engine) as session:
        rows = session.exec(select(RejectedMessage)).all()
        assert [(r.device_id, r.reason) for r in rows] == [("dev-a", "revoked")]
        assert "revoked" in rows[0].detail
        device = session.get(Device, "dev-a")
        assert device is not None and device.bd_seq != 2


def test_attestation_on_fail_revoke(engine: Engine, tmp_path: Path) -> None:
    """With on_fail: revoke, a failed quote (verified, measuring tampered agent code)
    quarantines and revokes the device (its certificate into the table's revoked set);
    quarantine (the default) only quarantines."""
    store = new_store(tmp_path / "pki")
    for on_fail, device_id in (("quarantine", "dev-q"), ("revoke", "dev-r")):
        serial = issue(engine, store, device_id)
        settings = SETTINGS.model_copy(update={"on_fail": on_fail})
        service = AttestationService(settings, enrollment="tofu")
        dev = FakeDevice(tmp_path, device_id)
        [challenge] = challenges(ingest(engine, service, dev.birth(0)))
        dev.code = "bad0" * 16  # a tampered agent: its own key signs what it measures
        ingest(engine, service, dev.answer(challenge), at=T0 + timedelta(seconds=1))
        with Session(engine) as session:
            device = session.get(Device, device_id)
            assert device is not None and device.quarantine_reason == "agent_code"
            assert device.decommissioned is (on_fail == "revoke")
            revoked = {e.serial for e in revoked_entries(session, T0)}
        assert (serial in revoked) is (on_fail == "revoke")
    assert AttestationSettings().on_fail == "quarantine"


def test_attestation_silence_never_revokes(engine: Engine, tmp_path: Path) -> None:
    """A device that only missed its answer is quarantined as silent, not revoked, even
    with on_fail: revoke."""
    service = AttestationService(
        SETTINGS.model_copy(update={"on_fail": "revoke"}), enrollment="tofu"
    )
    dev = FakeDevice(tmp_path)
    ingest(engine, service, dev.birth(0))
    with session_scope(engine) as session:
        service.sweep(session, T0 + timedelta(seconds=12))
    with Session(engine) as session:
        device = session.get(Device, "dev-1")
        assert device is not None and device.quarantine_reason == "silent"
        assert not device.decommissioned


def test_crl_refresh_job_signs_what_another_process_revoked(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The controller's crl-refresh job re-signs the CRL after a revocation committed
    elsewhere (audited), and raises (so the supervisor reports it) when the CA key cannot be
    opened while a CRL is due; without a CA it does nothing."""
    url = str(engine.url)
    settings = Settings(environment="development", database_url=url, pki={"dir": tmp_path / "pki"})
    services = Services(settings=settings, engine=engine)
    monkeypatch.delenv("EDGEFLEET_KEY_PASSPHRASE", raising=False)
    assert services.refresh_crl(T0) is None  # no CA yet
    store = new_store(tmp_path / "pki")
    serial = issue(engine, store, "dev-a")
    with session_scope(engine) as session:
        revoke_device(session, "dev-a", reason="stolen", actor="t", now=T0)
    with pytest.raises(PkiError, match="passphrase"):
        services.refresh_crl(T0)
    monkeypatch.setenv("EDGEFLEET_KEY_PASSPHRASE", PASSPHRASE)
    assert services.refresh_crl(T0) == "the revoked certificates changed"
    assert crl_serials(store) == {serial}
    with Session(engine) as session:
        actions = session.exec(select(AuditEntry.action)).all()
    assert "pki.crl.resign" in actions


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "controller.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "environment": "development",
                "database_url": f"sqlite:///{tmp_path / 'controller.db'}",
                "pki": {"dir": str(tmp_path / "pki")},
            }
        )
    )
    return config


def test_cli_revoke_resigns_the_crl_and_refuses_without_reason(tmp_path: Path) -> None:
    """devices revoke needs --reason (exit 2), revokes the certificate, re-signs the CRL
    with the passphrase and says to reload the broker; without the passphrase it records
    the revocation and exits 1 naming what is missing."""
    config = write_config(tmp_path)
    engine = make_engine(f"sqlite:///{tmp_path / 'controller.db'}")
    init_db(engine)
    store = new_store(tmp_path / "pki")
    serials = [issue(engine, store, "dev-a"), issue(engine, store, "dev-b")]
    env = {k: v for k, v in os.environ.items() if k != "EDGEFLEET_KEY_PASSPHRASE"}
    missing = run_cli(["-m", "controller", "devices", "revoke", "dev-a", "-c", str(config)])
    assert missing.returncode == 2 and "--reason" in missing.stderr
    no_key = run_cli(
        ["-m", "controller", "devices", "revoke", "dev-b", "--reason", "lost", "-c", str(config)],
        env=env,
    )
    assert no_key.returncode == 1, no_key.stderr
    assert "revocation recorded, but the CRL was not re-signed" in no_key.stderr
    assert PASSPHRASE not in no_key.stderr + no_key.stdout
    passphrase = tmp_path / "passphrase"
    passphrase.write_text(PASSPHRASE + "\n")
    done = run_cli(
        ["-m", "controller", "devices", "revoke", "dev-a", "--reason", "stolen",
         "--passphrase-file", str(passphrase), "-c", str(config)],
        env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "revoked and decommissioned: 1 certificate(s) revoked" in done.stdout
    assert "SIGHUP" in done.stdout
    assert crl_serials(store) == set(serials)  # dev-b's revocation is signed in too
    with Session(engine) as session:
        device = session.get(Device, "dev-a")
        assert device is not None and device.decommissioned
    engine.dispose()


def test_api_revoke_is_admin_only_audited_and_shown(tmp_path: Path) -> None:
    """POST /api/devices/{id}/revoke: 403 for an operator, 404 for an unknown device, 422
    without a reason; an admin's call revokes, re-signs the CRL (reported), is audited with
    the admin's name, /api/devices and the console show (and filter) the device as
    decommissioned, and provisioning it again over the API takes it back."""
    from controller.auth.credentials import create_api_token
    from controller.auth.users import create_user
    from tests.controller_harness import live_controller

    (tmp_path / "passphrase").write_text(PASSPHRASE)
    broker: dict[str, object] = {"mode": "embedded", "url": "mqtt://127.0.0.1:0"}
    updates = {"passphrase_file": str(tmp_path / "passphrase")}
    with live_controller(
        tmp_path, broker, updates=updates, pki={"dir": str(tmp_path / "pki")}
    ) as live:
        engine = live.services.engine
        store = new_store(tmp_path / "pki", now=datetime.now(UTC))
        serial = issue(engine, store, "dev-a", now=datetime.now(UTC))
        with session_scope(engine) as session:
            user = create_user(
                session, username="op", password="operator-password", role="operator"
            )
            operator = create_api_token(session, user, name="tests")

        def post(device_id: str, body: dict[str, str], token: str) -> tuple[int, dict[str, object]]:
            response = live.client.post(
                f"/api/devices/{device_id}/revoke",
                json=body,
                headers={"Authorization": f"Bearer {token}"},
            )
            return response.status_code, response.json()

        assert post("dev-a", {"reason": "stolen"}, operator)[0] == 403
        code, body = post("nobody", {"reason": "gone"}, live.token)
        assert code == 404 and "not known" in str(body["detail"])
        assert post("dev-a", {"reason": ""}, live.token)[0] == 422
        code, body = post("dev-a", {"reason": "stolen"}, live.token)
        assert code == 200, body
        assert body["crl"] == "re-signed" and body["serials"] == [format(serial, "x")]
        assert crl_serials(store) == {serial}
        device = live.device("dev-a")
        assert device is not None and device["decommissioned"] is True
        assert device["decommission_reason"] == "stolen"
        page = live.client.get("/api/devices?decommissioned=true", headers=live.auth).json()
        assert [d["id"] for d in page["data"]] == ["dev-a"]
        with Session(engine) as session:
            entry = session.exec(
                select(AuditEntry).where(col(AuditEntry.action) == "device.revoke")
            ).one()
        assert entry.actor == "user:admin"
        page = live.client.get("/console/devices/dev-a", headers=live.auth)
        assert page.status_code == 200 and "revoked: stolen" in page.text
        # Provisioning it again over the API (flash --rotate) takes it back.
        again = live.client.post(
            "/api/devices/dev-a/broker-credential", json={"rotate": True}, headers=live.auth
        )
        assert again.status_code == 201, again.text
        device = live.device("dev-a")
        assert device is not None and device["decommissioned"] is False


def test_a_revoked_device_is_not_challenged_again(engine: Engine, tmp_path: Path) -> None:
    """The periodic attestation round skips decommissioned devices (their quotes would be
    refused anyway)."""
    service = AttestationService(SETTINGS, enrollment="tofu")
    dev = FakeDevice(tmp_path)
    [challenge] = challenges(ingest(engine, service, dev.birth(0)))
    ingest(engine, service, dev.answer(challenge), at=T0 + timedelta(seconds=1))
    with session_scope(engine) as session:
        revoke_device(session, "dev-1", reason="retired", actor="t", now=T0)
    with session_scope(engine) as session:
        due = service.sweep(session, T0 + timedelta(seconds=SETTINGS.interval_s + 5))
    assert [m for m in due if isinstance(m, Challenge)] == []
