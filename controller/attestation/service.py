"""Attestation on the controller: enrollment, challenges, quote verdicts and quarantine.

The I/O shell around ``controller.attestation.policy``: it reads and writes the tables
below in the caller's transaction and returns the messages to publish once that
transaction commits (challenges, and desired documents carrying the ``quarantine`` key),
so a rolled-back batch never leaves a challenge on the wire that the database forgot.

- Enrollment: ``tofu`` trusts the identity key of a device's first birth; ``provisioned``
  trusts only keys registered beforehand. A birth with another key than the enrolled one,
  or without a key from a device that has one, quarantines.
- A challenge goes out on every accepted birth (re-attestation on reconnect), every
  ``interval_s`` to online devices, and on an operator's request.
- A failed quote quarantines, a good one clears the quarantine; an online device that does
  not answer its newest challenge within ``timeout_s`` is quarantined as ``silent``.
- A quote not signed by the enrolled key (``not_enrolled``, ``wrong_key``,
  ``bad_signature``) is a forgery: it changes no verdict and quarantines nothing;
  ``ForgeryAlarm`` counts it and lets through one warning and audit entry
  (``attestation.forged_quote``) per device per 5 minutes (``ForgeryAlarm``).
- Every quarantine, clear and enrollment is audited (``controller.audit``).
- With ``on_fail: revoke``, a failed attestation (not mere silence) also revokes the device
  (``controller.pki.revocation``): its messages are refused from then on.
"""

import logging
import re
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import JSON, Column, UniqueConstraint, delete, func
from sqlmodel import Field, Session, SQLModel, col, select

from controller.attestation.policy import (
    AUTHENTICITY_CODES,
    ChallengeRecord,
    Golden,
    Reason,
    Verdict,
    evaluate_quote,
)
from controller.audit import audit
from controller.db import utcnow
from controller.devices.liveness import as_utc
from controller.devices.shadows import DeviceShadow, desired_message, set_desired
from controller.devices.tables import Device
from controller.pki.revocation import revoke_device
from controller.settings import AttestationSettings
from controller.updates.registry import known_target_hashes
from shared.attestation import (
    BOOT_EPOCH,
    AttestationError,
    decode_public_key,
    encode_public_key,
    installed_agent_code,
    key_id,
)
from shared.messages import Birth, Challenge, Desired, Quote

log = logging.getLogger(__name__)

ACTOR = "system:attestation"
Enrollment = Literal["tofu", "provisioned"]
GoldenKind = Literal["agent_code", "model", "image_id", "config"]
GOLDEN_KINDS: tuple[GoldenKind, ...] = ("agent_code", "model", "image_id", "config")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Quarantines about the key itself: a quote cannot clear them (it would be signed by the
# wrong key), so such devices are not challenged until an operator enrolls a key.
IDENTITY_REASONS = frozenset(
    {"identity_key_changed", "identity_key_missing", "unknown_identity_key", "bad_identity_key"}
)
# Quarantines that ``on_fail: revoke`` does not turn into a revocation: a device that only
# missed its answer may be on a bad link, not compromised.
NOT_REVOKING = frozenset({"silent"})
# Answered and lapsed challenges are kept this long after they expire, then pruned; a
# quote for a pruned nonce is refused as unknown, so nothing depends on keeping them.
CHALLENGE_RETENTION = timedelta(days=1)

Outbound = Challenge | Desired


# --- tables ------------------------------------------------------------------------------------
class DeviceIdentity(SQLModel, table=True):
    """The Ed25519 public key a device proves itself with (the private key never leaves it)."""

    __tablename__ = "device_identity"
    device_id: str = Field(primary_key=True, max_length=63)
    public_key: str = Field(max_length=64)  # raw key, standard base64
    key_id: str = Field(max_length=64, index=True)  # sha256 of the raw key
    enrolled_at: datetime = Field(default_factory=utcnow)
    how: str = Field(max_length=16)  # tofu | provisioned | api


class AttestationChallenge(SQLModel, table=True):
    """A nonce sent to a device; answered once, within ``expires_at``, or refused."""

    __tablename__ = "attestation_challenge"
    nonce: str = Field(primary_key=True, max_length=64)
    device_id: str = Field(index=True, max_length=63)
    issued_at: datetime = Field(index=True)
    expires_at: datetime
    answered_at: datetime | None = None
    answer_digest: str | None = Field(default=None, max_length=64)
    lapsed_at: datetime | None = None  # the silence sweep has dealt with it
    why: str = Field(default="birth", max_length=16)  # birth | periodic | operator | enrolled


class AttestationResult(SQLModel, table=True):
    """One verdict: a quote judged, or a challenge left unanswered (``silent``)."""

    __tablename__ = "attestation_result"
    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(index=True, max_length=63)
    at: datetime = Field(default_factory=utcnow, index=True)
    ok: bool
    nonce: str | None = Field(default=None, max_length=64)
    reasons: list[dict[str, str]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    measurements: dict[str, str] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )


class GoldenMeasurement(SQLModel, table=True):
    """A known-good measurement value (from the image build, an operator, or this host)."""

    __tablename__ = "golden_measurement"
    __table_args__ = (UniqueConstraint("kind", "value", name="uq_golden_kind_value"),)
    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=16, index=True)  # agent_code | model | image_id | config
    value: str = Field(max_length=256)
    source: str = Field(default="", max_length=64)  # image-build | local | user:<name> ...
    note: str = Field(default="", max_length=256)
    created_at: datetime = Field(default_factory=utcnow)


