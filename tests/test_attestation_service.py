"""The controller's attestation service on a real SQLite database, driven through ingest's
apply_batch as the MQTT shell drives it: enrollment, challenges, verdicts, quarantine."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from controller.attestation.service import (
    AttestationChallenge,
    AttestationResult,
    AttestationService,
    DeviceIdentity,
    add_golden,
    register_identity,
)
from controller.audit import AuditEntry
from controller.db import make_engine, session_scope
from controller.devices.shadows import DeviceShadow
from controller.devices.tables import Device
from controller.ingest.apply import BatchResult, Received, apply_batch
from controller.migrations import init_db
from controller.settings import AttestationSettings
from edge_agent.attestation.attester import Attester
from edge_agent.attestation.identity import FileIdentityKey
from shared.attestation import encode_public_key, public_key_of
from shared.message_signing import DEVICE_DOMAIN, Signer, short_key_id
from shared.messages import (
    Birth,
    Challenge,
    Desired,
    HardwareInfo,
    Heartbeat,
    Quote,
    encode_message,
)

T0 = datetime(2026, 11, 25, 6, 0, tzinfo=UTC)
CODE = "c0de" * 16
SETTINGS = AttestationSettings(timeout_s=10, nonce_ttl_s=60, interval_s=3600)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'controller.db'}")
    init_db(engine)
    with session_scope(engine) as session:
        add_golden(session, kind="agent_code", value=CODE, source="test", actor="test")
    yield engine
    engine.dispose()


# The genuine device of each id signs what ``ingest`` sends for it (shared/message_signing.py).
SIGNERS: dict[str, Signer] = {}


class FakeDevice:
    """A device with a real identity key and Attester, whose messages go through ingest
    signed by it; ``genuine=False``: an impostor, whose key signs nothing ingest sends."""

    def __init__(self, tmp_path: Path, device_id: str = "dev-1", *, genuine: bool = True) -> None:
        self.device_id = device_id
        self.key = FileIdentityKey.load_or_create(tmp_path / device_id)
        if genuine:
            raw = self.key.public_key_raw()
            SIGNERS[device_id] = Signer(DEVICE_DOMAIN, short_key_id(raw), self.key.sign)
        self.epoch = 1
        self.code = CODE
        self.attester = Attester(
            self.key,
            lambda: {
                "agent_code": self.code,
                "config": "0f" * 32,
                "image_id": "none",
                "boot_epoch": str(self.epoch),
            },
            clock=lambda: self.now,
        )
        self.now = T0

    def birth(self, bd_seq: int, identity_key: str | None = "own") -> Birth:
        key = (
            encode_public_key(self.key.public_key_raw()) if identity_key == "own" else identity_key
        )
        return Birth(
            device_id=self.device_id,
            bd_seq=bd_seq,
            agent_version="0.1.0",
            hardware=HardwareInfo(
                device_class="cpu", arch="x86_64", accelerator="cpu", cpu_count=1, memory_mb=1
            ),
            heartbeat_interval_s=5,
            identity_key=key,
        )

    def answer(self, challenge: Challenge) -> Quote:
        return self.attester.answer(challenge)


def ingest(
    engine: Engine,
    service: AttestationService,
    *messages: Birth | Quote | Heartbeat,
    at: datetime = T0,
) -> BatchResult:
    batch = [
        Received(*encode_message(m, SIGNERS.get(m.device_id)), received_at=at) for m in messages
    ]
    with session_scope(engine) as session:
        return apply_batch(session, batch, attestation=service)


def challenges(result: BatchResult) -> list[Challenge]:
    return [m for m in result.outbound if isinstance(m, Challenge)]


def desired(result: BatchResult) -> list[Desired]:
    return [m for m in result.outbound if isinstance(m, Desired)]


def device_row(engine: Engine, device_id: str = "dev-1") -> Device:
    with Session(engine) as session:
        row = session.get(Device, device_id)
        assert row is not None
        return row


def audits(engine: Engine, action: str) -> list[AuditEntry]:
    with Session(engine) as session:
        return list(session.exec(select(AuditEntry).where(col(AuditEntry.action) == action)))


def test_tofu_enrolls_challenges_and_accepts_a_good_quote(engine: Engine, tmp_path: Path) -> None:
    """Under tofu the first birth enrolls its key and is challenged; the device's quote is
    accepted, recorded and uses up the nonce; its re-delivery is a duplicate, not a replay."""
    service = AttestationService(SETTINGS, enrollment="tofu")
    dev = FakeDevice(tmp_path)
    first = ingest(engine, service, dev.birth(0))
    [challenge] = challenges(first)
    with Session(engine) as session:
        identity = session.get(DeviceIdentity, "dev-1")
        assert identity is not None and identity.how == "tofu"
    assert audits(engine, "device.enroll")

    quote = dev.answer(challenge)
    judged = ingest(engine, service, quote, at=T0 + timedelta(seconds=1))
    assert judged.outcome["quotes"] == 1 and judged.outbound == []
    assert not device_row(engine).quarantined
    again = ingest(engine, service, quote, at=T0 + timedelta(seconds=2))
    assert again.outcome == {"duplicates": 1}
    with Session(engine) as session:
        rows = list(session.exec(select(AttestationResult)))
        answered = session.get(AttestationChallenge, challenge.nonce)
    assert [r.ok for r in rows] == [True] and rows[0].measurements["agent_code"] == CODE
    assert answered is not None and answered.answered_at is not None


def test_storm_redeliveries_never_quarantine_an_honest_device(
    engine: Engine, tmp_path: Path
) -> None:
    """A reconnect storm's orderings: the first birth's challenge delivered twice (answered
    with the same quote), that quote re-delivered after the second birth's challenge
    superseded it and again after it expired, then the second challenge answered: nothing
    quarantines the device; only a different quote for an answered nonce is a replay."""
    service = AttestationService(SETTINGS, enrollment="tofu")
    dev = FakeDevice(tmp_path)
    [first] = challenges(ingest(engine, service, dev.birth(0)))
    quote = dev.answer(first)
    assert dev.answer(first) == quote  # the broker re-delivered the challenge
    assert ingest(engine, service, quote, at=T0 + timedelta(seconds=1)).outcome["quotes"] == 1
    [second] = challenges(ingest(engine, service, dev.birth(1), at=T0 + timedelta(seconds=2)))
    late = ingest(engine, service, quote, quote, at=T0 + timedelta(seconds=3))
    assert late.outcome == {"duplicates": 2} and late.outbound == []
    expired = ingest(engine, service, quote, at=T0 + timedelta(seconds=SETTINGS.nonce_ttl_s + 1))
    assert expired.outcome == {"duplicates": 1}
    dev.now = T0 + timedelta(seconds=4)
    judged = ingest(engine, service, dev.answer(second), at=T0 + timedelta(seconds=4))
    assert judged.outcome["quotes"] == 1 and not device_row(engine).quarantined

    dev.now = T0 + timedelta(seconds=5)  # a second, different quote for the first nonce
    forged = dev.attester._sign(first)
    replayed = ingest(engine, service, forged, at=T0 + timedelta(seconds=5))
    assert device_row(engine).quarantined
    assert "nonce_replayed" in (device_row(engine).quarantine_reason or ""), replayed.outcome


def test_a_quote_recorded_after_the_next_birth_and_then_resent_is_a_duplicate(
    engine: Engine, tmp_path: Path
) -> None:
    """Under a backlog the controller records a quote only after it challenged the device's
    next birth (a 1,000-device storm had it 74 s behind); the device's re-send of that
    quote after its reconnect is a duplicate, not a replay, and quarantines nothing."""
    service = AttestationService(SETTINGS, enrollment="tofu")
    dev = FakeDevice(tmp_path)
    [first] = challenges(ingest(engine, service, dev.birth(0)))
    quote = dev.answer(first)
    ingest(engine, service, dev.birth(1), at=T0 + timedelta(seconds=5))
    assert ingest(engine, service, quote, at=T0 + timedelta(seconds=6)).outcome["quotes"] == 1
    again = ingest(engine, service, quote, at=T0 + timedelta(seconds=7))
    assert again.outcome == {"duplicates": 1} and again.outbound == []
    assert not device_row(engine).quarantined


def test_provisioned_refuses_unknown_keys_until_registered(engine: Engine, tmp_path: Path) -> None:
    """Under provisioned enrollment an unknown key quarantines without a challenge (and the
    device is told in its desired shadow); once the key is registered, the next birth is
    challenged and a good quote lifts the quarantine and removes the desired key."""
    service = AttestationService(SETTINGS, enrollment="provisioned")
    dev = FakeDevice(tmp_path)
    refused = ingest(engine, service, dev.birth(0))
    assert challenges(refused) == []
    assert [d.state for d in desired(refused)] == [
        {"quarantine": {"reason": "unknown_identity_key"}}
    ]
    assert device_row(engine).quarantine_reason == "unknown_identity_key"
    assert [a.reason for a in audits(engine, "device.quarantine")] == ["unknown_identity_key"]

    with session_scope(engine) as session:
        register_identity(
            session,
            "dev-1",
            encode_public_key(dev.key.public_key_raw()),
            how="provisioned",
            actor="test",
        )
    reborn = ingest(engine, service, dev.birth(1))
    [challenge] = challenges(reborn)
    cleared = ingest(engine, service, dev.answer(challenge), at=T0 + timedelta(seconds=1))
    assert not device_row(engine).quarantined
    assert [d.state for d in desired(cleared)] == [{}]
    assert audits(engine, "device.quarantine_clear")


def test_changed_or_missing_identity_key_quarantines(engine: Engine, tmp_path: Path) -> None:
    """A birth with another key than the enrolled one, or with none, quarantines the device
    and is not challenged (a quote could only be signed by the wrong key)."""
    service = AttestationService(SETTINGS, enrollment="tofu")
    dev = FakeDevice(tmp_path)
    challenges(ingest(engine, service, dev.birth(0)))
    other = encode_public_key(public_key_of(Ed25519PrivateKey.generate()))
    changed = ingest(engine, service, dev.birth(1, identity_key=other))
    assert challenges(changed) == []
    assert device_row(engine).quarantine_reason == "identity_key_changed"
    missing = ingest(engine, service, dev.birth(2, identity_key=None))
    assert challenges(missing) == []
    assert device_row(engine).quarantine_reason == "identity_key_missing"


def test_forged_quotes_change_no_verdict_and_do_not_burn_the_nonce(
    engine: Engine, tmp_path: Path
) -> None:
    """Quotes signed by another key (wrong_key), with a signature that does not verify
    (bad_signature) or for a device with no enrolled key (not_enrolled) quarantine nothing,
    record no verdict and leave the nonce open: they are counted by reason and alerted once
    per device per interval (audited); the device's own answer is then accepted."""
    service = AttestationService(SETTINGS, enrollment="tofu")
    dev = FakeDevice(tmp_path)
    [challenge] = challenges(ingest(engine, service, dev.birth(0)))
    honest = dev.answer(challenge)
    impostor = FakeDevice(tmp_path / "impostor", genuine=False)
    bad_signature = honest.model_copy(update={"signature": impostor.answer(challenge).signature})
    unenrolled = FakeDevice(tmp_path / "other", "dev-2")
    ingest(engine, service, unenrolled.birth(0, identity_key=None))  # tofu: left unattested
    never_issued = Challenge(
        device_id="dev-2", nonce="ab" * 32, issued_at=T0, expires_at=T0 + timedelta(minutes=1)
    )
    for at, forged in enumerate(
        (impostor.answer(challenge), bad_signature, unenrolled.answer(never_issued)), start=1
    ):
        # Judged by attestation itself: ingest's signature check refuses an envelope not
        # signed by the enrolled key before attestation sees it (tests/test_message_signing*).
        with session_scope(engine) as session:
            verdict, outbound = service.on_quote(session, forged, T0 + timedelta(seconds=at))
        assert verdict.forged is not None and outbound == [], "a forgery publishes nothing"
    assert not device_row(engine).quarantined and not device_row(engine, "dev-2").quarantined
    assert service.forgeries.counts() == {"wrong_key": 1, "bad_signature": 1, "not_enrolled": 1}
    alerts = audits(engine, "attestation.forged_quote")
    assert [(a.target, a.reason) for a in alerts] == [
        ("device:dev-1", "wrong_key"),
        ("device:dev-2", "not_enrolled"),
    ], "the second forgery for dev-1 within the interval is counted, not alerted"
    assert alerts[0].actor == "system:attestation"
    with Session(engine) as session:
        assert list(session.exec(select(AttestationResult))) == []
        open_nonce = session.get(AttestationChallenge, challenge.nonce)
        assert open_nonce is not None and open_nonce.answered_at is None

    ingest(engine, service, honest, at=T0 + timedelta(seconds=4))
    assert not device_row(engine).quarantined
    with Session(engine) as session:
        assert [r.ok for r in session.exec(select(AttestationResult))] == [True]
    late = impostor.answer(challenge)  # for the answered nonce, and past the interval
    with session_scope(engine) as session:
        service.on_quote(session, late, T0 + timedelta(seconds=SETTINGS.nonce_ttl_s + 400))
    assert not device_row(engine).quarantined
    dev_1 = [a for a in audits(engine, "attestation.forged_quote") if a.target == "device:dev-1"]
    assert sorted(a.detail["suppressed_since_last_alert"] for a in dev_1) == [0, 1]


