"""Who may say what: the controller's check of device signatures
(controller/ingest/signatures.py) and the agent's trust in controller keys
(edge_agent/sync/trust.py), rule by rule."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from controller.devices.tables import MAX_SESSIONS
from controller.ingest.signatures import (
    DeviceSession,
    SessionKeys,
    SignatureRules,
    check_signature,
    remember_session,
)
from controller.pki.message_keys import MessageKeyStore
from edge_agent.sync.trust import ControllerTrust, TrustStoreError, write_keys
from shared.attestation import encode_public_key, public_key_of
from shared.errors import ProtocolError
from shared.message_signing import DEVICE_DOMAIN, SessionMac, session_mac_key, short_key_id
from shared.messages import (
    AnyMessage,
    Birth,
    ControllerKeys,
    Desired,
    HardwareInfo,
    Heartbeat,
    decode_signed,
    encode_message,
)
from tests.signing import controller_signer, device_signer

NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)
TOFU = SignatureRules(enrollment="tofu", max_age_s=86400)
PROVISIONED = SignatureRules(enrollment="provisioned", max_age_s=86400)
DEVICE_KEY = Ed25519PrivateKey.generate()
ROGUE_KEY = Ed25519PrivateKey.generate()


def heartbeat(ts: datetime = NOW, seq: int = 1) -> Heartbeat:
    return Heartbeat(device_id="dev-1", ts=ts, bd_seq=1, seq=seq, uptime_s=1.0,
                     cpu_percent=1.0, memory_percent=1.0, requests_total=0,
                     local_tier_healthy=True)  # fmt: skip


def birth(key: Ed25519PrivateKey | None) -> Birth:
    return Birth(
        device_id="dev-1",
        ts=NOW,
        bd_seq=1,
        agent_version="0.1.0",
        hardware=HardwareInfo(device_class="cpu", arch="x86_64", accelerator="cpu",
                              cpu_count=1, memory_mb=1),
        heartbeat_interval_s=5,
        identity_key=encode_public_key(public_key_of(key)) if key else None,
    )  # fmt: skip


def check(
    message: AnyMessage,
    signer_key: Ed25519PrivateKey | None,
    enrolled: Ed25519PrivateKey | None,
    rules: SignatureRules = TOFU,
    *,
    tamper: bool = False,
) -> bytes | None:
    topic, payload = encode_message(message, device_signer(signer_key) if signer_key else None)
    if tamper:
        payload = payload.replace(b'"cpu_percent":1.0', b'"cpu_percent":2.0')
    _, decoded, signed = decode_signed(topic, payload)
    key = public_key_of(enrolled) if enrolled else None
    return check_signature(topic, decoded, signed, key, rules, NOW)


def refusal(*args: object, **kwargs: object) -> str:
    with pytest.raises(ProtocolError) as e:
        check(*args, **kwargs)  # type: ignore[arg-type]
    return e.value.reason


def test_an_enrolled_device_must_sign_with_its_own_key() -> None:
    """A message of an enrolled device passes signed by its key and is refused unsigned
    (``unsigned``), signed by another key (``unknown_key``) or altered after signing
    (``bad_signature``)."""
    assert check(heartbeat(), DEVICE_KEY, DEVICE_KEY) == public_key_of(DEVICE_KEY)
    assert refusal(heartbeat(), None, DEVICE_KEY) == "unsigned"
    assert refusal(heartbeat(), ROGUE_KEY, DEVICE_KEY) == "unknown_key"
    assert refusal(heartbeat(), DEVICE_KEY, DEVICE_KEY, tamper=True) == "bad_signature"


def test_a_birth_presenting_a_new_key_is_refused_not_adopted() -> None:
    """A birth for an enrolled device that presents another key, signed by that key, is
    ``unknown_key``: the enrolled key decides, not the one a message brings."""
    assert refusal(birth(ROGUE_KEY), ROGUE_KEY, DEVICE_KEY) == "unknown_key"


def test_a_first_birth_must_prove_its_key() -> None:
    """With no key enrolled, a birth presenting a key must be signed by it (proof of
    possession); its key then checks what follows."""
    assert check(birth(DEVICE_KEY), DEVICE_KEY, None) == public_key_of(DEVICE_KEY)
    assert refusal(birth(DEVICE_KEY), None, None) == "unsigned"
    assert refusal(birth(DEVICE_KEY), ROGUE_KEY, None) == "unknown_key"


def test_unenrolled_devices_under_tofu_and_provisioned() -> None:
    """Under tofu an unenrolled device's messages pass unchecked (agents before
    attestation); under provisioned only its birth does (attestation quarantines it), the
    rest is ``not_enrolled``."""
    assert check(heartbeat(), None, None, TOFU) is None
    assert check(birth(None), None, None, PROVISIONED) is None
    assert refusal(heartbeat(), None, None, PROVISIONED) == "not_enrolled"
    assert refusal(heartbeat(), ROGUE_KEY, None, PROVISIONED) == "not_enrolled"


def test_a_signed_message_older_than_the_window_is_a_replay() -> None:
    """A genuinely signed heartbeat stamped more than ``max_age_s`` ago is ``expired``; one
    inside the window passes; births are exempt (retained, numbered by bd_seq)."""
    old = heartbeat(ts=NOW - timedelta(days=2))
    assert refusal(old, DEVICE_KEY, DEVICE_KEY) == "expired"
    assert check(heartbeat(ts=NOW - timedelta(hours=23)), DEVICE_KEY, DEVICE_KEY) is not None
    stale_birth = birth(DEVICE_KEY).model_copy(update={"ts": NOW - timedelta(days=30)})
    assert check(stale_birth, DEVICE_KEY, DEVICE_KEY) is not None


# --- the agent's side --------------------------------------------------------------------
CONTROLLER = Ed25519PrivateKey.generate()
NEXT = Ed25519PrivateKey.generate()


def receive(trust: ControllerTrust, message: AnyMessage, key: Ed25519PrivateKey | None) -> None:
    topic, payload = encode_message(message, controller_signer(key) if key else None)
    _, decoded, signed = decode_signed(topic, payload)
    trust.check(topic, decoded, signed)


def keys_message(*keys: Ed25519PrivateKey) -> ControllerKeys:
    return ControllerKeys(
        device_id="dev-1", keys=[encode_public_key(public_key_of(k)) for k in keys]
    )


def trust_refusal(
    trust: ControllerTrust, message: AnyMessage, key: Ed25519PrivateKey | None
) -> str:
    with pytest.raises(ProtocolError) as e:
        receive(trust, message, key)
    return e.value.reason


DESIRED = Desired(device_id="dev-1", version=5, state={"heartbeat_interval_s": 5})


def test_an_unpinned_agent_takes_nothing_but_self_signed_keys(tmp_path: Path) -> None:
    """Before pinning, a desired document is ``no_controller_key``; keys signed by a key they
    do not list are ``unknown_key``; self-signed keys are pinned (0600 file) and from then
    on only their signatures pass."""
    trust = ControllerTrust(tmp_path / "identity" / "controller-keys.json")
    assert trust_refusal(trust, DESIRED, CONTROLLER) == "no_controller_key"
    assert trust_refusal(trust, keys_message(CONTROLLER), ROGUE_KEY) == "unknown_key"
    assert trust_refusal(trust, keys_message(CONTROLLER), None) == "unsigned"
    receive(trust, keys_message(CONTROLLER), CONTROLLER)
    assert trust.kids() == [short_key_id(public_key_of(CONTROLLER))]
    assert (trust.path.stat().st_mode & 0o777) == 0o600
    receive(trust, DESIRED, CONTROLLER)
    assert trust_refusal(trust, DESIRED, None) == "unsigned"
    assert trust_refusal(trust, DESIRED, ROGUE_KEY) == "unknown_key"
    assert ControllerTrust(trust.path).kids() == trust.kids(), "the pin survives a restart"


def test_rotation_needs_a_trusted_signature(tmp_path: Path) -> None:
    """A pinned agent replaces its keys only on a message signed by a key it trusts: a
    rogue's self-signed keys are refused, the controller's announcement of a next key is
    taken, and the next key alone (signed by it) narrows the set."""
    path = tmp_path / "controller-keys.json"
    write_keys(path, [public_key_of(CONTROLLER)])
    trust = ControllerTrust(path)
    assert trust_refusal(trust, keys_message(ROGUE_KEY), ROGUE_KEY) == "unknown_key"
    receive(trust, keys_message(NEXT, CONTROLLER), CONTROLLER)
    assert trust.kids() == [short_key_id(public_key_of(k)) for k in (NEXT, CONTROLLER)]
    receive(trust, DESIRED, NEXT)
    receive(trust, keys_message(NEXT), NEXT)
    assert trust.kids() == [short_key_id(public_key_of(NEXT))]
    assert trust_refusal(trust, DESIRED, CONTROLLER) == "unknown_key"


def test_a_damaged_trust_file_stops_the_agent_with_its_name(tmp_path: Path) -> None:
    """A trust file that is not the expected JSON is an error naming the file, never an
    empty trust (which would let the agent pin a stranger's key)."""
    path = tmp_path / "controller-keys.json"
    path.write_text(json.dumps({"keys": ["not base64!"]}))
    with pytest.raises(TrustStoreError, match=r"controller-keys\.json"):
        ControllerTrust(path)


# --- session MACs ------------------------------------------------------------------------
def session_world(tmp_path: Path) -> tuple[SignatureRules, DeviceSession, SessionMac]:
    """A controller keyring with its exchange key, and a device session agreed with it."""
    ring = MessageKeyStore(tmp_path / "pki", None).load(create=True)
    exchange = ring.exchange_public(ring.current_kid)
    assert exchange is not None
    ephemeral = X25519PrivateKey.generate()
    public = ephemeral.public_key().public_bytes_raw()
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(exchange))
    mac = SessionMac(DEVICE_DOMAIN, short_key_id(public), session_mac_key(shared, "dev-1", public))
    rules = SignatureRules("tofu", 86400, SessionKeys(ring))
    return rules, (public, ring.current_kid), mac


