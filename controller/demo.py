"""``edgefleet demo``: the whole fleet on one machine.

Controller (API, console, ingest, scheduler) with an embedded MQTT broker and a SQLite file,
plus N edge agents as separate processes, each serving a real llama.cpp model. Runs until
Ctrl-C or SIGTERM, then stops the agents (clean deaths), the server and the broker.
"""

import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import uvicorn
import yaml
from sqlmodel import Session, col, func, select

from controller.app import create_app
from controller.attestation.service import register_identity
from controller.auth.credentials import create_api_token, generate_password
from controller.auth.users import create_user
from controller.broker.embedded import free_port, write_password_file
from controller.db import session_scope
from controller.demo_traffic import DemoTraffic, DriftBaseline
from controller.devices.tables import Device
from controller.images.flashing.device_files import controller_keys_file
from controller.pki.service import issue_device_certificate
from controller.pki.store import CA_CERT, SERVER_CERT, SERVER_KEY, PkiStore
from controller.services import Services
from controller.settings import Settings, load_settings
from controller.updates.publish import ModelSpec, add_model_file
from shared.attestation import encode_public_key, public_key_of
from shared.certificates import certificate_pem, csr_for, new_private_key, private_key_pem
from shared.files import write_atomic
from shared.provisioning import CONTROLLER_KEYS_FILE, IDENTITY_FOLDER, IDENTITY_KEY_FILE

DEMO_MODEL_NAME = "smollm2-135m"
DEMO_MODEL_VERSION = "1.0"
HOST = "127.0.0.1"
# The controller's login on the demo's broker, and the broker's password file (hashes).
CONTROLLER_USER = "edgefleet-controller"
BROKER_PASSWORDS = "broker.passwd"


PR_SET_PDEATHSIG = 1  # prctl(2)


class DemoError(RuntimeError):
    """The demo could not start; the text says which part and where its log is."""


@dataclass(frozen=True)
class DeviceTls:
    """A demo device's TLS files: the CA, its certificate and its key."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def agent_config(
    *,
    device_id: str,
    data_dir: Path,
    broker_port: int,
    model: Path,
    api_port: int,
    http_port: int,
    trusted_root: Path,
    tls: DeviceTls | None = None,
    password_file: Path | None = None,
) -> dict[str, object]:
    """The YAML document one simulated device runs with (over TLS with its own certificate
    when ``tls`` is given; logging in as itself with the password in ``password_file``)."""
    # The embedded broker (amqtt) speaks MQTT 3.1.1 only.
    mqtt: dict[str, object] = {
        "url": f"{'mqtts' if tls else 'mqtt'}://{HOST}:{broker_port}",
        "keepalive_s": 5,
        "protocol": "3.1.1",
    }
    if password_file is not None:
        mqtt |= {"username": device_id, "password_file": str(password_file)}
    if tls is not None:
        mqtt |= {
            "ca_file": str(tls.ca_file),
            "cert_file": str(tls.cert_file),
            "key_file": str(tls.key_file),
        }
    return {
        "device_id": device_id,
        "state_dir": str(data_dir / "agents" / device_id),
        "mqtt": mqtt,
        "api": {"host": HOST, "port": api_port},
        "heartbeat_interval_s": 2.0,
        # Short telemetry windows so the console's charts fill within a minute.
        "telemetry": {"window_s": 10},
        # One thread each: three agents share this machine's cores with the controller.
        "models": [{"name": DEMO_MODEL_NAME, "path": str(model), "n_threads": 1, "n_ctx": 1024}],
        # Signed model updates from the controller's TUF repository (rollouts install here).
        "updates": {
            "enabled": True,
            "metadata_url": f"http://{HOST}:{http_port}/tuf/metadata/",
            "targets_url": f"http://{HOST}:{http_port}/tuf/targets/",
            "trusted_root": str(trusted_root),
            "confirm_after_s": 30.0,
        },
    }


def _die_with_parent() -> None:
    """In the agent's child process: get SIGTERM when the demo dies, however it dies (a
    SIGKILLed demo cannot stop its agents itself). Linux only; elsewhere a no-op."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _spawn_agent(config_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    log = log_path.open("wb")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C goes to the demo, which stops agents in order
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    finally:
        log.close()


def _online_count(services: Services) -> int:
    with Session(services.engine) as session:
        return int(session.exec(select(func.count()).where(col(Device.state) == "online")).one())


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


MARKER = ".edgefleet-demo"


def _reset_data_dir(data_dir: Path) -> None:
    """Start every demo from a clean registry and new credentials, but only ever delete a
    folder an earlier demo made (it holds the marker file), never a user's folder."""
    if data_dir.exists():
        if not (data_dir / MARKER).is_file() and any(data_dir.iterdir()):
            raise DemoError(
                f"{data_dir} exists and was not made by the demo; pick another --data-dir"
            )
        shutil.rmtree(data_dir)
    (data_dir / "logs").mkdir(parents=True)
    (data_dir / MARKER).write_text("made by `edgefleet demo`; deleted at its next start\n")