def test_forged_quote_does_not_lift_a_quarantine(engine: Engine, tmp_path: Path) -> None:
    """A device quarantined by a verified failing quote (tampered agent code) stays
    quarantined, for the same reason, when a forged quote arrives for its next challenge."""
    service = AttestationService(SETTINGS, enrollment="tofu")
    dev = FakeDevice(tmp_path)
    [first] = challenges(ingest(engine, service, dev.birth(0)))
    dev.code = "bad0" * 16
    ingest(engine, service, dev.answer(first), at=T0 + timedelta(seconds=1))
    assert device_row(engine).quarantine_reason == "agent_code"
    [second] = challenges(ingest(engine, service, dev.birth(1), at=T0 + timedelta(seconds=2)))
    dev.code = CODE
    good = dev.answer(second)
    other = FakeDevice(tmp_path / "x", genuine=False)
    forged = good.model_copy(update={"signature": other.answer(second).signature})
    with session_scope(engine) as session:
        verdict, _ = service.on_quote(session, forged, T0 + timedelta(seconds=3))
    assert verdict.forged == "bad_signature"
    assert device_row(engine).quarantine_reason == "agent_code"


def test_boot_epoch_going_backwards_quarantines(engine: Engine, tmp_path: Path) -> None:
    """After a good quote at boot epoch 5, a quote from boot epoch 4 fails on boot_epoch."""
    service = AttestationService(SETTINGS, enrollment="tofu")
    dev = FakeDevice(tmp_path)
    [first] = challenges(ingest(engine, service, dev.birth(0)))
    dev.epoch = 5
    ingest(engine, service, dev.answer(first), at=T0 + timedelta(seconds=1))
    [second] = challenges(ingest(engine, service, dev.birth(1), at=T0 + timedelta(seconds=2)))
    dev.epoch = 4
    ingest(engine, service, dev.answer(second), at=T0 + timedelta(seconds=3))
    assert device_row(engine).quarantine_reason == "boot_epoch"


