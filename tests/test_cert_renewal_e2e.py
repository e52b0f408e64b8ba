"""Certificate renewal end to end, over a real Mosquitto whose only listener is TLS with
client certificates required: a device whose certificate nears expiry renews it over MQTT
from the controller's CA while it keeps recording, reconnects with the new certificate
after the old one is revoked, and every record reaches the database exactly once."""

import itertools
import shutil
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from controller.db import make_engine, session_scope
from controller.ingest.apply import IngestStats
from controller.ingest.subscriber import MqttIngest
from controller.migrations import init_db
from controller.pki.message_keys import MessageKeyStore
from controller.pki.renewal import RenewalService
from controller.pki.service import issue_device_certificate
from controller.pki.store import PkiStore
from controller.pki.tables import IssuedCertificate
from controller.settings import BrokerSettings
from controller.telemetry.tables import TelemetryRecord
from edge_agent.agent import Agent
from edge_agent.config import AgentConfig, MqttConfig
from edge_agent.sync.counters import CounterStore
from edge_agent.sync.link import LoadSnapshot, MqttLink
from edge_agent.sync.outbox import Outbox, Priority
from edge_agent.sync.renewal import CertRenewer
from shared.broker_url import Tls
from shared.certificates import csr_for, new_private_key, private_key_pem, read_certificate
from shared.mqtt_transport import Endpoint, Transport
from tests.conftest import MosquittoProcess, wait_for
from tests.pki_world import TestCa, tls_mosquitto
from tests.test_protocol import birth

NOW = datetime.now(UTC)
PASSPHRASE = SecretStr("end to end renewal passphrase")


def _store_ca(tmp_path: Path) -> tuple[PkiStore, TestCa]:
    """The controller's CA store, and a TestCa that signs with its key (for the broker's
    and the controller's own certificates)."""
    store = PkiStore(tmp_path / "pki", PASSPHRASE)
    store.initialize(now=NOW - timedelta(days=3))
    ca = TestCa(tmp_path / "ca")
    with store.authority() as authority:
        ca.authority = authority
    ca.ca_file.write_bytes(store.ca_pem())
    return store, ca


def _device_files(tmp_path: Path, store: PkiStore, engine: Engine) -> tuple[Path, Path]:
    """dev-1's key and a one-day certificate issued 20 hours ago (4 hours left: due)."""
    key = new_private_key()
    with session_scope(engine) as session:
        issued = issue_device_certificate(
            session, store, "dev-1", csr_for("dev-1", key), NOW - timedelta(hours=20), days=1
        )
    folder = tmp_path / "device"
    folder.mkdir()
    cert_file, key_file = folder / "tls.crt", folder / "tls.key"
    cert_file.write_bytes(issued.certificate_pem)
    key_file.write_bytes(private_key_pem(key))
    key_file.chmod(0o600)
    return cert_file, key_file


def _old_certificate_refused(port: int, ca_file: Path, cert: Path, key: Path) -> bool:
    """True if the broker grants no session to this certificate (it keeps retrying)."""
    outcome: list[str | None] = []
    transport = Transport(
        Endpoint("127.0.0.1", port, "dev-1-old", keepalive_s=5, tls=Tls(ca_file, cert, key)),
        on_message=lambda m: None,
        on_connect=outcome.append,
        name="old certificate",
    )
    stopping = threading.Event()
    thread = threading.Thread(
        target=transport.run, args=(stopping,), kwargs={"backoff": lambda a: 0.2}
    )
    thread.start()
    try:
        # TLS 1.3 may fail the refused handshake only at the first read: count attempts too.
        wait_for(
            lambda: transport.tls_failures >= 2 or transport.attempts >= 2,
            15,
            what="the old certificate's retries",
        )
        return None not in outcome
    finally:
        stopping.set()
        thread.join(10)
        transport.close()


