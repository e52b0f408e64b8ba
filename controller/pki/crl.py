"""Keeping the published CRL (``pki.dir/crl.pem``) in step with the issued-certificate table.

The table is the truth: a revocation commits there first (``controller.pki.revocation``),
then ``refresh_crl`` re-signs the file when its serials differ from the table's, when it is
missing or not the CA's, or when less than half of ``pki.crl_next_update`` is left (the
broker refuses every client once a CRL lapses). Deciding is pure (``crl_due``); the
scheduler's ``crl-refresh`` job and the revoke command call ``refresh_crl``, so a revocation
made by any process (CLI, API, attestation) reaches the file. Mosquitto reads the file again
on SIGHUP (docs/tls.md).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from sqlmodel import Session, col, select

from controller.pki.authority import Revoked
from controller.pki.store import PkiStore
from controller.pki.tables import IssuedCertificate, serial_number

# A revoked certificate stays listed until this long after it expired: clients whose clock
# runs behind would still accept it until then.
EXPIRED_GRACE = timedelta(days=1)


def _utc(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def revoked_entries(session: Session, now: datetime) -> list[Revoked]:
    """The CRL's entries: every revoked certificate not long expired, oldest first."""
    rows = session.exec(
        select(IssuedCertificate)
        .where(
            col(IssuedCertificate.revoked_at).is_not(None),
            col(IssuedCertificate.not_after) > now - EXPIRED_GRACE,
        )
        .order_by(col(IssuedCertificate.revoked_at), col(IssuedCertificate.serial))
    ).all()
    return [
        Revoked(serial_number(row.serial), _utc(row.revoked_at))
        for row in rows
        if row.revoked_at is not None
    ]


@dataclass(frozen=True, slots=True)
class PublishedCrl:
    """What the file on disk says, or why it cannot be used."""

    serials: frozenset[int]
    next_update: datetime | None
    problem: str | None = None


def read_published(store: PkiStore) -> PublishedCrl:
    """Read ``crl.pem``; a missing, unreadable or foreign file is a ``problem``, not an error."""
    try:
        data = store.crl_file.read_bytes()
    except FileNotFoundError:
        return PublishedCrl(frozenset(), None, "missing")
    except OSError as e:
        return PublishedCrl(frozenset(), None, f"unreadable ({e.strerror or e})")
    try:
        crl = x509.load_pem_x509_crl(data)
        ca_key = store.ca_certificate().public_key()
        signed = isinstance(ca_key, ec.EllipticCurvePublicKey) and crl.is_signature_valid(ca_key)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return PublishedCrl(frozenset(), None, "not a PEM CRL")
    if not signed:
        return PublishedCrl(frozenset(), None, "not signed by the CA")
    return PublishedCrl(frozenset(r.serial_number for r in crl), crl.next_update_utc)


def crl_due(
    published: PublishedCrl, entries: Sequence[Revoked], *, now: datetime, lifetime: timedelta
) -> str | None:
    """Why the CRL must be signed again now, or None when the published one is good."""
    if published.problem is not None:
        return published.problem
    if published.serials != {entry.serial for entry in entries}:
        return "the revoked certificates changed"
    if published.next_update is None or published.next_update - now < lifetime / 2:
        return "close to its next update"
    return None


def refresh_crl(session: Session, store: PkiStore, *, now: datetime) -> str | None:
    """Re-sign ``crl.pem`` if ``crl_due`` says so; returns the reason, None when nothing
    was due. Raises ``PkiError`` when the CA key is needed and cannot be opened."""
    entries = revoked_entries(session, now)
    why = crl_due(read_published(store), entries, now=now, lifetime=store.settings.crl_next_update)
    if why is not None:
        store.publish_crl(entries, now=now)
    return why


__all__ = [
    "EXPIRED_GRACE",
    "PublishedCrl",
    "crl_due",
    "read_published",
    "refresh_crl",
    "revoked_entries",
]