def heartbeat(seq: int) -> Heartbeat:
    return Heartbeat(
        device_id="dev-1",
        bd_seq=1,
        seq=seq,
        uptime_s=1,
        cpu_percent=1,
        memory_percent=1,
        requests_total=0,
        local_tier_healthy=True,
    )


def test_sweep_quarantines_silent_online_devices_and_rechallenges(
    engine: Engine, tmp_path: Path
) -> None:
    """The sweep leaves a challenge alone before the timeout; after it, an older unanswered
    challenge superseded by a newer one lapses quietly, while the newest one unanswered by an
    online device quarantines it as silent; once interval_s has passed it challenges again."""
    service = AttestationService(SETTINGS, enrollment="tofu")
    dev = FakeDevice(tmp_path)
    ingest(engine, service, dev.birth(0))
    ingest(engine, service, dev.birth(1), heartbeat(0), at=T0 + timedelta(seconds=1))
    with session_scope(engine) as session:
        assert service.sweep(session, T0 + timedelta(seconds=5)) == []
    assert not device_row(engine).quarantined
    with session_scope(engine) as session:
        out = service.sweep(session, T0 + timedelta(seconds=12))
    assert [d.state for d in out if isinstance(d, Desired)] == [
        {"quarantine": {"reason": "silent"}}
    ]
    with Session(engine) as session:
        silent = list(session.exec(select(AttestationResult)))
        lapsed = list(
            session.exec(
                select(AttestationChallenge).where(col(AttestationChallenge.lapsed_at).is_not(None))
            )
        )
    assert len(silent) == 1 and silent[0].reasons[0]["code"] == "silent"
    assert len(lapsed) == 2
    with session_scope(engine) as session:
        assert service.sweep(session, T0 + timedelta(seconds=20)) == []
        due = service.sweep(session, T0 + timedelta(seconds=3602))
    assert [type(m) for m in due] == [Challenge]
    with Session(engine) as session:
        shadow = session.get(DeviceShadow, "dev-1")
    assert shadow is not None and shadow.desired == {"quarantine": {"reason": "silent"}}


