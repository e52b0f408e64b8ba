"""The attestation policy, pure: each named case is one quote judged against one challenge,
one enrolled key and one set of golden values, with the expected reason codes."""

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.attestation.policy import ChallengeRecord, Golden, evaluate_quote
from shared.attestation import (
    decode_public_key,
    encode_public_key,
    key_id,
    public_key_of,
    quote_digest,
    quote_payload,
    sign,
    tree_digest,
    verify,
)
from shared.messages import Quote

ISSUED = datetime(2026, 11, 25, 6, 0, 0, 123456, tzinfo=UTC)
NOW = ISSUED + timedelta(seconds=2)
DEVICE_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
NONCE = "ab" * 32
AGENT_CODE = "a1" * 32
MODEL = "b2" * 32
GOOD_MEASUREMENTS = {
    "agent_code": AGENT_CODE,
    "config": "c3" * 32,
    "image_id": "none",
    "boot_epoch": "4",
    "model:smollm2": MODEL,
}
GOLDEN = Golden(agent_code=frozenset({AGENT_CODE}), models=frozenset({MODEL}))


def make_quote(
    *,
    key: Ed25519PrivateKey = DEVICE_KEY,
    device_id: str = "dev-1",
    nonce: str = NONCE,
    measurements: dict[str, str] | None = None,
    issued_at: datetime = ISSUED,
    answered_at: datetime = ISSUED + timedelta(seconds=1),
) -> Quote:
    """A quote signed exactly as the agent's Attester signs one."""
    values = dict(GOOD_MEASUREMENTS if measurements is None else measurements)
    kid = key_id(public_key_of(key))
    payload = quote_payload(
        device_id=device_id,
        nonce=nonce,
        key_id=kid,
        measurements=values,
        issued_at=issued_at,
        answered_at=answered_at,
    )
    return Quote(
        device_id=device_id,
        nonce=nonce,
        key_id=kid,
        measurements=values,
        issued_at=issued_at,
        answered_at=answered_at,
        signature=sign(key, payload),
    )


def digest_of(quote: Quote) -> str:
    payload = quote_payload(
        device_id=quote.device_id,
        nonce=quote.nonce,
        key_id=quote.key_id,
        measurements=quote.measurements,
        issued_at=quote.issued_at,
        answered_at=quote.answered_at,
    )
    return quote_digest(payload, quote.signature)


CHALLENGE = ChallengeRecord(
    nonce=NONCE, device_id="dev-1", issued_at=ISSUED, expires_at=ISSUED + timedelta(seconds=60)
)


@dataclass(frozen=True)
class Case:
    quote: Quote
    expected: tuple[str, ...]
    challenge: ChallengeRecord | None = CHALLENGE
    enrolled: bytes | None = public_key_of(DEVICE_KEY)
    golden: Golden = GOLDEN
    last_boot_epoch: int | None = 3
    now: datetime = NOW


def _tampered_after_signing() -> Quote:
    good = make_quote()
    return good.model_copy(update={"measurements": {**good.measurements, "config": "d4" * 32}})


def _other_signature() -> Quote:
    good = make_quote()
    forged = make_quote(key=OTHER_KEY)
    return good.model_copy(update={"signature": forged.signature})


_REPLAYED = make_quote(answered_at=ISSUED + timedelta(seconds=1))

