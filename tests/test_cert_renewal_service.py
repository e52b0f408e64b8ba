"""The controller's side of certificate renewal (controller/pki/renewal.py and ingest): a
request signed by the device's current key gets a certificate for the new key, recorded
and audited; every other request is refused with its own reason, answered and
dead-lettered."""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from controller.audit import AuditEntry
from controller.broker.tables import BrokerCredential
from controller.db import make_engine, session_scope
from controller.ingest.apply import Received, apply_batch
from controller.ingest.tables import RejectedMessage
from controller.migrations import init_db
from controller.pki.renewal import RenewalService
from controller.pki.revocation import revoke_device
from controller.pki.service import issue_device_certificate
from controller.pki.store import PkiStore
from controller.pki.tables import IssuedCertificate
from shared.cert_renewal import check_issued, fingerprint, request_payload, sign
from shared.certificates import (
    certificate_pem,
    csr_for,
    new_private_key,
    read_certificate,
)
from shared.messages import CertIssued, CertRequest, encode_message
from tests.pki_world import TestCa

NOW = datetime.now(UTC).replace(microsecond=0)
PASSPHRASE = SecretStr("renewal test passphrase")


@dataclass
class World:
    engine: Engine
    store: PkiStore
    key: ec.EllipticCurvePrivateKey  # the device's current TLS key
    cert_pem: str  # its current certificate
    folder: Path

    def issue(
        self, device_id: str, *, now: datetime = NOW, days: int | None = None
    ) -> tuple[ec.EllipticCurvePrivateKey, str]:
        key = new_private_key()
        with session_scope(self.engine) as session:
            issued = issue_device_certificate(
                session, self.store, device_id, csr_for(device_id, key), now, days=days
            )
        return key, issued.certificate_pem.decode()


@pytest.fixture
def world(tmp_path: Path) -> World:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    init_db(engine)
    store = PkiStore(tmp_path / "pki", PASSPHRASE)
    store.initialize(now=NOW - timedelta(days=3))
    w = World(engine, store, new_private_key(), "", tmp_path)
    w.key, w.cert_pem = w.issue("dev-1")
    return w


def make_request(
    world: World,
    *,
    device_id: str = "dev-1",
    csr: str | None = None,
    new_key: ec.EllipticCurvePrivateKey | None = None,
    signer: ec.EllipticCurvePrivateKey | None = None,
    cert_pem: str | None = None,
    ts: datetime = NOW,
    signed_csr: str | None = None,
) -> CertRequest:
    """A request as the agent makes it; each argument spoils one part of it."""
    cert_pem = cert_pem or world.cert_pem
    csr = csr or csr_for(device_id, new_key or new_private_key()).decode()
    request_id = "0123456789abcdef" * 2
    payload = request_payload(
        device_id=device_id,
        request_id=request_id,
        requested_at=ts,
        current_fingerprint=fingerprint(read_certificate(cert_pem.encode())),
        csr=signed_csr or csr,
    )
    return CertRequest(
        device_id=device_id,
        ts=ts,
        request_id=request_id,
        csr=csr,
        certificate=cert_pem,
        signature=sign(signer or world.key, payload),
    )


def answer(world: World, request: CertRequest, service: RenewalService | None = None) -> Any:
    with session_scope(world.engine) as session:
        return (service or RenewalService(world.store)).on_request(session, request, NOW)


def test_a_proven_request_gets_a_certificate_for_the_new_key(world: World) -> None:
    """Signed by the current key, the request is answered with a certificate for the CSR's
    key that the device's own checks accept; it is recorded and audited as the device's."""
    new_key = new_private_key()
    reply, error = answer(world, make_request(world, new_key=new_key))
    assert error is None and reply.refused is None
    assert reply.request_id == "0123456789abcdef" * 2
    cert = check_issued(
        reply.certificate,
        reply.ca,
        device_id="dev-1",
        new_key=new_key.public_key(),
        current=read_certificate(world.cert_pem.encode()),
        trusted=[world.store.ca_certificate()],
        now=NOW,
    )
    assert cert.not_valid_after_utc > NOW + timedelta(days=364)
    with Session(world.engine) as session:
        rows = session.exec(
            select(IssuedCertificate).where(col(IssuedCertificate.device_id) == "dev-1")
        ).all()
        assert fingerprint(cert) in {row.fingerprint for row in rows} and len(rows) == 2
        entries = session.exec(
            select(AuditEntry).where(col(AuditEntry.action) == "pki.certificate.issue")
        ).all()
        assert entries[-1].actor == "device:dev-1"
        assert "PRIVATE" not in str(entries[-1].detail)


def _other_ca_certificate(world: World) -> str:
    other = TestCa(world.folder / "other-ca")
    return other.client("dev-1").cert_file.read_text()


def _revoke(world: World) -> None:
    """What revocation does to the device's certificates (controller/devices/revocation.py)."""
    with session_scope(world.engine) as session:
        for row in session.exec(
            select(IssuedCertificate).where(col(IssuedCertificate.device_id) == "dev-1")
        ):
            row.revoked_at = NOW
            row.revoke_reason = "stolen"
            session.add(row)


def _drop_credential(world: World) -> None:
    with session_scope(world.engine) as session:
        session.add(
            BrokerCredential(
                device_id="dev-1", username="dev-1", password_hash="$7$1$x$y", revoked_at=NOW
            )
        )


