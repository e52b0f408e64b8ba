"""The broker's table: the devices' Mosquitto logins (hashes only)."""

from datetime import datetime

from sqlmodel import Field, SQLModel

from controller.db import utcnow


class BrokerCredential(SQLModel, table=True):
    """A device's Mosquitto login; only the ``$7$`` hash is kept, never the password."""

    __tablename__ = "broker_credential"
    device_id: str = Field(primary_key=True, max_length=63)
    username: str = Field(unique=True, max_length=63)  # equals device_id: the ACL's %u
    password_hash: str = Field(max_length=256)
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None


__all__ = ["BrokerCredential"]
