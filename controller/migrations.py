"""Schema changes to databases made by an earlier controller version.

``create_all`` creates missing tables but never alters an existing one, so a column added
to an existing table needs a step here. Steps run in order, each once per database (the
``schema_migration`` table records them), and each checks what is there first, because a
database created by this version already has every column.

``init_db`` runs both at start: it imports every table module first, so ``create_all``
sees every table on ``SQLModel.metadata``.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel

# Imported for their side effect: registering the tables on SQLModel.metadata.
import controller.attestation.service as _attestation_service  # noqa: F401
import controller.audit as _audit  # noqa: F401
import controller.auth.tables as _auth_tables  # noqa: F401
import controller.broker.tables as _broker_tables  # noqa: F401
import controller.devices.shadows as _devices_shadows  # noqa: F401
import controller.devices.tables as _devices_tables  # noqa: F401
import controller.drills.tables as _drills_tables  # noqa: F401
import controller.images.registry as _images_registry  # noqa: F401
import controller.ingest.tables as _ingest_tables  # noqa: F401
import controller.pki.tables as _pki_tables  # noqa: F401
import controller.replicas as _replicas  # noqa: F401
import controller.rollouts.tables as _rollouts_tables  # noqa: F401
import controller.telemetry.tables as _telemetry_tables  # noqa: F401
import controller.updates.registry as _updates_registry  # noqa: F401


@dataclass(frozen=True, slots=True)
class Migration:
    id: str
    description: str
    apply: Callable[[Connection], None]


def _add_column(conn: Connection, table: str, column: str, sqlite: str, postgresql: str) -> None:
    if column in {c["name"] for c in inspect(conn).get_columns(table)}:
        return
    kind = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(text(f'ALTER TABLE "{table}" ADD COLUMN "{column}" {kind}'))


def _device_quarantine(conn: Connection) -> None:
    _add_column(
        conn,
        "device",
        "quarantined",
        "BOOLEAN NOT NULL DEFAULT 0",
        "BOOLEAN NOT NULL DEFAULT false",
    )
    _add_column(conn, "device", "quarantine_reason", "VARCHAR", "VARCHAR")


def _user_disabled_token_lifetime(conn: Connection) -> None:
    _add_column(
        conn, "user", "disabled", "BOOLEAN NOT NULL DEFAULT 0", "BOOLEAN NOT NULL DEFAULT false"
    )
    for column in ("expires_at", "revoked_at"):
        _add_column(conn, "api_token", column, "DATETIME", "TIMESTAMP WITHOUT TIME ZONE")


def _rejected_message_aggregation(conn: Connection) -> None:
    _add_column(conn, "rejected_message", "device_id", "VARCHAR(63)", "VARCHAR(63)")
    count = "INTEGER NOT NULL DEFAULT 1"
    _add_column(conn, "rejected_message", "count", count, count)
    _add_column(conn, "rejected_message", "last_at", "DATETIME", "TIMESTAMP WITHOUT TIME ZONE")
    # The per-device cap counts rows by device; both databases know IF NOT EXISTS.
    conn.execute(
        text(
            "CREATE INDEX IF NOT EXISTS ix_rejected_message_device_id "
            "ON rejected_message (device_id)"
        )
    )


def _device_decommissioned(conn: Connection) -> None:
    _add_column(
        conn,
        "device",
        "decommissioned",
        "BOOLEAN NOT NULL DEFAULT 0",
        "BOOLEAN NOT NULL DEFAULT false",
    )
    _add_column(conn, "device", "decommissioned_at", "DATETIME", "TIMESTAMP WITHOUT TIME ZONE")
    _add_column(conn, "device", "decommission_reason", "VARCHAR", "VARCHAR")


def _device_last_heartbeat_at(conn: Connection) -> None:
    _add_column(conn, "device", "last_heartbeat_at", "DATETIME", "TIMESTAMP WITHOUT TIME ZONE")


def _device_sessions(conn: Connection) -> None:
    kind = "JSON NOT NULL DEFAULT '[]'"
    _add_column(conn, "device", "sessions", kind, kind)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "0001_device_quarantine",
        "device.quarantined and device.quarantine_reason (attestation)",
        _device_quarantine,
    ),
    Migration(
        "0002_user_disabled_token_lifetime",
        "user.disabled, api_token.expires_at and api_token.revoked_at (access control)",
        _user_disabled_token_lifetime,
    ),
    Migration(
        "0003_rejected_message_aggregation",
        "rejected_message.device_id, count and last_at (aggregated, capped dead letters)",
        _rejected_message_aggregation,
    ),
    Migration(
        "0004_device_decommissioned",
        "device.decommissioned, decommissioned_at and decommission_reason (revocation)",
        _device_decommissioned,
    ),
    Migration(
        "0005_device_last_heartbeat_at",
        "device.last_heartbeat_at (plausible heartbeat sequences)",
        _device_last_heartbeat_at,
    ),
    Migration(
        "0006_device_sessions",
        "device.sessions (the keys of recent sessions, for MACs of device messages)",
        _device_sessions,
    ),
)


def migrate(engine: Engine) -> list[str]:
    """Apply the steps this database has not had; returns their ids. Run after create_all."""
    applied_now: list[str] = []
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # replicas starting together take turns
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('edgefleet:migrate'))"))
        conn.execute(
            text(
                "CREATE TABLE IF NOT EXISTS schema_migration "
                "(id VARCHAR(64) PRIMARY KEY, applied_at VARCHAR(40) NOT NULL)"
            )
        )
        done = {row[0] for row in conn.execute(text("SELECT id FROM schema_migration"))}
        for step in MIGRATIONS:
            if step.id in done:
                continue
            step.apply(conn)
            conn.execute(
                text("INSERT INTO schema_migration (id, applied_at) VALUES (:id, :at)"),
                {"id": step.id, "at": datetime.now(UTC).isoformat()},
            )
            applied_now.append(step.id)
    return applied_now


def init_db(engine: Engine) -> None:
    """Create missing tables, then bring older ones up to date (``migrate``)."""
    SQLModel.metadata.create_all(engine)
    migrate(engine)


__all__ = ["MIGRATIONS", "Migration", "init_db", "migrate"]
