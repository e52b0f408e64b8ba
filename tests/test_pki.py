"""The controller's device CA: ``edgefleet pki`` on disk, issuing device certificates (the
checks, the record, the audit), ``devices provision --cert-out``, and a certificate from it
connecting to a real Mosquitto whose TLS files came from ``pki init``."""

import os
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import SecretStr
from sqlmodel import Session, select
from typer.testing import CliRunner

from controller.audit import AuditEntry
from controller.broker.tables import BrokerCredential
from controller.cli.main import app as cli
from controller.db import make_engine, session_scope
from controller.migrations import init_db
from controller.pki.errors import (
    CertificateRefused,
    DeviceNotProvisionedError,
    DeviceRevokedError,
    NoAuthorityError,
    PkiError,
)
from controller.pki.service import issue_device_certificate
from controller.pki.store import PkiStore
from controller.pki.tables import IssuedCertificate, serial_number
from controller.settings import PkiSettings
from shared.broker_url import Tls
from shared.certificates import (
    certificate_info,
    csr_for,
    load_private_key,
    new_private_key,
    read_certificate,
)
from shared.mqtt_transport import Endpoint, Transport
from tests.conftest import wait_for
from tests.pki_world import BrokerFiles, tls_mosquitto

PASSPHRASE = "a long enough CA passphrase"
NOW = datetime.now(UTC)


def store_in(folder: Path, passphrase: str | None = PASSPHRASE) -> PkiStore:
    return PkiStore(
        folder, None if passphrase is None else SecretStr(passphrase), PkiSettings(dir=folder)
    )


@pytest.fixture
def store(tmp_path: Path) -> PkiStore:
    s = store_in(tmp_path / "pki")
    s.initialize(now=NOW)
    return s


@pytest.fixture
def session(tmp_path: Path) -> Session:
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    init_db(engine)
    return Session(engine)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_an_encrypted_key_0600_in_a_0700_folder(store: PkiStore) -> None:
    """The CA key is encrypted PKCS#8 (0600, folder 0700) beside the CA certificate and an
    empty CRL, and it opens only with the passphrase."""
    assert mode(store.dir) == 0o700 and mode(store.key_file) == 0o600
    data = store.key_file.read_bytes()
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in data and PASSPHRASE.encode() not in data
    key = load_private_key(data, PASSPHRASE.encode())
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert read_certificate(store.ca_file.read_bytes()).public_key() == key.public_key()
    assert b"BEGIN X509 CRL" in store.crl_file.read_bytes()
    assert PASSPHRASE not in repr(store)


def test_init_refuses_to_overwrite_an_existing_ca(store: PkiStore) -> None:
    """A second init is refused and leaves the first CA's files untouched."""
    before = store.key_file.read_bytes(), store.ca_file.read_bytes()
    with pytest.raises(PkiError, match=r"already exists in .*; refusing to overwrite"):
        store.initialize(now=NOW)
    assert (store.key_file.read_bytes(), store.ca_file.read_bytes()) == before


@pytest.mark.parametrize(
    ("passphrase", "error"),
    [(None, "no key passphrase"), ("changeme", "placeholder"), ("short-one", "shorter than 12")],
)
def test_init_takes_the_tuf_passphrase_rules(
    tmp_path: Path, passphrase: str | None, error: str
) -> None:
    """A missing, placeholder or short passphrase is refused before any file is written."""
    s = store_in(tmp_path / "pki", passphrase)
    with pytest.raises(PkiError, match=error):
        s.initialize(now=NOW)
    assert not s.dir.exists()


def test_a_wrong_passphrase_cannot_sign(store: PkiStore) -> None:
    """Signing with the wrong passphrase is refused naming the key file, not the secret."""
    wrong = store_in(store.dir, "another long passphrase")
    with pytest.raises(NoAuthorityError, match=r"cannot decrypt .*ca\.key: wrong passphrase") as e:
        wrong.sign_device(csr_for("dev-1", new_private_key()), "dev-1", now=NOW)
    assert "another long passphrase" not in str(e.value)


def test_a_plaintext_ca_key_is_refused(store: PkiStore) -> None:
    """A CA key stored unencrypted is not used."""
    from shared.certificates import private_key_pem

    os.chmod(store.key_file, 0o600)
    store.key_file.write_bytes(private_key_pem(new_private_key()))
    with pytest.raises(NoAuthorityError, match="not an encrypted private key"):
        store.sign_device(csr_for("dev-1", new_private_key()), "dev-1", now=NOW)


def test_no_ca_says_to_run_pki_init(tmp_path: Path, session: Session) -> None:
    """Without a CA, issuing is refused with the command that makes one."""
    s = store_in(tmp_path / "none")
    with pytest.raises(NoAuthorityError, match="edgefleet pki init"):
        issue_device_certificate(session, s, "dev-1", csr_for("dev-1", new_private_key()), NOW)