# --- golden values -----------------------------------------------------------------------------
def check_golden(kind: str, value: str) -> str:
    """``value`` if it is a valid golden ``kind`` value; ``ValueError`` saying why if not."""
    if kind not in GOLDEN_KINDS:
        raise ValueError(f"golden kind {kind!r} is not one of {', '.join(GOLDEN_KINDS)}")
    if kind == "image_id":
        if not 1 <= len(value) <= 256 or any(ord(c) < 32 for c in value):
            raise ValueError("an image id is 1-256 printable characters")
    elif not _SHA256.match(value):
        raise ValueError(f"a golden {kind} is a lowercase hex SHA-256 (64 characters)")
    return value


def add_golden(
    session: Session,
    *,
    kind: str,
    value: str,
    source: str,
    note: str = "",
    actor: str,
    now: datetime | None = None,
) -> GoldenMeasurement | None:
    """Register a golden value (audited); None if it is registered already."""
    check_golden(kind, value)
    existing = session.exec(
        select(GoldenMeasurement).where(
            col(GoldenMeasurement.kind) == kind, col(GoldenMeasurement.value) == value
        )
    ).first()
    if existing is not None:
        return None
    row = GoldenMeasurement(
        kind=kind, value=value, source=source[:64], note=note[:256], created_at=now or utcnow()
    )
    session.add(row)
    audit(
        session,
        actor=actor,
        action="attestation.golden_add",
        target=f"golden:{kind}",
        reason=note,
        detail={"kind": kind, "value": value, "source": source},
        at=now,
    )
    return row


def remove_golden(session: Session, row: GoldenMeasurement, *, actor: str) -> None:
    session.delete(row)
    audit(
        session,
        actor=actor,
        action="attestation.golden_remove",
        target=f"golden:{row.kind}",
        detail={"kind": row.kind, "value": row.value, "source": row.source},
    )


def golden_values(session: Session) -> Golden:
    """Golden values as the policy takes them; published TUF targets count as models."""
    by_kind: dict[str, set[str]] = {kind: set() for kind in GOLDEN_KINDS}
    for kind, value in session.exec(select(GoldenMeasurement.kind, GoldenMeasurement.value)):
        by_kind.setdefault(kind, set()).add(value)
    return Golden(
        agent_code=frozenset(by_kind["agent_code"]),
        models=frozenset(by_kind["model"] | known_target_hashes(session)),
        images=frozenset(by_kind["image_id"]),
        configs=frozenset(by_kind["config"]),
    )