def test_sweep_spares_offline_devices(engine: Engine, tmp_path: Path) -> None:
    """A device that went offline cannot answer; its challenge lapses without quarantine
    (its next birth is challenged again)."""
    service = AttestationService(SETTINGS, enrollment="tofu")
    dev = FakeDevice(tmp_path)
    ingest(engine, service, dev.birth(0))
    with session_scope(engine) as session:
        row = session.get(Device, "dev-1")
        assert row is not None
        row.state = "offline"
        session.add(row)
    with session_scope(engine) as session:
        assert service.sweep(session, T0 + timedelta(seconds=30)) == []
    assert not device_row(engine).quarantined


def test_golden_values_api(engine: Engine, tmp_path: Path) -> None:
    """Admins add (201; 409 again; 422 malformed), list and remove golden values, each
    change audited; operators and viewers may list but not add (golden values are trust
    roots); challenging a device without an enrolled key is refused (409)."""
    from fastapi.testclient import TestClient

    from controller.app import create_app
    from controller.auth.credentials import create_api_token
    from controller.auth.users import create_user
    from controller.services import Services
    from controller.settings import load_settings

    settings = load_settings(
        None,
        environment="development",
        database_url=f"sqlite:///{tmp_path / 'controller.db'}",
        secure_cookies=False,
    )
    services = Services(settings=settings, engine=engine)
    with session_scope(engine) as session:
        operator = create_user(session, username="op", password="a-long-password", role="operator")
        viewer = create_user(session, username="vi", password="a-long-password", role="viewer")
        admin = create_user(session, username="ad", password="a-long-password", role="admin")
        op = {"Authorization": f"Bearer {create_api_token(session, operator, name='t')}"}
        ad = {"Authorization": f"Bearer {create_api_token(session, admin, name='t')}"}
        vi = {"Authorization": f"Bearer {create_api_token(session, viewer, name='t')}"}
        session.add(Device(id="dev-9", state="online"))
    app = create_app(settings, services=services)
    app.state.services = services  # routes only; no broker or scheduler in this test
    client = TestClient(app)
    body = {"kind": "image_id", "value": "orin-2026.11.1", "note": "image build 41"}
    created = client.post("/api/attestation/golden", json=body, headers=ad)
    assert created.status_code == 201, created.text
    assert created.json()["source"] == "user:ad"
    assert client.post("/api/attestation/golden", json=body, headers=ad).status_code == 409
    bad = client.post("/api/attestation/golden", json={"kind": "model", "value": "x"}, headers=ad)
    assert bad.status_code == 422
    assert client.post("/api/attestation/golden", json=body, headers=vi).status_code == 403
    assert client.post("/api/attestation/golden", json=body, headers=op).status_code == 403
    listed = client.get("/api/attestation/golden", params={"kind": "image_id"}, headers=vi)
    assert [g["value"] for g in listed.json()] == ["orin-2026.11.1"]
    golden_id = created.json()["id"]
    assert client.delete(f"/api/attestation/golden/{golden_id}", headers=op).status_code == 403
    assert client.delete(f"/api/attestation/golden/{golden_id}", headers=ad).status_code == 204
    assert (
        client.get("/api/attestation/golden", params={"kind": "image_id"}, headers=vi).json() == []
    )
    assert [
        len(audits(engine, a)) for a in ("attestation.golden_add", "attestation.golden_remove")
    ] == [
        2,  # the fixture's agent_code and this image id
        1,
    ]
    refused = client.post("/api/devices/dev-9/attest", headers=op)
    assert refused.status_code == 409 and "no enrolled identity key" in refused.text