def test_issuing_records_and_audits_the_certificate(store: PkiStore, session: Session) -> None:
    """A CSR naming the device is signed for pki.device_cert_days; the certificate's serial,
    validity and fingerprint are in issued_certificate and the issue is audited."""
    key = new_private_key()
    issued = issue_device_certificate(
        session, store, "dev-1", csr_for("dev-1", key), NOW, actor="user:alice"
    )
    session.commit()
    cert = read_certificate(issued.certificate_pem)
    assert cert.public_key() == key.public_key()
    info = certificate_info(issued.certificate_pem)
    assert info.subject_cn == "dev-1"
    assert abs((info.not_after - NOW).days - 365) <= 1
    row = session.get(IssuedCertificate, issued.serial)
    assert row is not None and serial_number(row.serial) == cert.serial_number
    assert row.device_id == "dev-1" and row.fingerprint == info.fingerprint_sha256
    assert row.revoked_at is None
    entry = session.exec(
        select(AuditEntry).where(AuditEntry.action == "pki.certificate.issue")
    ).one()
    assert entry.actor == "user:alice" and entry.target == "device:dev-1"
    assert entry.detail["serial"] == issued.serial


def test_a_csr_for_another_device_is_refused(store: PkiStore, session: Session) -> None:
    """A CSR whose CN is not the device is refused, naming both, and nothing is recorded."""
    with pytest.raises(CertificateRefused, match="names 'dev-2', not the device 'dev-1'"):
        issue_device_certificate(session, store, "dev-1", csr_for("dev-2", new_private_key()), NOW)
    with pytest.raises(CertificateRefused, match="not a PEM certificate signing request"):
        issue_device_certificate(session, store, "dev-1", b"garbage", NOW)
    assert session.exec(select(IssuedCertificate)).all() == []


def test_a_revoked_device_gets_no_certificate(store: PkiStore, session: Session) -> None:
    """A device whose credential is revoked is refused until it is provisioned again."""
    session.add(
        BrokerCredential(device_id="dev-1", username="dev-1", password_hash="x", revoked_at=NOW)
    )
    session.commit()
    with pytest.raises(DeviceRevokedError, match="'dev-1' is revoked"):
        issue_device_certificate(session, store, "dev-1", csr_for("dev-1", new_private_key()), NOW)


def test_provisioning_required_refuses_unknown_devices(store: PkiStore, session: Session) -> None:
    """With require_provisioned_devices, a device without a broker credential is refused."""
    with pytest.raises(DeviceNotProvisionedError, match="devices provision dev-9"):
        issue_device_certificate(
            session,
            store,
            "dev-9",
            csr_for("dev-9", new_private_key()),
            NOW,
            require_provisioned=True,
        )


# --- the CLI and a real broker --------------------------------------------------------------
@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "passphrase").write_text(PASSPHRASE + "\n")
    path = tmp_path / "controller.yaml"
    path.write_text(
        f"environment: development\ndatabase_url: sqlite:///{tmp_path / 'c.db'}\n"
        f"updates:\n  passphrase_file: {tmp_path / 'passphrase'}\n"
        f"pki:\n  dir: {tmp_path / 'pki'}\n"
    )
    monkeypatch.delenv("EDGEFLEET_KEY_PASSPHRASE", raising=False)
    assert CliRunner().invoke(cli, ["db", "init", "-c", str(path)]).exit_code == 0
    return path


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_cli_init_show_and_server_cert(config: Path, tmp_path: Path) -> None:
    """``pki init`` makes the CA and a broker certificate for the hosts, a second init
    exits 1 saying why, ``show`` counts certificates and ``server-cert`` signs another."""
    code, out = run("pki", "init", "-c", str(config), "--host", "127.0.0.1", "--host", "b.lan")
    assert code == 0, out
    assert "ca.crt" in out and "broker.crt" in out
    code, out = run("pki", "init", "-c", str(config), "--host", "127.0.0.1")
    assert code == 1 and "refusing to overwrite" in out
    code, out = run("pki", "show", "-c", str(config))
    assert code == 0 and "CN=edgefleet device CA" in out and "0 issued" in out
    code, out = run("pki", "server-cert", "-c", str(config), "--host", "c.lan", "--out",
                    str(tmp_path / "srv"))  # fmt: skip
    assert code == 0, out
    assert mode(tmp_path / "srv" / "broker.key") == 0o600
    cert = read_certificate((tmp_path / "srv" / "broker.crt").read_bytes())
    assert "c.lan" in str(cert.extensions)


def test_cli_show_without_ca_exits_1(config: Path) -> None:
    """``pki show`` before ``pki init`` says to run it."""
    code, out = run("pki", "show", "-c", str(config))
    assert code == 1 and "pki init" in out


