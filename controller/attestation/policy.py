"""Judging a quote, pure: the nonce, the key, the signature, then the measurements.

No database and no clock: the service hands in the challenge record, the enrolled key,
the golden values and ``now``, and gets a verdict listing *every* reason the quote fails
(so an operator sees a tampered agent and an unknown model at once, not one per round).

Order of the checks, as in Keylime's verifier: freshness first (the nonce must be one this
controller issued to this device, unanswered and unexpired), then authenticity (signed by
the enrolled key), then integrity (the measurements against golden values).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.attestation import (
    AGENT_CODE,
    BOOT_EPOCH,
    CONFIG,
    IMAGE_ID,
    MODEL_PREFIX,
    REQUIRED_MEASUREMENTS,
    key_id,
    quote_digest,
    quote_payload,
    verify,
)
from shared.messages import Quote

# The device echoes the challenge's issued_at; databases may round it below a millisecond.
_ISSUED_AT_SLACK = timedelta(milliseconds=1)
# A quote failing any of these was not signed by the device's enrolled key: whoever sent
# it, it says nothing about the device, so it changes no verdict (a forgery, counted).
AUTHENTICITY_CODES = frozenset({"not_enrolled", "wrong_key", "bad_signature"})


@dataclass(frozen=True, slots=True)
class ChallengeRecord:
    """A challenge as the controller issued it, and whether it was answered."""

    nonce: str
    device_id: str
    issued_at: datetime
    expires_at: datetime
    answered_at: datetime | None = None
    answer_digest: str | None = None  # quote_digest of the quote that answered it
    superseded: bool = False  # a newer challenge was issued to the device since
    # A newer challenge was issued at a birth of the device (it reconnected since): its MQTT
    # client re-sends the quotes the broker had not acknowledged, after that birth.
    reborn: bool = False


@dataclass(frozen=True, slots=True)
class Golden:
    """Known-good values. Images and configs are checked only when any are registered."""

    agent_code: frozenset[str] = frozenset()
    models: frozenset[str] = frozenset()  # published TUF target hashes + golden models
    images: frozenset[str] = frozenset()
    configs: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Reason:
    """One failed check: a stable ``code`` (also the quarantine reason) and words."""

    code: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome for one quote. ``duplicate``: the very quote that already answered this
    nonce, delivered again (MQTT QoS 1 is at-least-once), to be ignored."""

    reasons: tuple[Reason, ...] = ()
    duplicate: bool = False
    digest: str | None = None
    boot_epoch: int | None = None

    @property
    def ok(self) -> bool:
        return not self.reasons and not self.duplicate

    @property
    def codes(self) -> tuple[str, ...]:
        """The distinct reason codes, in the order the checks ran."""
        return tuple(dict.fromkeys(r.code for r in self.reasons))

    @property
    def forged(self) -> str | None:
        """The authenticity code when the quote is not signed by the enrolled key (then it
        must not change the device's verdict), else None."""
        return next((c for c in self.codes if c in AUTHENTICITY_CODES), None)


def _short(value: str) -> str:
    return value if len(value) <= 16 else f"{value[:12]}..."


def check_freshness(
    quote: Quote, challenge: ChallengeRecord | None, digest: str, now: datetime
) -> tuple[list[Reason], bool]:
    """Reasons the nonce is not a fresh, unanswered challenge for this device, and whether
    the quote is a re-delivery of the one that answered it."""
    if challenge is None:
        return [Reason("unknown_nonce", "no challenge was issued with this nonce")], False
    if challenge.device_id != quote.device_id:
        return [
            Reason("nonce_other_device", f"the nonce was issued to {challenge.device_id!r}")
        ], False
    reasons: list[Reason] = []
    if challenge.answered_at is not None:
        # The very quote that answered this nonce, again: a QoS 1 re-delivery. Before a newer
        # challenge (also past expiry: a controller re-reads unacknowledged messages when it
        # reconnects) and after the device's own reconnect (its client re-sends the quote
        # after the new birth's challenge superseded this one) it was judged when it first
        # arrived. Captured traffic published again after a newer operator's or periodic
        # challenge, with no birth since this one, is a replay.
        if challenge.answer_digest == digest and (not challenge.superseded or challenge.reborn):
            return [], True
        # Another quote for a nonce already answered: an honest agent answers each nonce once
        # and re-sends that same quote (edge_agent/attestation/attester.py).
        reasons.append(
            Reason(
                "nonce_replayed",
                f"the nonce was answered already at {challenge.answered_at.isoformat()}",
            )
        )
    if now > challenge.expires_at:
        reasons.append(
            Reason("nonce_expired", f"the challenge expired at {challenge.expires_at.isoformat()}")
        )
    if abs(quote.issued_at - challenge.issued_at) > _ISSUED_AT_SLACK:
        reasons.append(Reason("challenge_mismatch", "issued_at differs from the challenge's"))
    return reasons, False


