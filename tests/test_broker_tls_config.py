"""`edgefleet broker mosquitto-config --tls`: the files it writes, what a Mosquitto running
them lets through (password devices over TLS, no session takeover by another certificate),
and what the command refuses."""

import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from controller.broker.mosquitto_auth import parse_password_file, render_mosquitto_tls_conf
from shared.broker_url import Tls
from shared.mqtt_transport import Endpoint, Transport
from shared.topics import CONTROLLER_TO_DEVICE, DEVICE_TO_CONTROLLER
from tests.conftest import wait_for
from tests.procs import run_cli
from tests.tls_fleet import CONTROLLER_ID, World, tls_fleet, write_config


def provision_password_device(world: World) -> None:
    secret = world.tmp / "dev-p.password"
    done = world.cli("devices", "provision", "dev-p", "--password-file", str(secret))
    assert done.returncode == 0, done.stderr


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with tls_fleet(tmp_path, password_port=True, before_config=provision_password_device) as w:
        yield w


@contextmanager
def session(world: World, endpoint: Endpoint, events: list[str]) -> Iterator[Transport]:
    """A client running on its own thread; ``events`` hears connects and disconnects."""
    transport = Transport(
        endpoint,
        on_message=lambda m: None,
        on_connect=lambda refused: events.append(f"refused {refused}" if refused else "up"),
        on_disconnect=lambda reason: events.append(f"down {reason}"),
        name=endpoint.client_id,
    )
    stopping = threading.Event()
    thread = threading.Thread(
        target=transport.run, args=(stopping,), kwargs={"backoff": lambda attempt: 5.0}
    )
    thread.start()
    try:
        yield transport
    finally:
        stopping.set()
        transport.disconnect()
        thread.join(10)
        transport.close()


def test_generated_files(world: World) -> None:
    """The config has a mutual-TLS listener on the device CA's files (CN as user name and
    client id, CRL, TLS 1.2+) and a TLS password listener; the ACL gives the controller's
    CN all of ef/ and shared subscriptions, a device only its own kinds in their direction;
    passwd is 0600 with the password device."""
    out = world.tmp / "broker"
    conf = (out / "mosquitto.conf").read_text().splitlines()
    store = world.store
    for line in (
        f"listener {world.port} 127.0.0.1",
        f"cafile {store.ca_file.resolve()}",
        f"certfile {store.server_cert_file.resolve()}",
        f"keyfile {store.server_key_file.resolve()}",
        f"crlfile {store.crl_file.resolve()}",
        "require_certificate true",
        "use_identity_as_username true",
        "tls_version tlsv1.2",
        f"listener {world.password_port} 127.0.0.1",
        "require_certificate false",
        f"password_file {out / 'passwd'}",
    ):
        assert line in conf, line
    assert conf.count("use_username_as_clientid true") == 2, "on both listeners"
    assert conf.count("allow_anonymous false") == 2
    acl = (out / "acl").read_text().splitlines()
    controller = acl[acl.index(f"user {CONTROLLER_ID}") :][:3]
    assert controller == [f"user {CONTROLLER_ID}", "topic readwrite ef/#", "topic read $share/#"]
    patterns = sorted(line for line in acl if line.startswith("pattern "))
    assert patterns == sorted(
        [f"pattern write ef/v1/%u/{k.value}" for k in DEVICE_TO_CONTROLLER]
        + [f"pattern read ef/v1/%u/{k.value}" for k in CONTROLLER_TO_DEVICE]
    )
    passwd = out / "passwd"
    assert stat.S_IMODE(passwd.stat().st_mode) == 0o600
    assert list(parse_password_file(passwd.read_text())) == ["dev-p"]
    certs = world.tmp / "controller-certs"
    assert stat.S_IMODE((certs / f"{CONTROLLER_ID}.key").stat().st_mode) == 0o600