def _banner(
    http_port: int, password: str, cli_file: Path, endpoints: dict[str, int], model_hint: str
) -> str:
    first = next(iter(endpoints.values()))
    lines = [
        "",
        f"edgefleet demo is running: {len(endpoints)} devices online.",
        "",
        f"  Console   http://{HOST}:{http_port}/console",
        f"  Login     admin / {password}   (demo only; generated for this run)",
        f"  CLI       edgefleet devices list   (credentials in {cli_file})",
    ]
    lines += [
        f"  Device    {d}: http://{HOST}:{p}/v1/chat/completions" for d, p in endpoints.items()
    ]
    lines += [
        f"  Try       curl -s http://{HOST}:{first}/v1/chat/completions \\",
        "              -H 'Content-Type: application/json' \\",
        '              -d \'{"messages":[{"role":"user","content":"Hi"}]}\'',
        f"  Rollout   edgefleet models upload {model_hint} --name {DEMO_MODEL_NAME} \\",
        "              --version 1.1 --runtime llama.cpp",
        f"            edgefleet rollouts create --model {DEMO_MODEL_NAME} --version 1.1 \\",
        "              --wave canary:1 --wave 100% --soak 30 --min-samples 1",
        "",
        "Press Ctrl-C to stop.",
    ]
    return "\n".join(lines)


def _publish_demo_model(services: Services, model: Path, data_dir: Path) -> Path:
    """Make the demo's TUF repository (keys, root v1) and publish the demo model as version
    1.0, so devices' factory model is a signed target; returns the devices' trusted root."""
    repo = services.tuf
    if repo is None:
        raise DemoError("the controller has no TUF repository configured")
    repo.initialize(now=datetime.now(UTC))
    spec = ModelSpec(
        name=DEMO_MODEL_NAME,
        version=DEMO_MODEL_VERSION,
        runtime="llama.cpp",
        filename=model.name,
        quantization="Q4_1",
    )
    with session_scope(services.engine) as session:
        add_model_file(session, repo, model, spec, actor="system:demo")
    root = data_dir / "agents" / "root.json"
    root.parent.mkdir(parents=True, exist_ok=True)
    root.write_bytes(repo.root_bytes(1))
    return root


def broker_logins(data_dir: Path, devices: int) -> dict[str, str]:
    """A password for the controller and for each demo device, made for this run: the
    embedded broker's password file (``broker.passwd``, hashes only) and one 0600 file per
    device beside its state (``agents/<id>/mqtt.password``), which its config names. The
    controller's stays in memory. Returns user -> password; nothing is logged."""
    passwords = {CONTROLLER_USER: secrets.token_urlsafe(24)}
    for i in range(1, devices + 1):
        device_id = f"demo-edge-{i}"
        passwords[device_id] = secrets.token_urlsafe(24)
        write_atomic(
            device_password_file(data_dir, device_id), passwords[device_id].encode(), mode=0o600
        )
    write_password_file(data_dir / BROKER_PASSWORDS, passwords)
    return passwords


def device_password_file(data_dir: Path, device_id: str) -> Path:
    return data_dir / "agents" / device_id / "mqtt.password"


