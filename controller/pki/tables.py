"""The issued-certificate table: every certificate the device CA signed, kept so that one can
be revoked (its serial into the CRL) and so the console can show what a device holds.

Serials are random 159-bit numbers: stored as lowercase hexadecimal text (``serial_text``),
read back with ``serial_number``.
"""

from datetime import datetime

from sqlmodel import Field, SQLModel

from controller.db import utcnow


def serial_text(serial: int) -> str:
    """A certificate serial as the table stores it (lowercase hex, no leading zeros)."""
    return format(serial, "x")


def serial_number(text: str) -> int:
    """The integer serial of a stored ``serial`` (what a CRL entry takes)."""
    return int(text, 16)


class IssuedCertificate(SQLModel, table=True):
    """A device certificate the CA signed; ``revoked_at`` set once it is revoked."""

    __tablename__ = "issued_certificate"
    serial: str = Field(primary_key=True, max_length=64)
    device_id: str = Field(index=True, max_length=63)
    not_before: datetime
    not_after: datetime = Field(index=True)
    fingerprint: str = Field(max_length=64)  # SHA-256 of the DER, hex
    issued_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = Field(default=None, index=True)
    revoke_reason: str | None = Field(default=None, max_length=256)


__all__ = ["IssuedCertificate", "serial_number", "serial_text"]
