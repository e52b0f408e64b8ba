"""The agent's certificate renewer (edge_agent/sync/renewal.py), with a CA made by the
project's code answering in place of the controller: when it asks, what it proves, what it
accepts, how it installs, and how it finishes an install a crash cut short."""

import stat
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.pki.authority import device_certificate
from edge_agent.config import MqttConfig
from edge_agent.sync.counters import CounterStore
from edge_agent.sync.link import LoadSnapshot, MqttLink
from edge_agent.sync.renewal import CertRenewer, pending_key_path, recover
from shared.cert_renewal import fingerprint, request_payload, verify
from shared.certificates import (
    certificate_pem,
    csr_for,
    load_private_key,
    new_private_key,
    read_certificate,
    read_csr,
)
from shared.messages import CertIssued, CertRequest, encode_message
from tests.pki_world import NOW, ClientFiles, TestCa
from tests.test_agent_link_tls import make_link
from tests.test_protocol import birth


@dataclass
class Device:
    """A renewer over a device's files, with what it sent, reloaded and recorded."""

    ca: TestCa
    files: ClientFiles
    renewer: CertRenewer
    sent: list[CertRequest] = field(default_factory=list)
    reloads: list[int] = field(default_factory=list)
    events: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    mono: list[float] = field(default_factory=lambda: [1000.0])


def device(
    tmp_path: Path,
    *,
    days: int = 3,
    issued_at: datetime = NOW - timedelta(days=2, hours=12),
    fraction: float = 1 / 3,
    ca: TestCa | None = None,
) -> Device:
    ca = ca or TestCa(tmp_path / "ca")
    files = ca.client("dev-1", days=days, now=issued_at)
    config = MqttConfig(
        url="mqtts://127.0.0.1:8883",
        ca_file=ca.ca_file,
        cert_file=files.cert_file,
        key_file=files.key_file,
        renew_before_fraction=fraction,
        renew_retry_min_s=10,
        renew_retry_max_s=100,
    )
    holder: list[Device] = []

    def send(request: CertRequest) -> bool:
        holder[0].sent.append(request)
        return True

    renewer = CertRenewer(
        device_id="dev-1",
        config=config,
        send=send,
        reload=lambda: holder[0].reloads.append(1),
        record_event=lambda name, body: holder[0].events.append((name, body)),
        clock=lambda: NOW,
        monotonic=lambda: holder[0].mono[0],
    )
    holder.append(Device(ca, files, renewer))
    return holder[0]


def sign_answer(dev: Device, request: CertRequest, **overrides: object) -> CertIssued:
    """What the controller answers: a certificate for the request's CSR from ``dev.ca``."""
    cert = device_certificate(dev.ca.authority, request.csr.encode(), "dev-1", now=NOW, days=20)
    fields: dict[str, object] = {
        "device_id": "dev-1",
        "request_id": request.request_id,
        "certificate": certificate_pem(cert).decode(),
        "ca": dev.ca.ca_file.read_text(),
    }
    return CertIssued.model_validate({**fields, **overrides})


def test_nothing_is_asked_while_most_of_the_lifetime_is_left(tmp_path: Path) -> None:
    """A certificate with more than renew_before_fraction of its lifetime left is not
    renewed; the renewer sleeps until it will be due (at most an hour before looking)."""
    dev = device(tmp_path, days=20, issued_at=NOW)
    wait = dev.renewer.tick(connected=True)
    assert dev.sent == [] and 0 < wait <= 3600
    assert not dev.renewer.pending_file.exists()