def provision_identities(services: Services, data_dir: Path, devices: int) -> None:
    """Each demo device's Ed25519 identity key, made before it starts (as ``edgefleet
    flash`` does): the private half where its agent looks (``<state_dir>/identity``, 0600),
    the public half registered as expected, so attestation (``provisioned`` enrollment)
    trusts these keys only and an unknown device is quarantined; and beside it the
    controller's message keys the device is to trust."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    ring = services.message_keyring()
    exchange = ring.exchange_public(ring.trusted_kids()[0])
    trust = next(iter(controller_keys_file("", (ring.trusted_set(), exchange)).values()))
    for i in range(1, devices + 1):
        device_id = f"demo-edge-{i}"
        key = Ed25519PrivateKey.generate()
        folder = data_dir / "agents" / device_id / IDENTITY_FOLDER
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_atomic(folder / IDENTITY_KEY_FILE, pem, mode=0o600)
        # The controller's message keys too, so the device MACs from its first session.
        write_atomic(folder / CONTROLLER_KEYS_FILE, trust.content, mode=0o600)
        with session_scope(services.engine) as session:
            register_identity(
                session,
                device_id,
                encode_public_key(public_key_of(key)),
                how="provisioned",
                actor="system:demo",
            )


def _demo_settings(
    data_dir: Path, http_port: int, broker_port: int, tls: bool, controller_password: str
) -> Settings:
    """The controller's settings for a demo in ``data_dir``, with a signing-key passphrase
    generated for this demo only (kept beside its keys). The embedded broker takes only the
    logins of ``broker_logins``. With ``tls`` it listens on mqtts:// with a certificate from
    the demo's own CA (``data_dir/pki``) and the controller connects with its client
    certificate."""
    passphrase_file = data_dir / "keys.passphrase"
    passphrase_file.write_text(secrets.token_urlsafe(24))
    passphrase_file.chmod(0o600)
    pki = data_dir / "pki"
    broker: dict[str, object] = {
        "mode": "embedded",
        "url": f"mqtt://{HOST}:{broker_port}",
        "username": CONTROLLER_USER,
        "password": controller_password,
        "embedded_password_file": str(data_dir / BROKER_PASSWORDS),
    }
    if tls:
        broker |= {
            "url": f"mqtts://{HOST}:{broker_port}",
            "ca_file": str(pki / CA_CERT),
            "server_cert_file": str(pki / SERVER_CERT),
            "server_key_file": str(pki / SERVER_KEY),
            "cert_file": str(pki / "controller.crt"),
            "key_file": str(pki / "controller.key"),
        }
    return load_settings(
        None,
        environment="demo",
        database_url=f"sqlite:///{data_dir / 'edgefleet.db'}",
        http_host=HOST,
        http_port=http_port,
        broker=broker,
        # Only the identity keys registered before the agents start are trusted.
        attestation={"enrollment": "provisioned"},
        pki={"dir": str(pki)},
        secure_cookies=False,  # plain http on loopback
        liveness_sweep_s=1.0,
        updates={
            "repo_dir": str(data_dir / "tuf"),
            "keys_dir": str(data_dir / "keys"),
            "passphrase_file": str(passphrase_file),
        },
    )


def _demo_pki(services: Services) -> None:
    """The demo's own device CA, the embedded broker's certificate for the loopback address
    and the controller's client certificate (paths as in the settings)."""
    cfg = services.settings.broker
    store = PkiStore.from_settings(services.settings)
    now = datetime.now(UTC)
    store.initialize("edgefleet demo CA", now=now)
    store.write_server_certificate([HOST], store.dir, now=now)
    assert cfg.cert_file is not None and cfg.key_file is not None
    key = new_private_key()
    cert = store.sign_device(csr_for(cfg.client_id, key), cfg.client_id, now=now)
    cfg.key_file.write_bytes(private_key_pem(key))
    cfg.key_file.chmod(0o600)
    cfg.cert_file.write_bytes(certificate_pem(cert))


def _device_tls(services: Services, device_id: str, folder: Path) -> DeviceTls:
    """A key made for the device and its certificate from the demo CA (recorded and
    audited like any issued certificate), written into the device's folder."""
    store = PkiStore.from_settings(services.settings)
    key = new_private_key()
    with session_scope(services.engine) as session:
        issued = issue_device_certificate(
            session,
            store,
            device_id,
            csr_for(device_id, key),
            datetime.now(UTC),
            actor="system:demo",
        )
    folder.mkdir(parents=True, exist_ok=True)
    files = DeviceTls(store.ca_file, folder / "device.crt", folder / "device.key")
    files.key_file.write_bytes(private_key_pem(key))
    files.key_file.chmod(0o600)
    files.cert_file.write_bytes(issued.certificate_pem)
    return files


def _admin_and_cli_file(services: Services, data_dir: Path, http_port: int) -> tuple[str, str]:
    """The demo's admin (password) and its API token, saved for the CLI in ``cli.json``."""
    password = generate_password()
    with session_scope(services.engine) as session:
        admin = create_user(session, username="admin", password=password, role="admin")
        token = create_api_token(session, admin, name="demo-cli")
    cli_file = data_dir / "cli.json"
    cli_file.write_text(json.dumps({"url": f"http://{HOST}:{http_port}", "token": token}))
    cli_file.chmod(0o600)
    return password, token


def _wait_started(server: uvicorn.Server, thread: threading.Thread, http_port: int) -> None:
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise DemoError(f"controller did not start on port {http_port}")
        time.sleep(0.1)


# device id -> (its agent process, its log, its API port)
Agents = dict[str, tuple[subprocess.Popen[bytes], Path, int]]


