"""The controller's long-lived parts, started and stopped together by the app's lifespan."""

import logging
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import delete, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from controller.attestation.service import (
    AttestationChallenge,
    AttestationService,
    Outbound,
    trust_local_agent_code,
)
from controller.audit import audit
from controller.broker.embedded import EmbeddedBroker, ListenerTls
from controller.broker.tables import BrokerCredential
from controller.db import make_engine, session_scope
from controller.devices.liveness import as_utc
from controller.devices.shadows import DeviceShadow, desired_message, mark_published, unapplied
from controller.devices.tables import Device
from controller.ingest.apply import IngestStats, sweep_liveness
from controller.ingest.subscriber import MqttIngest
from controller.migrations import init_db
from controller.pki.crl import refresh_crl
from controller.pki.errors import PkiError
from controller.pki.message_keys import MessageKeyring, MessageKeyStore
from controller.pki.renewal import RenewalService
from controller.pki.store import PkiStore
from controller.replicas import BEAT_S, Hearing, ReplicaRegistry
from controller.retention import RetentionReport, run_retention
from controller.rollouts.service import tick as rollout_tick
from controller.settings import Settings
from controller.telemetry.rollup import RollupReport, run_rollup
from controller.updates.errors import UpdatesError
from controller.updates.keys import PASSPHRASE_SOURCES, read_passphrase
from controller.updates.repository import TufRepository
from controller.updates.signing_health import SigningHealth, signing_health
from shared.broker_url import parse_broker_url
from shared.messages import Challenge, Desired, encode_message
from shared.supervision import Supervisor

log = logging.getLogger(__name__)