def test_a_challenge_the_broker_never_took_is_forgotten_not_held_against_the_device(
    tmp_path: Path,
) -> None:
    """When the controller cannot publish a challenge (its broker connection is down), the
    challenge row is dropped, so the silence sweep never quarantines a device for not
    answering it; and the sweep itself waits while the broker is away."""
    from controller.ingest.subscriber import MqttIngest
    from controller.services import Services
    from controller.settings import load_settings

    settings = load_settings(
        None,
        environment="development",
        database_url=f"sqlite:///{tmp_path / 'c.db'}",
        broker={"mode": "external", "url": "mqtt://127.0.0.1:9"},
    )
    services = Services.create(settings)
    services.ingest = MqttIngest(  # never started: not connected
        broker=settings.broker,
        port=9,
        engine=services.engine,
        stats=services.stats,
        queue_size=10,
        batch_size=10,
    )
    with Session(services.engine) as session:
        challenge = services.attestation.challenge(
            session, "dev-1", datetime.now(UTC), why="operator"
        )
        session.commit()
    services.publish_outbound([challenge])
    with Session(services.engine) as session:
        assert session.get(AttestationChallenge, challenge.nonce) is None
    services.attestation_sweep()  # returns at once: no broker, no verdicts
    with Session(services.engine) as session:
        assert session.exec(select(AttestationResult)).all() == []
    services.engine.dispose()