def connects(broker_port: int, device_id: str, tls: Tls) -> bool:
    outcome: list[str | None] = []
    transport = Transport(
        Endpoint("127.0.0.1", broker_port, device_id, keepalive_s=5, tls=tls),
        on_message=lambda m: None,
        on_connect=outcome.append,
        name=device_id,
    )
    stopping = threading.Event()
    thread = threading.Thread(target=transport.run, args=(stopping,),
                              kwargs={"backoff": lambda attempt: 0.2})  # fmt: skip
    thread.start()
    try:
        wait_for(lambda: bool(outcome) or transport.tls_failures > 0, 15, what="a connect")
        return outcome[:1] == [None]
    finally:
        stopping.set()
        transport.disconnect()
        thread.join(10)
        transport.close()


def test_provision_cert_out_connects_to_a_broker_from_pki_init(
    config: Path, tmp_path: Path
) -> None:
    """``devices provision ID --cert-out DIR`` writes ID.key (0600), ID.crt and ca.crt; with
    them the device connects to a Mosquitto using the CA and server certificate of ``pki
    init``; a second run without --rotate is refused."""
    assert run("pki", "init", "-c", str(config), "--host", "127.0.0.1")[0] == 0
    out_dir = tmp_path / "dev-tls"
    code, out = run("devices", "provision", "edge-7", "--cert-out", str(out_dir), "-c",
                    str(config), "--password-file", str(tmp_path / "pw"))  # fmt: skip
    assert code == 0, out
    key, cert, ca = out_dir / "edge-7.key", out_dir / "edge-7.crt", out_dir / "ca.crt"
    assert mode(key) == 0o600 and b"PRIVATE KEY" not in out.encode()
    assert certificate_info(cert.read_bytes()).subject_cn == "edge-7"
    assert ca.read_bytes() == (tmp_path / "pki" / "ca.crt").read_bytes()
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    with session_scope(engine) as s:
        assert [r.device_id for r in s.exec(select(IssuedCertificate))] == ["edge-7"]
    code, out = run("devices", "provision", "edge-7", "--cert-out", str(out_dir), "-c",
                    str(config))  # fmt: skip
    assert code == 2 and "--rotate" in out

    pki = tmp_path / "pki"
    broker = tls_mosquitto(
        tmp_path, BrokerFiles(pki / "ca.crt", pki / "broker.crt", pki / "broker.key")
    )
    broker.start()
    try:
        assert connects(broker.port, "edge-7", Tls(ca, cert, key))
    finally:
        broker.stop()


def test_provision_cert_out_without_a_ca_writes_nothing(config: Path, tmp_path: Path) -> None:
    """Without a CA, provision --cert-out exits 2 before any credential is issued."""
    code, out = run("devices", "provision", "edge-8", "--cert-out", str(tmp_path / "o"), "-c",
                    str(config))  # fmt: skip
    assert code == 2 and "pki init" in out
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    init_db(engine)
    with Session(engine) as s:
        assert s.get(BrokerCredential, "edge-8") is None
    assert not (tmp_path / "o").exists()


def test_cli_with_a_wrong_passphrase_exits_1_without_the_secret(
    config: Path, tmp_path: Path
) -> None:
    """``pki server-cert`` with a passphrase file that does not open the CA key exits 1
    naming the key file, and never prints the passphrase."""
    assert run("pki", "init", "-c", str(config), "--host", "127.0.0.1")[0] == 0
    wrong = tmp_path / "wrong"
    wrong.write_text("not the right passphrase\n")
    code, out = run("pki", "server-cert", "-c", str(config), "--host", "x.lan", "--out",
                    str(tmp_path / "srv"), "--passphrase-file", str(wrong))  # fmt: skip
    assert code == 1 and "wrong passphrase" in out and "not the right" not in out
    assert not (tmp_path / "srv").exists()


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"device_cert_days": 4000}, "device_cert_days must be shorter than pki.ca_days"),
        ({"server_cert_days": 3650}, "server_cert_days must be shorter"),
        ({"crl_next_update": "PT0S"}, "crl_next_update must be positive"),
    ],
)
def test_pki_settings_refuse_lifetimes_the_ca_cannot_cover(
    values: dict[str, object], error: str
) -> None:
    """A certificate lifetime as long as the CA's, or a CRL valid for no time, is refused."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=error):
        PkiSettings(**values)


@pytest.mark.parametrize("host", ["bad host", "ünï.example", "a..b", "x.lan\n"])
def test_init_refuses_a_bad_host_before_making_the_ca(config: Path, host: str) -> None:
    """A --host that is neither an IP address nor a DNS name is refused by name, and no
    CA is left behind to block the corrected command."""
    code, out = run("pki", "init", "-c", str(config), "--host", "127.0.0.1", "--host", host)
    assert code == 1 and "is neither an IP address nor a DNS name" in out
    assert not (config.parent / "pki" / "ca.key").exists()
    assert run("pki", "init", "-c", str(config), "--host", "127.0.0.1")[0] == 0
