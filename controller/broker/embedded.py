"""An in-process MQTT 3.1.1 broker (amqtt) for the embedded, one-machine default.

It runs on its own asyncio loop in a background thread, bound to loopback unless told
otherwise, and accepts anonymous clients: it is for one machine and demos. With a server
certificate (``broker.server_cert_file``/``server_key_file``, ``mqtts://`` URL) it listens with
TLS only, and verifies a client certificate against ``broker.ca_file`` when one is presented
(amqtt cannot require one, nor take the CN as the user name). Production uses Mosquitto or
EMQX with client certificates or per-device credentials (``broker.mode: external``).
"""

import asyncio
import logging
import socket
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
        self, host: str = "127.0.0.1", port: int = 0, tls: ListenerTls | None = None
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.tls = tls
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
        return {
            "listeners": {"default": listener},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    async def _start(self) -> None:
        from amqtt.broker import Broker

        self._broker = Broker(self._config(), loop=self._loop)
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