def test_a_due_certificate_is_renewed_with_a_proof_by_the_current_key(tmp_path: Path) -> None:
    """Past the threshold, one request goes out: a CSR for a new key (kept 0600 beside the
    key file) naming the device, signed by the current certificate's key."""
    dev = device(tmp_path)
    dev.renewer.tick(connected=True)
    [request] = dev.sent
    current = read_certificate(dev.files.cert_file.read_bytes())
    assert request.certificate == certificate_pem(current).decode()
    payload = request_payload(
        device_id="dev-1",
        request_id=request.request_id,
        requested_at=request.ts,
        current_fingerprint=fingerprint(current),
        csr=request.csr,
    )
    assert verify(current.public_key(), payload, request.signature)
    pending = dev.renewer.pending_file
    assert stat.S_IMODE(pending.stat().st_mode) == 0o600
    waiting_key = load_private_key(pending.read_bytes()).public_key()
    assert read_csr(request.csr.encode()).public_key() == waiting_key
    assert [name for name, _ in dev.events] == ["cert_renewal_requested"]
    assert "PRIVATE" not in str(dev.events)


def test_offline_nothing_is_sent_and_unanswered_requests_are_retried_with_backoff(
    tmp_path: Path,
) -> None:
    """No request while disconnected; once sent, none again before the retry delay, then
    a new request (new id) for the same key, each delay at least half the doubled one."""
    dev = device(tmp_path)
    dev.renewer.tick(connected=False)
    assert dev.sent == []
    wait = dev.renewer.tick(connected=True)
    assert 5 <= wait <= 10
    dev.mono[0] += wait - 0.01
    dev.renewer.tick(connected=True)
    assert len(dev.sent) == 1
    dev.mono[0] += 0.02
    second_wait = dev.renewer.tick(connected=True)
    assert len(dev.sent) == 2 and 10 <= second_wait <= 20
    first, second = dev.sent
    assert first.request_id != second.request_id and first.csr == second.csr


def test_an_issued_certificate_is_checked_installed_and_loaded(tmp_path: Path) -> None:
    """The answer's certificate and the new key replace the files (key 0600, matching
    the certificate), the waiting key goes, the transport reloads, and the event carries
    the serial and fingerprint only."""
    dev = device(tmp_path)
    old_fp = fingerprint(read_certificate(dev.files.cert_file.read_bytes()))
    dev.renewer.tick(connected=True)
    assert dev.renewer.handle(sign_answer(dev, dev.sent[0]))
    cert = read_certificate(dev.files.cert_file.read_bytes())
    key = load_private_key(dev.files.key_file.read_bytes())
    assert fingerprint(cert) != old_fp and cert.public_key() == key.public_key()
    assert stat.S_IMODE(dev.files.key_file.stat().st_mode) == 0o600
    assert not dev.renewer.pending_file.exists()
    assert dev.reloads == [1]
    name, body = dev.events[-1]
    assert name == "cert_renewed" and body["fingerprint"] == fingerprint(cert)
    assert "PRIVATE" not in str(dev.events)
    # Renewed: 20 days left of 20, nothing more to ask.
    dev.mono[0] += 10_000
    dev.renewer.tick(connected=True)
    assert len(dev.sent) == 1


def _for_other_key(dev: Device, request: CertRequest) -> CertIssued:
    other = CertRequest.model_validate(
        {**request.model_dump(), "csr": csr_for("dev-1", new_private_key()).decode()}
    )
    return sign_answer(dev, other)


def _from_other_ca(dev: Device, request: CertRequest) -> CertIssued:
    other = TestCa(dev.ca.folder.parent / "other")
    cert = device_certificate(other.authority, request.csr.encode(), "dev-1", now=NOW, days=20)
    return sign_answer(
        dev, request, certificate=certificate_pem(cert).decode(), ca=other.ca_file.read_text()
    )


def _other_ca_claimed_as_ours(dev: Device, request: CertRequest) -> CertIssued:
    other = TestCa(dev.ca.folder.parent / "other")
    cert = device_certificate(other.authority, request.csr.encode(), "dev-1", now=NOW, days=20)
    return sign_answer(dev, request, certificate=certificate_pem(cert).decode())


def _expired(dev: Device, request: CertRequest) -> CertIssued:
    cert = device_certificate(
        dev.ca.authority, request.csr.encode(), "dev-1", now=NOW - timedelta(days=10), days=1
    )
    return sign_answer(dev, request, certificate=certificate_pem(cert).decode())