def test_password_device_connects_over_tls_and_a_wrong_password_is_refused(
    world: World,
) -> None:
    """On the password listener a device without a certificate logs in with its password
    over TLS (the broker verified against the CA); a wrong password is refused."""
    assert world.password_port is not None
    password = (world.tmp / "dev-p.password").read_text().strip()
    tls = Tls(world.store.ca_file)
    good: list[str] = []
    bad: list[str] = []
    ok = Endpoint("127.0.0.1", world.password_port, "dev-p", keepalive_s=5,
                  username="dev-p", password=password, tls=tls)  # fmt: skip
    wrong = Endpoint("127.0.0.1", world.password_port, "dev-p2", keepalive_s=5,
                     username="dev-p", password=password + "x", tls=tls)  # fmt: skip
    with session(world, ok, good), session(world, wrong, bad):
        wait_for(lambda: "up" in good and bad, 15, what="both answers")
    assert bad[0].startswith("refused"), bad


def test_a_certificate_cannot_take_over_another_devices_session(world: World) -> None:
    """dev-a's certificate connecting with client id dev-b gets its own session (the CN
    is the client id): dev-b stays connected."""
    tls_a, tls_b = world.device_tls("dev-a"), world.device_tls("dev-b")
    victim: list[str] = []
    intruder: list[str] = []
    own = Endpoint("127.0.0.1", world.port, "dev-b", keepalive_s=5, tls=tls_b)
    with session(world, own, victim) as transport:
        wait_for(lambda: "up" in victim, 15, what="dev-b's session")
        attack = Endpoint("127.0.0.1", world.port, "dev-b", keepalive_s=5, tls=tls_a)
        with session(world, attack, intruder):
            wait_for(lambda: "up" in intruder, 15, what="the intruder's session")
            # A takeover would have reached dev-b before this PUBACK can.
            sent = transport.publish("ef/v1/dev-b/heartbeat", b"{}", qos=1)
            assert sent.wait(10), "dev-b's session was taken over"
        assert victim == ["up"], victim


def cli(config: Path, *args: str) -> "tuple[int, str]":
    done = run_cli(["-m", "controller", "broker", "mosquitto-config", *args, "-c", str(config)])
    return done.returncode, done.stderr


def test_cli_refusals(tmp_path: Path) -> None:
    """Without a device CA --tls exits 2 naming pki init; TLS options without --tls exit
    2; a controller id that is also a device is refused."""
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'controller.db'}")
    out = str(tmp_path / "out")
    code, stderr = cli(config, "--tls", "--out", out)
    assert code == 2 and "edgefleet pki init" in stderr
    code, stderr = cli(config, "--password-port", "8884", "--out", out)
    assert code == 2 and "go with --tls" in stderr
    (tmp_path / "w").mkdir()
    with tls_fleet(tmp_path / "w") as world:
        world.device_tls("dev-x")
        done = world.cli("broker", "mosquitto-config", "--tls", "--out", out,
                         "--controller-id", "dev-x")  # fmt: skip
        assert done.returncode == 2 and "'dev-x' is also a device" in done.stderr


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"password_port": 8883, "password_file": Path("/p")}, "both use port 8883"),
        ({"password_port": 8884}, "needs both its port and its password file"),
        ({"host": "0.0.0.0 x"}, "has spaces"),
        ({"crl_file": Path("/a\nb")}, "cannot be written on one config line"),
        ({"port": 0}, "is not 1-65535"),
    ],
    ids=["same port", "half a password listener", "bad host", "newline in a path", "port 0"],
)
def test_render_refusals(kwargs: dict[str, object], message: str) -> None:
    """The renderer refuses what would make a broken or ambiguous config, naming it."""
    base: dict[str, object] = {
        "host": "127.0.0.1", "port": 8883, "acl_file": Path("/acl"), "ca_file": Path("/ca"),
        "cert_file": Path("/c"), "key_file": Path("/k"), "crl_file": Path("/crl"),
    }  # fmt: skip
    with pytest.raises(ValueError, match=message):
        render_mosquitto_tls_conf(**{**base, **kwargs})  # type: ignore[arg-type]