CASES: dict[str, Callable[[], Case]] = {
    "good quote": lambda: Case(make_quote(), ()),
    "good quote on first attestation (no earlier boot epoch)": lambda: Case(
        make_quote(), (), last_boot_epoch=None
    ),
    "good quote, same boot as before": lambda: Case(make_quote(), (), last_boot_epoch=4),
    "bad signature: measurements changed after signing": lambda: Case(
        _tampered_after_signing(), ("bad_signature",)
    ),
    "bad signature: another key's signature under the device's key id": lambda: Case(
        _other_signature(), ("bad_signature",)
    ),
    "wrong key: signed and labelled by a key that is not enrolled": lambda: Case(
        make_quote(key=OTHER_KEY), ("wrong_key",)
    ),
    "not enrolled": lambda: Case(make_quote(), ("not_enrolled",), enrolled=None),
    "replayed nonce: answered before by a different quote": lambda: Case(
        make_quote(answered_at=ISSUED + timedelta(seconds=2)),
        ("nonce_replayed",),
        challenge=replace(
            CHALLENGE, answered_at=ISSUED + timedelta(seconds=1), answer_digest=digest_of(_REPLAYED)
        ),
    ),
    "expired nonce": lambda: Case(
        make_quote(), ("nonce_expired",), now=ISSUED + timedelta(seconds=60, microseconds=1)
    ),
    "nonce issued to another device": lambda: Case(
        make_quote(), ("nonce_other_device",), challenge=replace(CHALLENGE, device_id="dev-2")
    ),
    "unknown nonce": lambda: Case(make_quote(), ("unknown_nonce",), challenge=None),
    "issued_at differs from the challenge's": lambda: Case(
        make_quote(issued_at=ISSUED - timedelta(seconds=5)), ("challenge_mismatch",)
    ),
    "modified agent_code": lambda: Case(
        make_quote(measurements={**GOOD_MEASUREMENTS, "agent_code": "e5" * 32}), ("agent_code",)
    ),
    "no golden agent_code registered at all": lambda: Case(
        make_quote(), ("agent_code",), golden=replace(GOLDEN, agent_code=frozenset())
    ),
    "unknown model hash": lambda: Case(
        make_quote(measurements={**GOOD_MEASUREMENTS, "model:smollm2": "f6" * 32}),
        ("model_hash",),
    ),
    "a second model, unknown": lambda: Case(
        make_quote(measurements={**GOOD_MEASUREMENTS, "model:vision": "f6" * 32}),
        ("model_hash",),
    ),
    "boot epoch backwards": lambda: Case(make_quote(), ("boot_epoch",), last_boot_epoch=5),
    "boot epoch not a number": lambda: Case(
        make_quote(measurements={**GOOD_MEASUREMENTS, "boot_epoch": "-1"}), ("boot_epoch",)
    ),
    "image id not golden once images are registered": lambda: Case(
        make_quote(), ("image_id",), golden=replace(GOLDEN, images=frozenset({"img-2026.11"}))
    ),
    "golden image id passes": lambda: Case(
        make_quote(measurements={**GOOD_MEASUREMENTS, "image_id": "img-2026.11"}),
        (),
        golden=replace(GOLDEN, images=frozenset({"img-2026.11"})),
    ),
    "config not golden once configs are registered": lambda: Case(
        make_quote(), ("config",), golden=replace(GOLDEN, configs=frozenset({"00" * 32}))
    ),
    "a required measurement missing": lambda: Case(
        make_quote(measurements={k: v for k, v in GOOD_MEASUREMENTS.items() if k != "image_id"}),
        ("missing_measurement",),
    ),
    "every failure is reported at once": lambda: Case(
        make_quote(
            key=OTHER_KEY,
            measurements={**GOOD_MEASUREMENTS, "agent_code": "e5" * 32, "model:x": "f6" * 32},
        ),
        ("nonce_expired", "wrong_key", "agent_code", "model_hash", "boot_epoch"),
        last_boot_epoch=9,
        now=ISSUED + timedelta(hours=1),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_policy_case(name: str) -> None:
    """Each named quote gets exactly the expected reason codes (none: trusted)."""
    case = CASES[name]()
    verdict = evaluate_quote(
        case.quote,
        challenge=case.challenge,
        enrolled_key=case.enrolled,
        golden=case.golden,
        last_boot_epoch=case.last_boot_epoch,
        now=case.now,
    )
    assert verdict.codes == case.expected, [r.detail for r in verdict.reasons]
    assert verdict.ok is (case.expected == ())
    assert not verdict.duplicate
    assert all(r.detail for r in verdict.reasons), "every reason says what is wrong"


@pytest.mark.parametrize(
    ("superseded", "reborn", "now"),
    [
        (False, False, NOW),
        (True, True, NOW),  # the device reconnected: its next birth was challenged first
        (False, False, ISSUED + timedelta(seconds=61)),  # re-read after the nonce expired
    ],
    ids=["before-anything-else", "after-the-next-birth", "after-expiry"],
)
def test_redelivered_quote_is_a_duplicate_not_a_replay(
    superseded: bool, reborn: bool, now: datetime
) -> None:
    """The very quote that answered a nonce, delivered again, is a duplicate to ignore, not
    a replay: before a newer challenge, after expiry, and after the device's next birth
    superseded it (in a reconnect storm that is what honest devices' quotes do)."""
    answered = replace(
        CHALLENGE,
        answered_at=ISSUED + timedelta(seconds=1),
        answer_digest=digest_of(_REPLAYED),
        superseded=superseded,
        reborn=reborn,
    )
    verdict = evaluate_quote(
        _REPLAYED,
        challenge=answered,
        enrolled_key=public_key_of(DEVICE_KEY),
        golden=GOLDEN,
        last_boot_epoch=3,
        now=now,
    )
    assert verdict.duplicate and not verdict.ok and verdict.reasons == ()


def test_the_same_quote_after_a_newer_challenge_without_a_birth_is_a_replay() -> None:
    """Captured traffic published again after an operator's (or periodic) challenge, with no
    birth of the device since, is a replay: no reconnect happened that could re-send it."""
    answered = replace(
        CHALLENGE,
        answered_at=ISSUED + timedelta(seconds=1),
        answer_digest=digest_of(_REPLAYED),
        superseded=True,
    )
    verdict = evaluate_quote(
        _REPLAYED,
        challenge=answered,
        enrolled_key=public_key_of(DEVICE_KEY),
        golden=GOLDEN,
        last_boot_epoch=3,
        now=NOW,
    )
    assert verdict.codes == ("nonce_replayed",) and not verdict.duplicate


def test_a_second_quote_for_an_answered_nonce_is_still_a_replay_after_a_newer_challenge() -> None:
    """A different quote (even validly signed) for a nonce already answered is a replay,
    whether or not the device was born again since: only byte-identical re-deliveries pass."""
    answered = replace(
        CHALLENGE,
        answered_at=ISSUED + timedelta(seconds=1),
        answer_digest=digest_of(_REPLAYED),
        superseded=True,
        reborn=True,
    )
    verdict = evaluate_quote(
        make_quote(answered_at=ISSUED + timedelta(seconds=2)),
        challenge=answered,
        enrolled_key=public_key_of(DEVICE_KEY),
        golden=GOLDEN,
        last_boot_epoch=3,
        now=NOW,
    )
    assert verdict.codes == ("nonce_replayed",) and not verdict.duplicate


def test_boot_epoch_is_parsed_for_the_next_quote() -> None:
    """A good verdict carries the quote's boot epoch, so the next one can be compared."""
    verdict = evaluate_quote(
        make_quote(),
        challenge=CHALLENGE,
        enrolled_key=public_key_of(DEVICE_KEY),
        golden=GOLDEN,
        last_boot_epoch=None,
        now=NOW,
    )
    assert verdict.ok and verdict.boot_epoch == 4


def test_quote_payload_is_canonical_and_bound_to_every_field() -> None:
    """The signed bytes do not depend on measurement order or the timestamps' zone, and
    changing any one field changes them (so the signature covers it)."""
    base: dict[str, Any] = {
        "device_id": "dev-1",
        "nonce": NONCE,
        "key_id": "00" * 32,
        "measurements": GOOD_MEASUREMENTS,
        "issued_at": ISSUED,
        "answered_at": NOW,
    }
    payload = quote_payload(**base)
    shuffled = dict(reversed(list(GOOD_MEASUREMENTS.items())))
    cet = ISSUED.astimezone(ZoneInfo("Europe/Berlin"))
    assert quote_payload(**{**base, "measurements": shuffled, "issued_at": cet}) == payload
    changes: dict[str, Any] = {
        "device_id": "dev-2",
        "nonce": "cd" * 32,
        "key_id": "11" * 32,
        "measurements": {**GOOD_MEASUREMENTS, "boot_epoch": "5"},
        "issued_at": ISSUED + timedelta(microseconds=1),
        "answered_at": NOW + timedelta(microseconds=1),
    }
    for field, value in changes.items():
        assert quote_payload(**{**base, field: value}) != payload, field


def test_key_encoding_and_verification() -> None:
    """A public key survives its base64 form, its id is the SHA-256 of the raw bytes, and a
    signature verifies only for its own key and bytes."""
    raw = public_key_of(DEVICE_KEY)
    assert decode_public_key(encode_public_key(raw)) == raw
    assert key_id(raw) == hashlib.sha256(raw).hexdigest()
    signature = sign(DEVICE_KEY, b"payload")
    assert verify(raw, b"payload", signature)
    assert not verify(raw, b"payload!", signature)
    assert not verify(public_key_of(OTHER_KEY), b"payload", signature)
    assert not verify(raw, b"payload", "not base64!")
    for bad in ("", "AAAA", "!" * 44, encode_public_key(raw)[:-4]):
        with pytest.raises(ValueError):
            decode_public_key(bad)


def test_tree_digest_is_order_independent_and_path_sensitive() -> None:
    """The agent code digest depends on which file has which content, not on listing order."""
    entries = [("edge_agent/a.py", "1" * 64), ("shared/b.py", "2" * 64)]
    assert tree_digest(entries) == tree_digest(list(reversed(entries)))
    assert tree_digest(entries) != tree_digest([("edge_agent/a.py", "2" * 64), entries[1]])
    assert tree_digest(entries) != tree_digest([("edge_agent/c.py", "1" * 64), entries[1]])
    assert tree_digest(entries) != tree_digest(entries[:1])