def _start_agents(
    agents: Agents,
    services: Services,
    *,
    devices: int,
    model: Path,
    data_dir: Path,
    broker_port: int,
    http_port: int,
    trusted_root: Path,
) -> None:
    """Start ``devices`` agents, each added to ``agents`` as soon as it runs."""
    for i in range(1, devices + 1):
        device_id = f"demo-edge-{i}"
        api_port = free_port(HOST)
        tls = None
        if services.settings.broker.tls() is not None:
            tls = _device_tls(services, device_id, data_dir / "agents" / device_id / "tls")
        cfg = agent_config(
            api_port=api_port,
            device_id=device_id,
            data_dir=data_dir,
            broker_port=broker_port,
            model=model,
            http_port=http_port,
            trusted_root=trusted_root,
            tls=tls,
            password_file=device_password_file(data_dir, device_id),
        )
        cfg_path = data_dir / "agents" / f"{device_id}.yaml"
        cfg_path.parent.mkdir(parents=True, exist_ok=True)
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        log_path = data_dir / "logs" / f"{device_id}.log"
        agents[device_id] = (_spawn_agent(cfg_path, log_path), log_path, api_port)


def _wait_online(
    services: Services, agents: Agents, devices: int, stop: threading.Event, data_dir: Path
) -> bool:
    """Until every agent is online at the controller (True), or the demo is stopped
    (False); DemoError when an agent exits or they take longer than 180 s."""
    deadline = time.monotonic() + 180
    while _online_count(services) < devices:
        for device_id, (proc, log_path, _) in agents.items():
            if proc.poll() is not None:
                raise DemoError(
                    f"agent {device_id} exited with {proc.returncode}; its log ({log_path}):\n"
                    + _log_tail(log_path)
                )
        if stop.is_set():
            return False
        if time.monotonic() > deadline:
            raise DemoError(f"agents not online after 180 s; logs in {data_dir / 'logs'}")
        time.sleep(0.5)
    return True


def _watch(agents: Agents, stop: threading.Event) -> None:
    """Until stopped: say once of each agent that exits."""
    reported: set[str] = set()
    while not stop.wait(1.0):
        for device_id, (proc, log_path, _) in agents.items():
            if proc.poll() is not None and device_id not in reported:
                reported.add(device_id)
                print(f"agent {device_id} exited ({proc.returncode}); log: {log_path}", flush=True)


def _stop_agents(agents: Agents) -> None:
    """SIGTERM every agent still running, then wait for each (SIGKILL after 15 s)."""
    for proc, _, _ in agents.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc, _, _ in agents.values():
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_demo(
    *,
    devices: int,
    model: Path,
    data_dir: Path,
    port: int,
    traffic_interval_s: float = 3.0,
    tls: bool = True,
) -> None:
    data_dir = data_dir.resolve()
    _reset_data_dir(data_dir)
    http_port = port or free_port(HOST)
    broker_port = free_port(HOST)
    logins = broker_logins(data_dir, devices)
    settings = _demo_settings(data_dir, http_port, broker_port, tls, logins[CONTROLLER_USER])
    services = Services.create(settings)
    provision_identities(services, data_dir, devices)
    if tls:
        _demo_pki(services)
    trusted_root = _publish_demo_model(services, model.resolve(), data_dir)
    password, token = _admin_and_cli_file(services, data_dir, http_port)

    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, services=services),
            host=HOST,
            port=http_port,
            log_level="warning",
            # No proxy in front of the demo: no X-Forwarded-* header is believed.
            proxy_headers=False,
        )
    )
    server_thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    server_thread.start()
    agents: Agents = {}
    traffic: DemoTraffic | None = None
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        _wait_started(server, server_thread, http_port)
        print(
            f"controller up at http://{HOST}:{http_port} (MQTT on {settings.broker.url}"
            f"{', mutual TLS with the demo CA in ' + str(data_dir / 'pki') if tls else ''}"
            f"; logins per device in {data_dir / BROKER_PASSWORDS}, anonymous refused)",
            flush=True,
        )
        _start_agents(
            agents,
            services,
            devices=devices,
            model=model.resolve(),
            data_dir=data_dir,
            broker_port=broker_port,
            http_port=http_port,
            trusted_root=trusted_root,
        )
        print(f"starting {devices} edge agents (loading and warming the model)...", flush=True)
        if not _wait_online(services, agents, devices, stop, data_dir):
            return
        endpoints = {d: port for d, (_, _, port) in agents.items()}
        print(
            _banner(http_port, password, data_dir / "cli.json", endpoints, str(model)), flush=True
        )
        if traffic_interval_s > 0:
            traffic = DemoTraffic(
                {d: f"http://{HOST}:{p}" for d, p in endpoints.items()},
                interval_s=traffic_interval_s,
                baseline=DriftBaseline(f"http://{HOST}:{http_port}", token, DEMO_MODEL_NAME),
            )
            traffic.start()
        _watch(agents, stop)
    finally:
        if traffic is not None:
            traffic.stop()
        print("\nstopping agents...", flush=True)
        _stop_agents(agents)
        server.should_exit = True
        server_thread.join(timeout=15)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("edgefleet demo stopped.", flush=True)
