"""The controller's long-lived parts, started and stopped together by the app's lifespan."""

import logging
import threading
import time
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from controller.broker import EmbeddedBroker
from controller.db import init_db, make_engine, session_scope
from controller.ingest import IngestStats, sweep_liveness
from controller.liveness import as_utc
from controller.models import BrokerCredential
from controller.mqtt_ingest import MqttIngest
from controller.settings import Settings
from controller.shadows import DeviceShadow, desired_message, unapplied
from shared.messages import encode_message

log = logging.getLogger(__name__)


class ProvisionedDevices:
    """The ids of devices with live broker credentials, re-read at most every ``ttl_s``.

    Ingest asks for it once per batch; revoking a device takes effect within ``ttl_s``.
    """

    def __init__(self, engine: Engine, ttl_s: float = 5.0) -> None:
        self._engine = engine
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._ids: set[str] = set()
        self._loaded_at = float("-inf")

    def __call__(self) -> set[str]:
        with self._lock:
            if time.monotonic() - self._loaded_at > self._ttl_s:
                with Session(self._engine) as session:
                    self._ids = set(
                        session.exec(
                            select(BrokerCredential.device_id).where(
                                col(BrokerCredential.revoked_at).is_(None)
                            )
                        )
                    )
                self._loaded_at = time.monotonic()
            return self._ids


def _job_lock(session: Session, job: str) -> bool:
    """On PostgreSQL, let one replica run ``job`` at a time (a transaction advisory lock,
    released at commit); SQLite means one controller, so the job always runs."""
    if session.get_bind().dialect.name != "postgresql":
        return True
    key = zlib.crc32(f"edgefleet:{job}".encode())
    return bool(session.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": key}).scalar())


@dataclass
class Services:
    """Engine, broker, ingest and scheduler for one controller process."""

    settings: Settings
    engine: Engine
    stats: IngestStats = field(default_factory=IngestStats)
    broker: EmbeddedBroker | None = None
    ingest: MqttIngest | None = None
    scheduler: BackgroundScheduler | None = None

    @classmethod
    def create(cls, settings: Settings) -> "Services":
        engine = make_engine(settings.database_url)
        init_db(engine)
        return cls(settings=settings, engine=engine)

    @property
    def broker_port(self) -> int:
        return self.broker.port if self.broker else self.settings.broker.port

    def start(self) -> None:
        cfg = self.settings.broker
        if cfg.mode == "embedded":
            self.broker = EmbeddedBroker(cfg.host, cfg.port)
            self.broker.start()
        self.ingest = MqttIngest(
            broker=cfg,
            port=self.broker_port,
            engine=self.engine,
            stats=self.stats,
            queue_size=self.settings.ingest_queue_size,
            batch_size=self.settings.ingest_batch_size,
            known_devices=(
                ProvisionedDevices(self.engine)
                if self.settings.require_provisioned_devices
                else None
            ),
        )
        self.ingest.start()
        self.scheduler = BackgroundScheduler(timezone=UTC)
        self.scheduler.add_job(
            self.sweep_liveness,
            "interval",
            seconds=self.settings.liveness_sweep_s,
            id="liveness-sweep",
            max_instances=1,
            coalesce=True,
        )
        self.scheduler.add_job(
            self.republish_desired,
            "interval",
            seconds=min(5.0, self.settings.desired_republish_s),
            id="desired-republish",
            max_instances=1,
            coalesce=True,
        )
        self.scheduler.start()

    def sweep_liveness(self) -> None:
        if self.ingest is not None and self.ingest.backlog() > self.settings.ingest_batch_size:
            # Heartbeats may be waiting in our own queue: judging silence now would mark
            # devices offline that are talking (a reconnect storm does this). Next time.
            log.info("liveness sweep skipped: %d messages not yet written", self.ingest.backlog())
            return
        with session_scope(self.engine) as session:
            if not _job_lock(session, "liveness-sweep"):
                return
            gone = sweep_liveness(
                session, datetime.now(UTC), self.settings.missed_heartbeats_offline
            )
        if gone:
            log.info("offline after missed heartbeats: %s", ", ".join(gone))

    def publish_desired(self, row: DeviceShadow) -> bool:
        """Publish a device's desired document (retained); False if the broker is away."""
        if self.ingest is None:
            return False
        return self.ingest.publish(*encode_message(desired_message(row)), retain=True)

    def republish_desired(self) -> None:
        """Publish again every desired document its device has not applied for a while."""
        now = datetime.now(UTC)
        horizon = now - timedelta(seconds=self.settings.desired_republish_s)
        with session_scope(self.engine) as session:
            if not _job_lock(session, "desired-republish"):
                return
            for row in unapplied(session):
                sent = row.desired_published_at
                if sent is not None and as_utc(sent) > horizon:
                    continue
                if self.publish_desired(row):
                    row.desired_published_at = now
                    session.add(row)

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        if self.ingest is not None:
            self.ingest.stop()
        if self.broker is not None:
            self.broker.stop()
        self.engine.dispose()
