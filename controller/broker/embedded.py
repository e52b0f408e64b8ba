"""An in-process MQTT 3.1.1 broker (amqtt) for the embedded, one-machine default.

It runs on its own asyncio loop in a background thread, bound to loopback unless told
otherwise: it is for one machine and demos. Without a password file it accepts anonymous
clients; with one (``password_file``: ``username:hash`` lines, Argon2 from ``hash_password``)
it refuses anonymous and wrong logins, binds each login to its client id (a device's is its
user name, the controller's user gets ``controller_client_ids``: no login can take over
another's session, controller/broker/amqtt_auth.py), and confines each user to its own
topics: the user
``controller_user`` to every topic, any other user (a device id) to ``ef/v1/<user>/#``,
like the Mosquitto ACL of ``broker mosquitto-config``. With a server
certificate (``broker.server_cert_file``/``server_key_file``, ``mqtts://`` URL) it listens with
TLS only, and verifies a client certificate against ``broker.ca_file`` when one is presented
(amqtt cannot require one, nor take the CN as the user name). Production uses Mosquitto or
EMQX with client certificates or per-device credentials (``broker.mode: external``).
"""

import asyncio
import logging
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.topics import TOPIC_ROOT

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True, slots=True)
class ListenerTls:
    """The embedded broker's TLS listener: its certificate and key, and the CA that client
    certificates are checked against when presented."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None


class EmbeddedBroker:
    """amqtt on a private event loop; ``start()`` returns once it accepts connections."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ListenerTls | None = None,
        *,
        password_file: Path | None = None,
        controller_user: str | None = None,
        controller_client_ids: tuple[str, ...] = (),
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.tls = tls
        self.password_file = password_file
        self.controller_user = controller_user
        # The client ids the controller's user may connect as (a device's is its user name).
        self.controller_client_ids = controller_client_ids
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="embedded-broker", daemon=True)
        self._broker: Any = None

    def _config(self) -> dict[str, Any]:
        listener: dict[str, Any] = {"type": "tcp", "bind": f"{self.host}:{self.port}"}
        if self.tls is not None:
            listener |= {
                "ssl": True,
                "certfile": str(self.tls.cert_file),
                "keyfile": str(self.tls.key_file),
            }
            if self.tls.ca_file is not None:
                listener["cafile"] = str(self.tls.ca_file)
        if self.password_file is None:
            plugins: dict[str, Any] = {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            }
        else:
            users = read_users(self.password_file)
            acl = {
                user: ["#"] if user == self.controller_user else [f"{TOPIC_ROOT}/{user}/#"]
                for user in users
            }
            plugins = {
                "controller.broker.amqtt_auth.ClientIdFileAuthPlugin": {
                    "password_file": str(self.password_file),
                    "client_ids": {self.controller_user: list(self.controller_client_ids)}
                    if self.controller_user
                    else {},
                },
                "amqtt.plugins.topic_checking.TopicAccessControlListPlugin": {
                    "acl": acl,
                    "publish_acl": acl,
                },
            }
        return {"listeners": {"default": listener}, "plugins": plugins}

    def _run(self) -> None:  # the broker's event loop thread
        asyncio.set_event_loop(self._loop)
        self._loop.set_exception_handler(_quiet_resets)
        self._loop.run_forever()

    async def _start(self) -> None:
        self._broker = _broker_class()(self._config(), loop=self._loop)
        await self._broker.start()

    def start(self, timeout: float = 15.0) -> None:
        # amqtt logs every packet at INFO; keep its chatter out of the controller's log.
        logging.getLogger("amqtt").setLevel(logging.WARNING)
        self._thread.start()
        future: Future[None] = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(timeout)
        log.info(
            "embedded MQTT broker listening on %s:%d (%s)",
            self.host,
            self.port,
            "TLS" if self.tls else "plaintext",
        )

    def stop(self, timeout: float = 10.0) -> None:
        if self._broker is not None:
            future = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
            try:
                future.result(timeout)
            except (TimeoutError, RuntimeError) as e:
                log.warning("embedded broker did not shut down cleanly: %s", e)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def _quiet_resets(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """amqtt lets a client's connection reset (a refused login hanging up, say) escape to
    the loop as an unhandled exception with a traceback; say it in one line instead."""
    error = context.get("exception")
    if isinstance(error, ConnectionError):
        log.info("embedded broker: a client connection ended abruptly (%s)", type(error).__name__)
        return
    loop.default_exception_handler(context)


def hash_password(password: str) -> str:
    """An Argon2 hash of ``password`` for the password file (what amqtt's FileAuthPlugin
    verifies; its sha512-crypt support is deprecated and gone on Python 3.13)."""
    from pwdlib import PasswordHash
    from pwdlib.hashers.argon2 import Argon2Hasher

    return PasswordHash((Argon2Hasher(),)).hash(password)


def write_password_file(path: Path, passwords: dict[str, str]) -> None:
    """Write ``username:hash`` lines for ``passwords`` (user -> password), mode 0600 from
    the first byte; the passwords themselves are not written."""
    lines = "".join(f"{user}:{hash_password(pw)}\n" for user, pw in sorted(passwords.items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(lines, encoding="utf-8")


def read_users(path: Path) -> list[str]:
    """The user names of a password file (its hashes are left to amqtt)."""
    users = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and ":" in line:
            users.append(line.split(":", 1)[0])
    return users


class SnapshotSubscriptions(dict[str, list[Any]]):
    """amqtt's table of subscriptions (topic filter -> [(session, qos)]) whose iteration
    walks a copy taken when it starts.

    amqtt 0.12 awaits inside its loops over this table (the ACL plugin's topic check for
    each matching subscriber in ``_run_broadcast``, retained messages for a reconnecting
    session), so a client subscribing meanwhile raised ``RuntimeError: dictionary changed
    size during iteration``: the message was delivered to the subscribers before that point
    only, and a reconnecting client lost its connection handler (CI saw the traceback in
    the demo). A copy per walk costs one list of the filters; the lists themselves are
    copied too, so an unsubscribe mid-walk cannot make a subscriber be skipped."""

    def __iter__(self) -> Iterator[str]:
        return iter(list(dict.keys(self)))

    def items(self) -> list[tuple[str, list[Any]]]:  # type: ignore[override]
        return [(topic, list(holders)) for topic, holders in dict.items(self)]


def _broker_class() -> Any:
    """amqtt's Broker with its retained-message leak and its iteration race worked around
    (docs/upstream.md).

    amqtt 0.12 re-sends retained messages to a reconnecting persistent session for every
    topic filter *any* client subscribed to, not only the session's own: a device got the
    other devices' retained births and desired documents. Here a filter the session does
    not hold is skipped; amqtt's own path for a new subscription is unchanged."""
    from amqtt.broker import Broker

    class _Broker(Broker):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._subscriptions = SnapshotSubscriptions()

        async def _publish_retained_messages_for_subscription(
            self, subscription: tuple[str, int], session: Any
        ) -> None:
            holders = self._subscriptions.get(subscription[0], [])
            if not any(holder is session for holder, _ in holders):
                return
            await super()._publish_retained_messages_for_subscription(subscription, session)

    return _Broker