# How often the crl-refresh job compares the published CRL with the revoked certificates
# (a file read and one query): a revocation reaches the file within this.
CRL_CHECK_S = 10.0


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
    # The signed-update repository (serving works without keys; signing needs them).
    tuf: TufRepository | None = None
    # This replica's row and lock among the replicas sharing the database (controller/replicas.py).
    replicas: ReplicaRegistry | None = None
    # Restarts the ingest threads and counts the scheduler jobs' failures; /healthz and
    # /metrics read it. A stopped one is replaced at the next start.
    supervisor: Supervisor = field(default_factory=Supervisor)
    # How often the scheduler proves it runs jobs, and how stale that may get.
    scheduler_beat_s: float = 1.0
    scheduler_stall_s: float = 15.0
    _scheduler_beat: float = field(init=False, default=0.0)
    # Why the last TUF re-signing failed (None: it worked, or nothing was due yet).
    tuf_refresh_error: str | None = field(init=False, default=None)

    attestation: AttestationService = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.settings.attestation
        self.attestation = AttestationService(
            cfg, enrollment=cfg.effective_enrollment(self.settings.environment)
        )

    @classmethod
    def create(cls, settings: Settings) -> "Services":
        engine = make_engine(settings.database_url)
        init_db(engine)
        return cls(settings=settings, engine=engine, tuf=TufRepository.from_settings(settings))

    def renewal_service(self) -> RenewalService | None:
        """Certificate renewal over MQTT, when this controller holds the device CA
        (``pki.dir``); its key is decrypted only to sign, with the passphrase of
        ``updates.passphrase_file`` or ``EDGEFLEET_KEY_PASSPHRASE``."""
        try:
            store = PkiStore.from_settings(self.settings)
        except PkiError as e:
            log.error("certificate renewal is off: %s", e)
            return None
        if not store.exists():
            return None
        return RenewalService(
            store,
            require_provisioned=self.settings.require_provisioned_devices,
            days=self.settings.pki.device_cert_days,
        )

    def message_keyring(self) -> MessageKeyring:
        """The keys that sign every message to devices (``<pki.dir>/message-keys``), the
        first one created here when there is none; refuses to start without them (a
        controller whose messages devices cannot verify would be cut off from its fleet)."""
        passphrase = read_passphrase(self.settings.updates.passphrase_file)
        return MessageKeyStore(self.settings.pki.dir, passphrase).load(create=True)

    def _embedded_broker(self) -> EmbeddedBroker:
        """The embedded broker of ``broker.*``: TLS with a server certificate, logins with a
        password file (each bound to its client id)."""
        cfg = self.settings.broker
        tls = (
            ListenerTls(cfg.server_cert_file, cfg.server_key_file, cfg.ca_file)
            if cfg.server_cert_file is not None and cfg.server_key_file is not None
            else None
        )
        return EmbeddedBroker(
            cfg.host,
            cfg.port,
            tls=tls,
            password_file=cfg.embedded_password_file,
            controller_user=cfg.username,
            controller_client_ids=(cfg.client_id,),
        )

    def _announce_rotation(self) -> None:
        """During a message key rotation (a next key exists), announce it in the background."""
        ring = self.ingest.message_keys if self.ingest is not None else None
        if ring is not None and ring.next_kid is not None:
            threading.Thread(
                target=self.announce_message_keys, name="message-key-announce", daemon=True
            ).start()

    def announce_message_keys(self) -> int:
        """During a message key rotation, tell every device that is not decommissioned the
        keys to trust (the next one too), once the broker is connected; returns how many."""
        ingest = self.ingest
        if ingest is None or not ingest.wait_connected(30):
            log.error("message key rotation: not connected to the broker; devices learn the "
                      "next key at their next birth")  # fmt: skip
            return 0
        try:
            with session_scope(self.engine) as session:
                ids = list(session.exec(select(Device.id).where(~col(Device.decommissioned))))
            sent = ingest.announce_keys(ids)
        except Exception:
            log.exception("announcing the next message key failed; devices learn it at birth")
            return 0
        log.info("announced the next controller message key to %d devices", sent)
        return sent

    @property
    def broker_port(self) -> int:
        return self.broker.port if self.broker else self.settings.broker.port

    def start(self) -> None:
        if self.supervisor.stopping.is_set():
            self.supervisor = Supervisor()
        cfg = self.settings.broker
        if cfg.mode == "embedded":
            self.broker = self._embedded_broker()
            self.broker.start()
        address = parse_broker_url(cfg.url)
        if self.settings.environment == "production" and not address.tls and not address.loopback:
            log.warning(
                "broker.url %s is plaintext to another host: device data, credentials and "
                "desired state cross the network unencrypted; use mqtts:// (docs/tls.md)",
                cfg.url,
            )
        if self.settings.attestation.trusts_local_agent_code(self.settings.environment):
            try:
                with session_scope(self.engine) as session:
                    trust_local_agent_code(session)
            except IntegrityError:
                pass  # another replica registered the same value just now
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
            attestation=self.attestation,
            supervisor=self.supervisor,
            dead_letters=self.settings.dead_letters,
            plausibility=self.settings.plausibility,
            renewal=self.renewal_service(),
            message_keys=self.message_keyring(),
        )
        self.ingest.start()
        self.replicas = ReplicaRegistry(
            self.engine,
            cfg.client_id,
            session_expiry_s=cfg.session_expiry_s,
            keepalive_s=cfg.keepalive_s,
        )
        self._announce_rotation()
        self.scheduler = BackgroundScheduler(timezone=UTC)
        # (id, job, interval in seconds, extra options); one instance at a time, missed runs
        # coalesced.
        jobs: list[tuple[str, Callable[[], object], float, dict[str, Any]]] = [
            ("replica-beat", self.beat_replica, BEAT_S, {"next_run_time": datetime.now(UTC)}),
            ("liveness-sweep", self.sweep_liveness, self.settings.liveness_sweep_s, {}),
            (
                "desired-republish",
                self.republish_desired,
                min(5.0, self.settings.desired_republish_s),
                {},
            ),
            ("rollout-tick", self.tick_rollouts, self.settings.rollouts.tick_interval_s, {}),
            # At start too: the controller may have been down while metadata neared expiry.
            (
                "tuf-refresh",
                self.refresh_tuf_metadata,
                self.settings.updates.refresh_check_s,
                {"next_run_time": datetime.now(UTC)},
            ),
            (
                "telemetry-rollup",
                self.rollup_telemetry,
                self.settings.telemetry.rollup_interval_s,
                {},
            ),
            ("retention", self.apply_retention, self.settings.retention.interval_s, {}),
            (
                "attestation-sweep",
                self.attestation_sweep,
                max(0.5, min(5.0, self.settings.attestation.timeout_s / 2)),
                {},
            ),
            # At start too: a revocation may have been made while the controller was down.
            ("crl-refresh", self.refresh_crl, CRL_CHECK_S, {"next_run_time": datetime.now(UTC)}),
            # Not supervised: its silence is what says the scheduler stopped running jobs.
            ("scheduler-beat", self._beat, self.scheduler_beat_s, {"misfire_grace_time": None}),
        ]
        self._scheduler_beat = time.monotonic()
        for job_id, job, seconds, extra in jobs:
            self.scheduler.add_job(
                job if job_id == "scheduler-beat" else self.supervisor.job(job_id, job),
                "interval",
                seconds=seconds,
                id=job_id,
                max_instances=1,
                coalesce=True,
                **extra,
            )
        self.scheduler.start()

    def _beat(self) -> None:
        self._scheduler_beat = time.monotonic()

    def workers_down(self) -> list[str]:
        """The workers down now: crashed ones waiting for their restart, failing jobs, and
        the scheduler itself when it stopped or has not run a job for a while."""
        down = self.supervisor.down()
        if self.scheduler is not None:
            stalled = time.monotonic() - self._scheduler_beat > self.scheduler_stall_s
            if not self.scheduler.running or stalled:
                down.append("scheduler")
        return down

    def beat_replica(self) -> None:
        """Tell the other replicas this one lives, whether its ingest holds the shared
        subscription, and how much it has not written yet."""
        if self.replicas is None or self.ingest is None:
            return
        since = self.ingest.subscribed_at if self.ingest.connected else None
        self.replicas.beat(datetime.now(UTC), connected_since=since, backlog=self.ingest.backlog())

    def hearing(self, session: Session, now: datetime) -> Hearing:
        """Since when the replicas have heard every device message, and their backlog."""
        if self.replicas is None:
            return Hearing(None, 0)
        return self.replicas.hearing(session, now)

    def sweep_liveness(self) -> None:
        """Mark devices offline after missed heartbeats, counting silence only from when
        every replica heard every message (a dead replica's session takes its share of the
        heartbeats until it expires) and only while no replica has a backlog."""
        if self.ingest is not None and not self.ingest.connected:
            return  # no heartbeat can arrive now: judging silence would mark everyone
        if self.ingest is not None and self.ingest.backlog() > self.settings.ingest_batch_size:
            # Heartbeats may be waiting in our own queue: judging silence now would mark
            # devices offline that are talking (a reconnect storm does this). Next time.
            log.info("liveness sweep skipped: %d messages not yet written", self.ingest.backlog())
            return
        now = datetime.now(UTC)
        with session_scope(self.engine) as session:
            if not _job_lock(session, "liveness-sweep"):
                return
            heard = self.hearing(session, now)
            if heard.backlog > self.settings.ingest_batch_size:
                log.info("liveness sweep skipped: replicas hold %d unwritten messages",
                         heard.backlog)  # fmt: skip
                return
            gone = sweep_liveness(
                session, now, self.settings.missed_heartbeats_offline, heard_since=heard.since
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
            sent: list[tuple[str, int]] = []
            for row in unapplied(session):
                last = row.desired_published_at
                if last is not None and as_utc(last) > horizon:
                    continue
                if self.publish_desired(row):
                    sent.append((row.device_id, row.desired_version))
            mark_published(session, sent, now)

    def tick_rollouts(self) -> None:
        """Step every active rollout (state lives in the database, so a restarted
        controller resumes where it stopped); one replica per rollout via the job lock."""
        with Session(self.engine) as session:
            rollout_tick(session, datetime.now(UTC), self.publish_desired, lock=_job_lock)

    def rollup_telemetry(self, now: datetime | None = None) -> RollupReport:
        """Fold new windowed telemetry into the hourly tables, score drift, raise and close
        alerts, take references rollouts asked for (docs/telemetry.md); one replica at a
        time via the job lock, each chunk its own transaction."""
        report = run_rollup(
            self.engine, self.settings.telemetry, now or datetime.now(UTC), lock=_job_lock
        )
        if report.malformed:
            log.warning("telemetry rollup skipped %d malformed records", report.malformed)
        return report

    def apply_retention(self, now: datetime | None = None) -> RetentionReport:
        """Delete rows past their retention, raw telemetry only once rolled up
        (controller/retention.py); one replica at a time via the job lock, each batch of
        ``retention.batch_rows`` its own transaction."""
        return run_retention(self.engine, self.settings, now or datetime.now(UTC), lock=_job_lock)

    def refresh_tuf_metadata(self, now: datetime | None = None) -> list[str]:
        """Re-sign timestamp (and snapshot, targets) before they expire. What is due is
        read from the metadata on disk, so it is idempotent and restart-safe."""
        repo = self.tuf
        if repo is None or not repo.is_initialized():
            return []
        now = now or datetime.now(UTC)
        with session_scope(self.engine) as session:
            if not _job_lock(session, "tuf-refresh"):
                return []
            try:
                resigned = repo.refresh(now=now)
                root_expiring = repo.root_expiring(now)
            except UpdatesError as e:
                # Not raised: the API serves on; /healthz reports tuf_signing instead.
                self.tuf_refresh_error = str(e)
                log.error("TUF metadata refresh failed: %s", e)
                return []
            self.tuf_refresh_error = None
            if resigned:
                audit(
                    session,
                    actor="system:updates",
                    action="tuf.resign",
                    target="tuf:metadata",
                    reason="close to expiry, or signed by keys a new root revoked",
                    detail={"roles": resigned},
                    at=now,
                )
        if resigned:
            log.info("TUF metadata re-signed: %s", ", ".join(resigned))
        if root_expiring:
            log.warning("TUF root metadata expires soon: sign a new root version")
        return resigned

    def tuf_signing(self, now: datetime) -> SigningHealth:
        """Whether the TUF timestamp stays valid (``/healthz``'s ``tuf_signing``): degraded
        once it is due for re-signing and this controller has no key passphrase or its last
        re-signing failed, expired once devices refuse it."""
        repo = self.tuf
        if repo is None:
            return SigningHealth("off")
        try:
            expires = repo.timestamp_expires()
        except UpdatesError as e:
            return SigningHealth("unreadable", None, str(e))
        if not repo.keys.has_passphrase:
            problem: str | None = f"no key passphrase ({PASSPHRASE_SOURCES})"
        else:
            problem = self.tuf_refresh_error
        updates = self.settings.updates
        return signing_health(
            timestamp_expires=expires,
            lifetime=updates.expiry.timestamp,
            refresh_fraction=updates.refresh_fraction,
            problem=problem,
            now=now,
        )

    def refresh_crl(self, now: datetime | None = None) -> str | None:
        """Re-sign the device CA's CRL when a revocation (from any process: CLI, API,
        attestation) is not in it yet, or before its next update lapses; returns why, None
        when nothing was due or there is no CA. A CRL due but unsignable (no passphrase)
        raises, so the supervisor reports the job down."""
        store = PkiStore.from_settings(self.settings)
        if not store.exists():
            return None
        now = now or datetime.now(UTC)
        with session_scope(self.engine) as session:
            if not _job_lock(session, "crl-refresh"):
                return None
            why = refresh_crl(session, store, now=now)
            if why is not None:
                audit(
                    session,
                    actor="system:pki",
                    action="pki.crl.resign",
                    target=f"pki:{store.crl_file}",
                    reason=why,
                    at=now,
                )
        if why is not None:
            log.info("CRL %s re-signed: %s (send the broker SIGHUP)", store.crl_file, why)
        return why

    def publish_outbound(self, messages: list[Outbound]) -> None:
        """Publish attestation challenges and desired documents (retained) after a commit;
        desired ones the broker misses are re-published by ``republish_desired``."""
        if self.ingest is None:
            return
        unsent: list[str] = []
        for message in messages:
            retain = isinstance(message, Desired)
            if not self.ingest.publish(*encode_message(message), retain=retain) and isinstance(
                message, Challenge
            ):
                unsent.append(message.nonce)
        if unsent:
            # A challenge the device never got must not count as its silence: forget it; the
            # device is challenged again at its next birth or periodic round.
            with session_scope(self.engine) as session:
                session.execute(
                    delete(AttestationChallenge).where(col(AttestationChallenge.nonce).in_(unsent))
                )
            log.warning("%d attestation challenges not sent (broker away); dropped", len(unsent))

    def attestation_sweep(self) -> None:
        """Quarantine silent devices and challenge those due for re-attestation."""
        if self.ingest is not None and not self.ingest.connected:
            return  # no quote can arrive now: judging silence would quarantine everyone
        if self.ingest is not None and self.ingest.backlog() > self.settings.ingest_batch_size:
            # Quotes may be waiting in our own queue: calling their devices silent now
            # would be wrong. Next time.
            return
        now = datetime.now(UTC)
        with session_scope(self.engine) as session:
            if not _job_lock(session, "attestation-sweep"):
                return
            heard = self.hearing(session, now)
            if heard.since is not None and heard.since > now:
                return  # a dead replica's session may be taking quotes: none is silent yet
            outbound = self._rechallenge_unheard(session, heard, now)
            outbound += self.attestation.sweep(session, now)
        self.publish_outbound(outbound)

    def _rechallenge_unheard(
        self, session: Session, heard: Hearing, now: datetime
    ) -> list[Outbound]:
        """Challenges issued before ``heard.since`` may have had their quotes lost with a
        dead replica's session: they lapse without a verdict and their devices are
        challenged afresh (the new challenge decides)."""
        if heard.since is None:
            return []
        unheard = session.exec(
            select(AttestationChallenge).where(
                col(AttestationChallenge.answered_at).is_(None),
                col(AttestationChallenge.lapsed_at).is_(None),
                col(AttestationChallenge.issued_at) < heard.since,
            )
        ).all()
        devices: set[str] = set()
        for row in unheard:
            row.lapsed_at = now
            session.add(row)
            devices.add(row.device_id)
        out: list[Outbound] = []
        for device_id in sorted(devices):
            device = session.get(Device, device_id)
            if device is not None and device.state == "online" and not device.decommissioned:
                out.append(self.attestation.challenge(session, device_id, now, why="replica"))
        if devices:
            log.info("re-challenged %d devices whose quotes may have gone to a dead replica",
                     len(out))  # fmt: skip
        return out

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        if self.ingest is not None:
            ended = self.ingest.stop()
            if self.replicas is not None:
                self.replicas.leave(session_ended=ended)
        self.supervisor.stop()
        if self.broker is not None:
            self.broker.stop()
        self.engine.dispose()