def _controller_side(
    tmp_path: Path,
) -> tuple[Engine, PkiStore, TestCa, MosquittoProcess, MqttIngest]:
    """A database, the CA store, a TLS-only Mosquitto (with an empty CRL) and an ingest
    with renewal, over mutual TLS like a real controller; the broker is started."""
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    init_db(engine)
    store, ca = _store_ca(tmp_path)
    broker = tls_mosquitto(tmp_path, ca, crl=ca.crl([]))
    broker.start()
    controller_files = ca.client("edgefleet-controller")
    ingest = MqttIngest(
        broker=BrokerSettings(
            mode="external",
            url=f"mqtts://127.0.0.1:{broker.port}",
            ca_file=ca.ca_file,
            cert_file=controller_files.cert_file,
            key_file=controller_files.key_file,
        ),
        port=broker.port,
        engine=engine,
        stats=IngestStats(),
        queue_size=1000,
        batch_size=100,
        renewal=RenewalService(store),
        # Signs what it sends; a whole agent pins this key from its first controller_keys.
        message_keys=MessageKeyStore(tmp_path / "controller-pki", None).load(create=True),
    )
    return engine, store, ca, broker, ingest


def test_a_device_near_expiry_renews_over_mqtt_without_losing_a_record(tmp_path: Path) -> None:
    """A device with 4 of 24 hours left renews over MQTT while appending records; after its
    old certificate is revoked and the broker restarted it reconnects with the new one, and
    every record it appended is stored exactly once."""
    engine, store, ca, broker, ingest = _controller_side(tmp_path)
    cert_file, key_file = _device_files(tmp_path, store, engine)
    old_cert, old_key = tmp_path / "old.crt", tmp_path / "old.key"
    shutil.copy(cert_file, old_cert)
    shutil.copy(key_file, old_key)
    old_serial = read_certificate(old_cert.read_bytes()).serial_number
    config = MqttConfig(
        url=f"mqtts://127.0.0.1:{broker.port}",
        ca_file=ca.ca_file,
        cert_file=cert_file,
        key_file=key_file,
        reconnect_min_s=0.2,
        reconnect_max_s=1.0,
        renew_retry_min_s=2.0,
        renew_retry_max_s=8.0,
    )
    outbox = Outbox(tmp_path / "outbox.db", max_bytes=16 * 1024 * 1024)
    appended: list[int] = []
    lock = threading.Lock()
    holder: list[MqttLink] = []

    def record(kind: str, name: str, body: dict[str, object]) -> None:
        with lock:
            appended.append(
                outbox.append(
                    "event" if kind == "event" else "metric", name, body, priority=Priority.EVENT
                )
            )
        if holder:
            holder[0].wake()

    renewer = CertRenewer(
        device_id="dev-1",
        config=config,
        send=lambda request: holder[0].publish_cert_request(request),
        reload=lambda: holder[0].transport.reload_certificate(),
        record_event=lambda name, body: record("event", name, body),
    )
    link = MqttLink(
        device_id="dev-1",
        config=config,
        counters=CounterStore(tmp_path / "counters.json"),
        make_birth=lambda bd_seq: birth("dev-1", bd_seq=bd_seq),
        snapshot=lambda: LoadSnapshot(1.0, 1.0, 1.0, 0, True),
        heartbeat_interval_s=60,
        outbox=outbox,
        on_cert_issued=renewer.on_issued,
    )
    holder.append(link)
    stopping = threading.Event()
    writing = threading.Event()
    writing.set()

    def append_records() -> None:
        for n in itertools.count():
            if not writing.is_set():
                return
            record("metric", "system", {"n": n})
            stopping.wait(0.005)

    threads = [
        threading.Thread(target=renewer.run, args=(stopping, lambda: link.connected)),
        threading.Thread(target=append_records),
    ]
    try:
        ingest.start()
        assert ingest.wait_connected(15), "the controller's TLS session"
        link.start()
        assert link.wait_connected(15), "the device's TLS session"
        for thread in threads:
            thread.start()
        wait_for(lambda: renewer.renewals, 30, what="the renewed certificate")
        new = read_certificate(cert_file.read_bytes())
        assert new.serial_number != old_serial
        assert new.not_valid_after_utc > NOW + timedelta(days=300)
        # The old certificate revoked: only the new one can connect after the restart.
        ca.crl([old_serial])
        reconnects = link.stats.reconnects
        broker.restart()
        wait_for(
            lambda: link.stats.reconnects > reconnects and link.connected,
            30,
            what="the device back with its new certificate",
        )
        assert _old_certificate_refused(broker.port, ca.ca_file, old_cert, old_key)
        wait_for(lambda: len(appended) > 200, 30, what="records appended after the reconnect")
        writing.clear()
        threads[1].join(10)
        wait_for(lambda: outbox.pending() == 0, 60, what="the outbox drained")
        with Session(engine) as session:
            stored = session.exec(
                select(TelemetryRecord.seq).where(col(TelemetryRecord.device_id) == "dev-1")
            ).all()
            issued = session.exec(select(IssuedCertificate)).all()
            names = set(session.exec(select(TelemetryRecord.name)).all())
        assert sorted(stored) == sorted(appended) and len(stored) == len(set(appended))
        assert {"cert_renewal_requested", "cert_renewed"} <= names
        assert sorted(row.device_id for row in issued) == ["dev-1", "dev-1"]
        assert link.transport.tls_failures == 0
    finally:
        writing.clear()
        stopping.set()
        for thread in threads:
            if thread.is_alive():
                thread.join(10)
        link.stop()
        ingest.stop()
        outbox.close()
        broker.stop()


