"""Schema migrations: a database made by an earlier controller version gets the columns
added since, keeps its rows, and migrating twice changes nothing."""

from sqlalchemy import inspect, text
from sqlmodel import Session

from controller.db import make_engine
from controller.devices.tables import Device
from controller.migrations import MIGRATIONS, init_db, migrate

# The device table as the controller before attestation created it (no quarantine columns).
OLD_DEVICE_TABLE = """
CREATE TABLE device (
    device_class VARCHAR, arch VARCHAR, accelerator VARCHAR, agent_version VARCHAR,
    runtimes JSON NOT NULL, models JSON NOT NULL, api_url VARCHAR, state VARCHAR NOT NULL,
    state_reason VARCHAR, bd_seq INTEGER, heartbeat_interval_s FLOAT,
    last_heartbeat_seq INTEGER, cpu_percent FLOAT, memory_percent FLOAT,
    requests_total INTEGER, local_tier_healthy BOOLEAN,
    id VARCHAR(63) NOT NULL PRIMARY KEY, first_seen TIMESTAMP NOT NULL,
    last_seen TIMESTAMP, state_changed_at TIMESTAMP
)
"""


def test_an_old_device_table_gains_the_quarantine_columns_and_keeps_its_rows(
    database_url: str,
) -> None:
    """On SQLite and PostgreSQL, init_db over a pre-attestation device table adds
    quarantined (false for existing rows), quarantine_reason and the revocation columns
    (decommissioned false), and the ORM reads the row."""
    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text(OLD_DEVICE_TABLE))
        conn.execute(
            text(
                "INSERT INTO device (runtimes, models, state, id, first_seen) "
                "VALUES ('[]', '[]', 'online', 'old-1', CURRENT_TIMESTAMP)"
            )
        )
    init_db(engine)
    columns = {c["name"] for c in inspect(engine).get_columns("device")}
    assert {"quarantined", "quarantine_reason"} <= columns
    assert {"decommissioned", "decommissioned_at", "decommission_reason"} <= columns
    with Session(engine) as session:
        device = session.get(Device, "old-1")
        assert device is not None and device.quarantined is False
        assert device.decommissioned is False and device.decommissioned_at is None
        assert device.state == "online"
    assert migrate(engine) == []  # recorded: nothing runs twice
    engine.dispose()


def test_a_new_database_records_every_step_without_altering_anything(database_url: str) -> None:
    """A database created by this version already has every column: the steps are recorded
    as applied and change nothing."""
    engine = make_engine(database_url)
    init_db(engine)
    with engine.connect() as conn:
        ids = {row[0] for row in conn.execute(text("SELECT id FROM schema_migration"))}
    assert ids == {m.id for m in MIGRATIONS}
    engine.dispose()