def trust_local_agent_code(session: Session, *, now: datetime | None = None) -> str | None:
    """Register the agent code installed next to the controller as golden (development and
    demo: their agents run this very code). Returns the value, or None if no agent code is
    installed here. Found with ``importlib.util.find_spec``: the controller never imports
    the agent."""
    try:
        value = installed_agent_code()
    except (LookupError, OSError) as e:
        log.warning("no local agent code to trust: %s", e)
        return None
    add_golden(
        session,
        kind="agent_code",
        value=value,
        source="local",
        note="agent code installed next to the controller",
        actor=ACTOR,
        now=now,
    )
    return value


def history(session: Session, device_id: str, limit: int = 50) -> list[AttestationResult]:
    """A device's newest verdicts first."""
    return list(
        session.exec(
            select(AttestationResult)
            .where(col(AttestationResult.device_id) == device_id)
            .order_by(col(AttestationResult.id).desc())
            .limit(limit)
        )
    )


def register_identity(
    session: Session,
    device_id: str,
    public_key: str,
    *,
    how: str,
    actor: str,
    now: datetime | None = None,
) -> DeviceIdentity:
    """Enroll (or replace) a device's identity key; ``AttestationError`` for a bad key."""
    raw = decode_public_key(public_key)
    row = session.get(DeviceIdentity, device_id)
    previous = row.key_id if row is not None else None
    if row is None:
        row = DeviceIdentity(device_id=device_id, public_key="", key_id="", how=how)
    row.public_key = encode_public_key(raw)
    row.key_id = key_id(raw)
    row.enrolled_at = now or utcnow()
    row.how = how
    session.add(row)
    audit(
        session,
        actor=actor,
        action="device.enroll",
        target=f"device:{device_id}",
        reason=how,
        detail={"key_id": row.key_id, "previous_key_id": previous},
        at=now,
    )
    return row


# --- forged quotes ------------------------------------------------------------------------------
class ForgeryAlarm:
    """Forged quotes: counted by reason (``edgefleet_attestation_forged_quotes_total``), and
    when to alert: the first for a device, then at most one per ``interval_s``, each saying
    how many it stands for. In memory, per replica; bounded (``max_devices``: the oldest
    entries go first). Counted when judged: a batch the database made ingest retry counts
    its forgeries again."""

    def __init__(self, interval_s: float = 300.0, max_devices: int = 10_000) -> None:
        self.interval = timedelta(seconds=interval_s)
        self.max_devices = max_devices
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._last: dict[str, datetime] = {}  # device id -> last alert (insertion-ordered)
        self._suppressed: dict[str, int] = {}

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def record(self, device_id: str, reason: str, now: datetime) -> int | None:
        """Count one forged quote. None: stay quiet; else alert now, with the number of
        forgeries for this device kept quiet since the last alert."""
        with self._lock:
            self._counts[reason] += 1
            last = self._last.get(device_id)
            if last is not None and timedelta(0) <= now - last < self.interval:
                self._suppressed[device_id] = self._suppressed.get(device_id, 0) + 1
                return None
            self._last.pop(device_id, None)
            while len(self._last) >= self.max_devices:
                oldest = next(iter(self._last))
                del self._last[oldest]
                self._suppressed.pop(oldest, None)
            self._last[device_id] = now
            return self._suppressed.pop(device_id, 0)