def _other_device(dev: Device, request: CertRequest) -> CertIssued:
    key = new_private_key()
    cert = device_certificate(dev.ca.authority, csr_for("dev-2", key), "dev-2", now=NOW, days=20)
    return sign_answer(dev, request, certificate=certificate_pem(cert).decode())


@pytest.mark.parametrize(
    ("case", "spoil", "words"),
    [
        ("for another key", _for_other_key, "not for the key"),
        ("from a CA the device does not trust", _from_other_ca, "not in this device's CA file"),
        ("signed by another CA than the one sent", _other_ca_claimed_as_ours, "not signed by"),
        ("expired", _expired, "not valid now"),
        ("naming another device", _other_device, "'dev-2'"),
    ],
)
def test_an_unusable_certificate_changes_nothing(
    tmp_path: Path, case: str, spoil: object, words: str
) -> None:
    """A certificate that fails a check is not installed: the files stay, nothing is
    reloaded, and the event says which check failed."""
    dev = device(tmp_path)
    before = (dev.files.cert_file.read_bytes(), dev.files.key_file.read_bytes())
    dev.renewer.tick(connected=True)
    assert callable(spoil)
    assert not dev.renewer.handle(spoil(dev, dev.sent[0]))
    assert (dev.files.cert_file.read_bytes(), dev.files.key_file.read_bytes()) == before
    assert dev.reloads == []
    name, body = dev.events[-1]
    assert name == "cert_renewal_invalid" and words in str(body["error"]), case
    assert dev.renewer.pending_file.exists()


def test_a_refusal_is_recorded_and_the_request_retried_later(tmp_path: Path) -> None:
    """A refusal changes no file; its reason goes into an event and the next request waits
    for the backoff."""
    dev = device(tmp_path)
    dev.renewer.tick(connected=True)
    refusal = CertIssued(
        device_id="dev-1", request_id=dev.sent[0].request_id, refused="bad_proof", detail="x"
    )
    assert not dev.renewer.handle(refusal)
    assert dev.events[-1] == ("cert_renewal_refused", {"reason": "bad_proof", "detail": "x"})
    assert dev.renewer.tick(connected=True) > 0 and len(dev.sent) == 1


def test_an_answer_to_no_request_of_ours_is_ignored(tmp_path: Path) -> None:
    """An answer whose request id the renewer never sent (a stale or forged one) is
    ignored, however valid its certificate."""
    dev = device(tmp_path)
    dev.renewer.tick(connected=True)
    answer = sign_answer(dev, dev.sent[0], request_id="f" * 32)
    assert not dev.renewer.handle(answer)
    assert dev.reloads == []


def test_a_restart_while_waiting_asks_for_the_same_key(tmp_path: Path) -> None:
    """The waiting key survives a restart: the next renewer's CSR is for the same key."""
    dev = device(tmp_path)
    dev.renewer.tick(connected=True)
    sent: list[CertRequest] = []

    def send(request: CertRequest) -> bool:
        sent.append(request)
        return True

    restarted = CertRenewer(
        device_id="dev-1",
        config=MqttConfig(
            url="mqtts://127.0.0.1:8883",
            ca_file=dev.ca.ca_file,
            cert_file=dev.files.cert_file,
            key_file=dev.files.key_file,
        ),
        send=send,
        reload=lambda: None,
        record_event=lambda name, body: None,
        clock=lambda: NOW,
    )
    restarted.tick(connected=True)
    first, again = (read_csr(r.csr.encode()).public_key() for r in (dev.sent[0], sent[0]))
    assert first == again


