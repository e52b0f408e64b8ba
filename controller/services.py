"""The controller's long-lived parts, started and stopped together by the app's lifespan."""

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.engine import Engine

from controller.broker import EmbeddedBroker
from controller.db import init_db, make_engine, session_scope
from controller.ingest import IngestStats, sweep_liveness
from controller.mqtt_ingest import MqttIngest
from controller.settings import Settings

log = logging.getLogger(__name__)


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
        self.scheduler.start()

    def sweep_liveness(self) -> None:
        with session_scope(self.engine) as session:
            gone = sweep_liveness(
                session, datetime.now(UTC), self.settings.missed_heartbeats_offline
            )
        if gone:
            log.info("offline after missed heartbeats: %s", ", ".join(gone))

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        if self.ingest is not None:
            self.ingest.stop()
        if self.broker is not None:
            self.broker.stop()
        self.engine.dispose()