def test_the_agent_renews_its_certificate_with_its_supervised_worker(tmp_path: Path) -> None:
    """A whole agent configured for mqtts:// with a certificate near expiry runs the
    cert-renewal worker, which renews it through the controller; the renewal's events
    reach the database."""
    engine, store, ca, broker, ingest = _controller_side(tmp_path)
    cert_file, key_file = _device_files(tmp_path, store, engine)
    old_serial = read_certificate(cert_file.read_bytes()).serial_number
    state = tmp_path / "agent"
    config = AgentConfig.model_validate(
        {
            "device_id": "dev-1",
            "state_dir": str(state),
            "mqtt": {
                "url": f"mqtts://127.0.0.1:{broker.port}",
                "ca_file": str(ca.ca_file),
                "cert_file": str(cert_file),
                "key_file": str(key_file),
                "reconnect_min_s": 0.2,
                "renew_retry_min_s": 2,
            },
        }
    )
    agent = Agent(config, root=state)
    try:
        ingest.start()
        assert ingest.wait_connected(15), "the controller's TLS session"
        agent.start_link()
        assert "cert-renewal" in {w.name for w in agent.supervisor.statuses()}
        renewer = agent.renewer
        assert renewer is not None
        wait_for(lambda: renewer.renewals, 30, what="the agent's renewal")
        assert read_certificate(cert_file.read_bytes()).serial_number != old_serial

        def names() -> set[str]:
            with Session(engine) as session:
                rows = session.exec(
                    select(TelemetryRecord.name).where(col(TelemetryRecord.device_id) == "dev-1")
                )
                return set(rows.all())

        wait_for(lambda: "cert_renewed" in names(), 30, what="the cert_renewed event stored")
        assert agent.supervisor.down() == []
        metrics = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(agent.metrics.exposition().decode())
            for sample in family.samples
        }
        renewed = ("edgefleet_agent_certificate_renewals_total", (("outcome", "renewed"),))
        assert metrics[renewed] == 1
        expiry = metrics[("edgefleet_agent_certificate_expiry_timestamp_seconds", ())]
        assert expiry == read_certificate(cert_file.read_bytes()).not_valid_after_utc.timestamp()
    finally:
        agent.stop()
        ingest.stop()
        broker.stop()