# Each refusal: (what it sets up, how the request is spoiled, the reason, words in the detail)
REFUSALS: dict[str, tuple[Callable[[World], None], Callable[[World], CertRequest], str, str]] = {
    "a CSR naming another device": (
        lambda w: None,
        lambda w: make_request(w, csr=csr_for("dev-2", new_private_key()).decode()),
        "wrong_cn",
        "'dev-2'",
    ),
    "signed by the new key, not the current one": (
        lambda w: None,
        lambda w: make_request(w, signer=new_private_key()),
        "bad_proof",
        "current certificate's key",
    ),
    "a proof over another CSR": (
        lambda w: None,
        lambda w: make_request(w, signed_csr=csr_for("dev-1", new_private_key()).decode()),
        "bad_proof",
        "not signed",
    ),
    "a request an hour old (a replay)": (
        lambda w: None,
        lambda w: make_request(w, ts=NOW - timedelta(hours=1)),
        "stale_request",
        "3600 s",
    ),
    "a certificate from another CA": (
        lambda w: None,
        lambda w: make_request(w, cert_pem=_other_ca_certificate(w)),
        "unknown_certificate",
        "not issued",
    ),
    "another device's certificate": (
        lambda w: None,
        lambda w: make_request(w, cert_pem=w.issue("dev-2")[1]),
        "wrong_device",
        "'dev-2'",
    ),
    "a revoked certificate": (
        _revoke,
        lambda w: make_request(w),
        "certificate_revoked",
        "revoked",
    ),
    "a device whose broker login was revoked": (
        _drop_credential,
        lambda w: make_request(w),
        "revoked",
        "revoked",
    ),
    "the current key again": (
        lambda w: None,
        lambda w: make_request(w, csr=csr_for("dev-1", w.key).decode()),
        "same_key",
        "new key",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_each_bad_request_is_refused_with_its_reason(world: World, case: str) -> None:
    """A request that fails a check gets a refusal naming it (sent to the device and
    returned for the dead letters), and no certificate is issued."""
    setup, spoil, reason, words = REFUSALS[case]
    setup(world)
    request = spoil(world)
    with Session(world.engine) as session:
        before = len(session.exec(select(IssuedCertificate)).all())
    reply, error = answer(world, request)
    assert error is not None and error.reason == reason, case
    assert words in error.detail, error.detail
    assert reply.refused == reason and reply.certificate is None
    assert reply.request_id == request.request_id
    with Session(world.engine) as session:
        assert len(session.exec(select(IssuedCertificate)).all()) == before


def test_an_expired_certificate_is_not_renewed(world: World) -> None:
    """A device whose certificate already expired is refused (it is provisioned again)."""
    key, cert_pem = world.issue("dev-3", now=NOW - timedelta(days=2), days=1)
    request = make_request(world, device_id="dev-3", cert_pem=cert_pem, signer=key)
    _, error = answer(world, request)
    assert error is not None and error.reason == "certificate_expired"
    assert "provision" in error.detail


def test_without_the_passphrase_the_device_is_told_to_ask_later(world: World) -> None:
    """A controller that cannot decrypt the CA key refuses as ca_unavailable, naming why,
    never the passphrase."""
    service = RenewalService(PkiStore(world.store.dir, None))
    _, error = answer(world, make_request(world), service)
    assert error is not None and error.reason == "ca_unavailable"
    assert "passphrase" in error.detail
    assert PASSPHRASE.get_secret_value() not in error.detail


def _received(message: CertRequest | CertIssued) -> Received:
    topic, payload = encode_message(message)
    return Received(topic, payload, NOW)


def test_ingest_answers_after_the_batch_and_dead_letters_refusals(world: World) -> None:
    """In an ingest batch, a good request yields a cert_issued to publish, a bad one a
    refusal to publish and a dead letter with its reason."""
    good, bad = make_request(world), make_request(world, signer=new_private_key())
    with session_scope(world.engine) as session:
        result = apply_batch(
            session,
            [_received(good), _received(bad)],
            renewal=RenewalService(world.store),
        )
    answers = [m for m in result.outbound if isinstance(m, CertIssued)]
    assert [a.refused for a in answers] == [None, "bad_proof"]
    assert result.outcome["certificates_issued"] == 1
    with Session(world.engine) as session:
        letters = session.exec(select(RejectedMessage)).all()
        assert [(r.reason, r.topic) for r in letters] == [("bad_proof", "ef/v1/dev-1/cert_request")]


def test_without_a_ca_ingest_refuses_requests_and_devices_cannot_answer(world: World) -> None:
    """A controller without renewal refuses cert_request as unexpected; a cert_issued
    published by a device is refused as the wrong direction."""
    issued = CertIssued(device_id="dev-1", request_id="0" * 32, refused="x")
    with session_scope(world.engine) as session:
        result = apply_batch(session, [_received(make_request(world)), _received(issued)])
    assert result.outbound == []
    with Session(world.engine) as session:
        reasons = sorted(r.reason for r in session.exec(select(RejectedMessage)))
    assert reasons == ["unexpected_cert_request", "wrong_direction"]


def test_a_revoked_devices_request_is_refused_by_ingest(world: World) -> None:
    """After devices revoke, a request from the device is refused (revoked) before the CA
    sees it, even over a connection the broker opened before: no answer, no certificate."""
    with session_scope(world.engine) as session:
        revoke_device(session, "dev-1", reason="stolen", actor="user:admin", now=NOW)
    with session_scope(world.engine) as session:
        result = apply_batch(
            session, [_received(make_request(world))], renewal=RenewalService(world.store)
        )
    assert result.outbound == []
    assert result.outcome["rejected:revoked"] == 1
    assert result.outcome["certificates_issued"] == 0


def test_the_answer_holds_no_key_material(world: World) -> None:
    """What goes back to the device is certificates only: no private key, no passphrase."""
    reply, _ = answer(world, make_request(world))
    _, payload = encode_message(reply)
    assert b"PRIVATE KEY" not in payload
    assert PASSPHRASE.get_secret_value().encode() not in payload
    assert certificate_pem(world.store.ca_certificate()).decode() == reply.ca