def check_signature(quote: Quote, payload: bytes, enrolled_key: bytes | None) -> list[Reason]:
    """Reasons the quote is not signed by the device's enrolled identity key."""
    if enrolled_key is None:
        return [Reason("not_enrolled", "the device has no enrolled identity key")]
    enrolled_id = key_id(enrolled_key)
    if quote.key_id != enrolled_id:
        return [
            Reason(
                "wrong_key",
                f"signed by key {_short(quote.key_id)}, enrolled is {_short(enrolled_id)}",
            )
        ]
    if not verify(enrolled_key, payload, quote.signature):
        return [Reason("bad_signature", "the signature does not verify with the enrolled key")]
    return []


def _parse_epoch(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


def check_measurements(
    measurements: Mapping[str, str], golden: Golden, last_boot_epoch: int | None
) -> tuple[list[Reason], int | None]:
    """Reasons the measurements are not what a trusted device runs, and the boot epoch."""
    reasons = [
        Reason("missing_measurement", f"{name} is not measured")
        for name in REQUIRED_MEASUREMENTS
        if name not in measurements
    ]
    code = measurements.get(AGENT_CODE)
    if code is not None and code not in golden.agent_code:
        detail = (
            f"agent code {_short(code)} is not a golden value"
            if golden.agent_code
            else "no golden agent_code is registered"
        )
        reasons.append(Reason("agent_code", detail))
    for name, digest in sorted(measurements.items()):
        if name.startswith(MODEL_PREFIX) and digest not in golden.models:
            model = name.removeprefix(MODEL_PREFIX)
            reasons.append(
                Reason(
                    "model_hash",
                    f"model {model!r} ({_short(digest)}) is neither a published TUF target "
                    "nor a golden model",
                )
            )
    image = measurements.get(IMAGE_ID)
    if image is not None and golden.images and image not in golden.images:
        reasons.append(Reason("image_id", f"image {image!r} is not a golden image"))
    config = measurements.get(CONFIG)
    if config is not None and golden.configs and config not in golden.configs:
        reasons.append(Reason("config", f"config {_short(config)} is not a golden config"))
    epoch: int | None = None
    raw_epoch = measurements.get(BOOT_EPOCH)
    if raw_epoch is not None:
        epoch = _parse_epoch(raw_epoch)
        if epoch is None:
            reasons.append(Reason("boot_epoch", f"boot epoch {raw_epoch[:32]!r} is not a number"))
        elif last_boot_epoch is not None and epoch < last_boot_epoch:
            reasons.append(
                Reason(
                    "boot_epoch",
                    f"boot epoch {epoch} went backwards (an earlier quote had {last_boot_epoch})",
                )
            )
    return reasons, epoch


def evaluate_quote(
    quote: Quote,
    *,
    challenge: ChallengeRecord | None,
    enrolled_key: bytes | None,
    golden: Golden,
    last_boot_epoch: int | None,
    now: datetime,
) -> Verdict:
    """Every reason ``quote`` cannot be trusted (none: a good quote)."""
    payload = quote_payload(
        device_id=quote.device_id,
        nonce=quote.nonce,
        key_id=quote.key_id,
        measurements=quote.measurements,
        issued_at=quote.issued_at,
        answered_at=quote.answered_at,
    )
    digest = quote_digest(payload, quote.signature)
    fresh, duplicate = check_freshness(quote, challenge, digest, now)
    if duplicate:
        return Verdict(duplicate=True, digest=digest)
    signed = check_signature(quote, payload, enrolled_key)
    measured, epoch = check_measurements(quote.measurements, golden, last_boot_epoch)
    return Verdict(
        reasons=(*fresh, *signed, *measured),
        digest=digest,
        boot_epoch=epoch,
    )


__all__ = [
    "AUTHENTICITY_CODES",
    "ChallengeRecord",
    "Golden",
    "Reason",
    "Verdict",
    "check_freshness",
    "check_measurements",
    "check_signature",
    "evaluate_quote",
]