def mac_check(
    message: AnyMessage,
    mac: SessionMac,
    rules: SignatureRules,
    session: DeviceSession | None,
    *,
    tamper: bool = False,
) -> bytes | None:
    topic, payload = encode_message(message, mac)
    if tamper:
        payload = payload.replace(b'"cpu_percent":1.0', b'"cpu_percent":2.0')
    _, decoded, signed = decode_signed(topic, payload)
    sessions = {short_key_id(session[0]): session} if session is not None else {}
    return check_signature(
        topic, decoded, signed, public_key_of(DEVICE_KEY), rules, NOW, sessions=sessions
    )


def mac_refusal(*args: object, **kwargs: object) -> str:
    with pytest.raises(ProtocolError) as e:
        mac_check(*args, **kwargs)  # type: ignore[arg-type]
    return e.value.reason


def test_session_macs_pass_only_under_the_devices_current_session(tmp_path: Path) -> None:
    """A heartbeat MACed under one of the device's sessions passes; altered it is
    ``bad_signature``; under a session the device does not have, or with none open,
    ``unknown_session``; a birth must carry the identity key's signature, never a MAC; the
    replay window holds for MACs too."""
    rules, session, mac = session_world(tmp_path)
    assert mac_check(heartbeat(), mac, rules, session) == public_key_of(DEVICE_KEY)
    assert mac_refusal(heartbeat(), mac, rules, session, tamper=True) == "bad_signature"
    other_rules, other_session, _ = session_world(tmp_path / "other")
    assert mac_refusal(heartbeat(), mac, rules, other_session) == "unknown_session"
    assert mac_refusal(heartbeat(), mac, rules, None) == "unknown_session"
    assert mac_refusal(heartbeat(), mac, other_rules, (session[0], "0" * 16)) == ("unknown_session")
    assert mac_refusal(birth(DEVICE_KEY), mac, rules, session) == "unsigned"
    old = heartbeat(ts=NOW - timedelta(days=2))
    assert mac_refusal(old, mac, rules, session) == "expired"


def test_recent_sessions_are_kept_so_late_messages_of_earlier_ones_pass() -> None:
    """A device keeps its last MAX_SESSIONS sessions, newest last: a birth delivered late
    (an earlier session's, re-sent after the next one's) adds its session without pushing
    out the current one, and a birth seen again does not duplicate it."""
    sessions: list[list[str]] = []
    for n in range(MAX_SESSIONS + 3):
        sessions = remember_session(sessions, f"key-{n}", "k" * 16)
    assert [e[0] for e in sessions] == [f"key-{n}" for n in range(3, MAX_SESSIONS + 3)]
    late = remember_session(sessions, "key-2", "k" * 16)
    assert late[-1][0] == "key-2" and f"key-{MAX_SESSIONS + 2}" in [e[0] for e in late]
    assert remember_session(late, "key-2", "k" * 16) == late