# --- the service -------------------------------------------------------------------------------
@dataclass
class AttestationService:
    """Attestation decisions in the caller's transaction; returns what to publish after it."""

    settings: AttestationSettings
    enrollment: Enrollment
    new_nonce: Callable[[], str] = field(default=lambda: secrets.token_hex(32))
    forgeries: ForgeryAlarm = field(default_factory=ForgeryAlarm)

    # --- challenges --------------------------------------------------------------------------
    def challenge(self, session: Session, device_id: str, now: datetime, *, why: str) -> Challenge:
        """Issue a fresh nonce to ``device_id``."""
        expires = now + timedelta(seconds=self.settings.nonce_ttl_s)
        nonce = self.new_nonce()
        session.add(
            AttestationChallenge(
                nonce=nonce, device_id=device_id, issued_at=now, expires_at=expires, why=why
            )
        )
        return Challenge(device_id=device_id, nonce=nonce, issued_at=now, expires_at=expires)

    # --- births ------------------------------------------------------------------------------
    def on_birth(
        self, session: Session, device: Device, birth: Birth, now: datetime
    ) -> list[Outbound]:
        """Enroll or check the birth's identity key, then challenge (unless the key is wrong)."""
        identity = session.get(DeviceIdentity, device.id)
        if birth.identity_key is None:
            if identity is None and self.enrollment == "tofu":
                return []  # an agent without attestation, never enrolled: left unattested
            return self.quarantine(
                session, device, "identity_key_missing", now, {"enrollment": self.enrollment}
            )
        try:
            raw = decode_public_key(birth.identity_key)
        except AttestationError as e:
            return self.quarantine(session, device, "bad_identity_key", now, {"error": str(e)})
        if identity is None:
            if self.enrollment != "tofu":
                return self.quarantine(
                    session, device, "unknown_identity_key", now, {"key_id": key_id(raw)}
                )
            identity = register_identity(
                session, device.id, birth.identity_key, how="tofu", actor=ACTOR, now=now
            )
        elif identity.key_id != key_id(raw):
            return self.quarantine(
                session,
                device,
                "identity_key_changed",
                now,
                {"enrolled_key_id": identity.key_id, "presented_key_id": key_id(raw)},
            )
        return [self.challenge(session, device.id, now, why="birth")]

    # --- quotes ------------------------------------------------------------------------------
    def _challenge_record(
        self, session: Session, row: AttestationChallenge | None
    ) -> ChallengeRecord | None:
        if row is None:
            return None
        newer = session.exec(
            select(func.count())
            .select_from(AttestationChallenge)
            .where(
                col(AttestationChallenge.device_id) == row.device_id,
                col(AttestationChallenge.issued_at) > row.issued_at,
            )
        ).one()
        # A birth since this challenge: the device reconnected, and its client re-sends what
        # the broker had not acknowledged. Compared with the challenge's issue time, not the
        # answer's: under a backlog the controller records the answer after that birth.
        reborn = bool(newer) and bool(
            session.exec(
                select(func.count())
                .select_from(AttestationChallenge)
                .where(
                    col(AttestationChallenge.device_id) == row.device_id,
                    col(AttestationChallenge.why) == "birth",
                    col(AttestationChallenge.issued_at) > row.issued_at,
                )
            ).one()
        )
        return ChallengeRecord(
            nonce=row.nonce,
            device_id=row.device_id,
            issued_at=as_utc(row.issued_at),
            expires_at=as_utc(row.expires_at),
            answered_at=as_utc(row.answered_at) if row.answered_at else None,
            answer_digest=row.answer_digest,
            superseded=bool(newer),
            reborn=reborn,
        )

    def _last_boot_epoch(self, session: Session, device_id: str) -> int | None:
        last = session.exec(
            select(AttestationResult)
            .where(col(AttestationResult.device_id) == device_id, col(AttestationResult.ok))
            .order_by(col(AttestationResult.id).desc())
            .limit(1)
        ).first()
        raw = last.measurements.get(BOOT_EPOCH) if last is not None else None
        return int(raw) if raw is not None and raw.isdigit() else None

    def on_quote(
        self, session: Session, quote: Quote, now: datetime
    ) -> tuple[Verdict, list[Outbound]]:
        """Judge ``quote``, record the verdict, and quarantine or clear its device."""
        row = session.get(AttestationChallenge, quote.nonce)
        identity = session.get(DeviceIdentity, quote.device_id)
        verdict = evaluate_quote(
            quote,
            challenge=self._challenge_record(session, row),
            enrolled_key=decode_public_key(identity.public_key) if identity else None,
            golden=golden_values(session),
            last_boot_epoch=self._last_boot_epoch(session, quote.device_id),
            now=now,
        )
        if verdict.duplicate:
            return verdict, []
        if verdict.forged is not None:
            # Not signed by the device's enrolled key: it uses up no nonce, records no
            # verdict and quarantines nothing (anyone who can publish on the topic could
            # otherwise quarantine an honest device); counted and alerted as an attack.
            self._forged(session, quote, verdict, now)
            return verdict, []
        if row is not None and row.device_id == quote.device_id and row.answered_at is None:
            # Only the enrolled key's answer uses up a nonce: a forgery must not burn it.
            row.answered_at = now
            row.answer_digest = verdict.digest
            session.add(row)
        session.add(
            AttestationResult(
                device_id=quote.device_id,
                at=now,
                ok=verdict.ok,
                nonce=quote.nonce,
                reasons=[r.as_dict() for r in verdict.reasons],
                measurements=dict(quote.measurements),
            )
        )
        device = session.get(Device, quote.device_id)
        if device is None:
            return verdict, []
        if verdict.ok:
            return verdict, self.clear(session, device, now)
        reason = ", ".join(verdict.codes)
        detail = {"nonce": quote.nonce, "reasons": [r.as_dict() for r in verdict.reasons]}
        return verdict, self.quarantine(session, device, reason, now, detail)

    def _forged(self, session: Session, quote: Quote, verdict: Verdict, now: datetime) -> None:
        """Alert about a forged quote: a warning and an audit entry, at most one per device
        per ``ForgeryAlarm.interval`` (each one says how many it stands for)."""
        suppressed = self.forgeries.record(quote.device_id, str(verdict.forged), now)
        if suppressed is None:
            return
        reasons = [r.as_dict() for r in verdict.reasons if r.code in AUTHENTICITY_CODES]
        log.warning(
            "forged attestation quote for device %s refused (%s); the device's verdict is "
            "unchanged; %d more since the last alert",
            quote.device_id,
            verdict.forged,
            suppressed,
        )
        audit(
            session,
            actor=ACTOR,
            action="attestation.forged_quote",
            target=f"device:{quote.device_id}",
            reason=str(verdict.forged),
            detail={
                "nonce": quote.nonce[:64],
                "key_id": quote.key_id[:64],
                "reasons": reasons,
                "suppressed_since_last_alert": suppressed,
            },
            at=now,
        )

    # --- quarantine ----------------------------------------------------------------------------
    def quarantine(
        self, session: Session, device: Device, reason: str, now: datetime, detail: dict[str, Any]
    ) -> list[Outbound]:
        """Quarantine ``device`` (audited when it changes) and tell the device so."""
        reason = reason[:512]
        if not device.quarantined or device.quarantine_reason != reason:
            device.quarantined = True
            device.quarantine_reason = reason
            session.add(device)
            audit(
                session,
                actor=ACTOR,
                action="device.quarantine",
                target=f"device:{device.id}",
                reason=reason,
                detail=detail,
                at=now,
            )
            log.warning("device %s quarantined: %s", device.id, reason)
        if self.settings.on_fail == "revoke" and reason not in NOT_REVOKING:
            self._revoke(session, device, reason, now)
        return self._set_quarantine_key(session, device.id, {"reason": reason}, now)

    def _revoke(self, session: Session, device: Device, reason: str, now: datetime) -> None:
        """``on_fail: revoke``: revoke the device (its certificates, its broker login) and
        decommission it; the crl-refresh job signs the CRL after this commits."""
        if device.decommissioned:
            return
        revoked = revoke_device(
            session, device.id, reason=f"attestation failed: {reason}"[:256], actor=ACTOR, now=now
        )
        log.warning(
            "device %s revoked after failed attestation (%s): %d certificate(s)",
            device.id,
            reason,
            len(revoked.serials),
        )

    def clear(self, session: Session, device: Device, now: datetime) -> list[Outbound]:
        """Lift ``device``'s quarantine after a good quote (audited) and tell the device."""
        if device.quarantined:
            audit(
                session,
                actor=ACTOR,
                action="device.quarantine_clear",
                target=f"device:{device.id}",
                reason="good quote",
                detail={"was": device.quarantine_reason},
                at=now,
            )
            log.info(
                "device %s attested; quarantine (%s) lifted", device.id, device.quarantine_reason
            )
            device.quarantined = False
            device.quarantine_reason = None
            session.add(device)
        shadow = session.get(DeviceShadow, device.id)
        if shadow is None or "quarantine" not in shadow.desired:
            return []
        return self._set_quarantine_key(session, device.id, None, now)

    def _set_quarantine_key(
        self, session: Session, device_id: str, value: dict[str, str] | None, now: datetime
    ) -> list[Outbound]:
        shadow = session.get(DeviceShadow, device_id)
        before = shadow.desired_version if shadow is not None else 0
        row = set_desired(session, device_id, {"quarantine": value}, now=now, actor=ACTOR)
        return [desired_message(row)] if row.desired_version != before else []

    # --- the periodic sweep --------------------------------------------------------------------
    def _newest_challenges(self, session: Session) -> dict[str, datetime]:
        rows = session.exec(
            select(
                AttestationChallenge.device_id, func.max(AttestationChallenge.issued_at)
            ).group_by(col(AttestationChallenge.device_id))
        ).all()
        return {device_id: as_utc(at) for device_id, at in rows if at is not None}

    def _silent(
        self, session: Session, now: datetime, newest: dict[str, datetime]
    ) -> list[Outbound]:
        horizon = now - timedelta(seconds=self.settings.timeout_s)
        overdue = session.exec(
            select(AttestationChallenge).where(
                col(AttestationChallenge.answered_at).is_(None),
                col(AttestationChallenge.lapsed_at).is_(None),
                col(AttestationChallenge.issued_at) <= horizon,
            )
        ).all()
        out: list[Outbound] = []
        for row in overdue:
            row.lapsed_at = now
            session.add(row)
            if newest.get(row.device_id, as_utc(row.issued_at)) > as_utc(row.issued_at):
                continue  # a newer challenge is out; that one decides
            device = session.get(Device, row.device_id)
            if device is None or device.state != "online":
                continue  # it cannot answer while away; its next birth is challenged again
            silent = Reason(
                "silent",
                f"no quote within {self.settings.timeout_s:g}s of challenge {row.nonce[:12]}",
            )
            session.add(
                AttestationResult(
                    device_id=row.device_id,
                    at=now,
                    ok=False,
                    nonce=row.nonce,
                    reasons=[silent.as_dict()],
                )
            )
            out += self.quarantine(session, device, "silent", now, {"nonce": row.nonce})
        return out

    def _periodic(
        self, session: Session, now: datetime, newest: dict[str, datetime]
    ) -> list[Outbound]:
        due = now - timedelta(seconds=self.settings.interval_s)
        devices: Iterable[Device] = session.exec(
            select(Device)
            .join(DeviceIdentity, col(DeviceIdentity.device_id) == col(Device.id))
            .where(col(Device.state) == "online", col(Device.decommissioned).is_(False))
        ).all()
        out: list[Outbound] = []
        for device in devices:
            if device.quarantined and device.quarantine_reason in IDENTITY_REASONS:
                continue
            last = newest.get(device.id)
            if last is None or last <= due:
                out.append(self.challenge(session, device.id, now, why="periodic"))
        return out

    def sweep(self, session: Session, now: datetime) -> list[Outbound]:
        """Quarantine silent devices, challenge those due, prune old challenges."""
        newest = self._newest_challenges(session)
        out = self._silent(session, now, newest)
        out += self._periodic(session, now, newest)
        session.execute(
            delete(AttestationChallenge).where(
                col(AttestationChallenge.expires_at) < now - CHALLENGE_RETENTION
            )
        )
        return out


__all__ = [
    "ACTOR",
    "GOLDEN_KINDS",
    "AttestationChallenge",
    "AttestationResult",
    "AttestationService",
    "DeviceIdentity",
    "ForgeryAlarm",
    "GoldenMeasurement",
    "Outbound",
    "add_golden",
    "check_golden",
    "golden_values",
    "history",
    "register_identity",
    "remove_golden",
    "trust_local_agent_code",
]