def test_a_crash_between_the_two_writes_is_finished_at_start(tmp_path: Path) -> None:
    """New certificate beside the old key (power cut between the writes): recover()
    installs the waiting key; a waiting key whose certificate has not come is left."""
    dev = device(tmp_path)
    dev.renewer.tick(connected=True)
    assert not recover(dev.files.cert_file, dev.files.key_file)  # still waiting
    answer = sign_answer(dev, dev.sent[0])
    assert answer.certificate is not None
    dev.files.cert_file.write_text(answer.certificate)  # the first write, then the cut
    assert recover(dev.files.cert_file, dev.files.key_file)
    key = load_private_key(dev.files.key_file.read_bytes())
    cert = read_certificate(dev.files.cert_file.read_bytes())
    assert cert.public_key() == key.public_key()
    assert not pending_key_path(dev.files.key_file).exists()
    assert stat.S_IMODE(dev.files.key_file.stat().st_mode) == 0o600


def test_the_link_hands_answers_to_the_renewer_and_refuses_them_without_one(
    tmp_path: Path,
) -> None:
    """A cert_issued for this device reaches on_cert_issued; a link without a renewer
    counts it as unhandled; offline, a request is not published (the renewer retries)."""
    got: list[CertIssued] = []
    config = MqttConfig(url="mqtt://127.0.0.1:1")
    answer = CertIssued(device_id="dev-a", request_id="0" * 32, refused="x")
    plain = make_link(tmp_path, config)
    with_renewer = MqttLink(
        device_id="dev-a",
        config=config,
        counters=CounterStore(tmp_path / "renewer-counters.json"),
        make_birth=lambda bd_seq: birth("dev-a", bd_seq=bd_seq),
        snapshot=lambda: LoadSnapshot(1.0, 1.0, 1.0, 0, True),
        heartbeat_interval_s=60,
        on_cert_issued=got.append,
    )
    dev = device(tmp_path / "dev")
    dev.renewer.tick(connected=True)
    try:
        assert plain.receive(*encode_message(answer)) == "unhandled"
        assert with_renewer.receive(*encode_message(answer)) is None
        assert got == [answer]
        assert with_renewer.publish_cert_request(dev.sent[0]) is False
    finally:
        plain.transport.close()
        with_renewer.transport.close()


def test_renewal_is_on_only_with_tls_and_both_files(tmp_path: Path) -> None:
    """renews_certificate needs mqtts://, cert_file and key_file, and renew_certificate."""
    ca = TestCa(tmp_path / "ca")
    files = ca.client("dev-1")
    tls = {"url": "mqtts://h:8883", "cert_file": files.cert_file, "key_file": files.key_file}
    assert MqttConfig.model_validate(tls).renews_certificate
    assert not MqttConfig.model_validate({**tls, "renew_certificate": False}).renews_certificate
    assert not MqttConfig(url="mqtt://h:1883").renews_certificate
    assert not MqttConfig.model_validate({**tls, "key_file": None}).renews_certificate
    with pytest.raises(ValueError):
        MqttConfig.model_validate({**tls, "renew_before_fraction": 1.0})


_B64 = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=", max_size=400
)


def _pem(body: str) -> str:
    lines = [body[i : i + 64] for i in range(0, len(body), 64)] or ["A"]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


@pytest.fixture(scope="module")
def waiting_device(tmp_path_factory: pytest.TempPathFactory) -> Device:
    """A device that has sent one request and waits for its answer."""
    dev = device(tmp_path_factory.mktemp("hostile"))
    dev.renewer.tick(connected=True)
    return dev


@settings(max_examples=150)
@given(cert_body=_B64, ca_body=_B64, real_ca=st.booleans())
def test_a_hostile_answer_never_crashes_the_renewer(
    waiting_device: Device, cert_body: str, ca_body: str, real_ca: bool
) -> None:
    """Whatever base64 a schema-valid answer carries as certificate and CA, the renewer
    refuses it as invalid and changes nothing; it never raises."""
    dev = waiting_device
    before = dev.files.cert_file.read_bytes()
    ca = dev.ca.ca_file.read_text() if real_ca else _pem(ca_body)
    answer = CertIssued(
        device_id="dev-1", request_id=dev.sent[0].request_id, certificate=_pem(cert_body), ca=ca
    )
    assert not dev.renewer.handle(answer)
    assert dev.files.cert_file.read_bytes() == before
