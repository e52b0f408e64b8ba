"""A TCP forwarder whose link can be cut and healed: a network partition on loopback.

While cut, bytes in both directions are read and thrown away and new connections are
accepted but never forwarded, as on a link where packets vanish (no RST tells either end):
clients notice only through their own timeouts (MQTT keepalive). Healing closes every
connection that lost bytes, as TCP would after its retransmissions gave up, and forwards
new connections again.
"""

import contextlib
import logging
import socket
import threading
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Pair:
    client: socket.socket
    upstream: socket.socket | None
    tainted: bool = False
    closed: threading.Event = field(default_factory=threading.Event)

    def close(self) -> None:
        self.closed.set()
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class TcpProxy:
    """Forward ``listen_host:port`` to ``target``; ``cut()`` and ``heal()`` the link."""

    def __init__(
        self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server((listen_host, port))
        self.host = listen_host
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: set[_Pair] = set()
        self._cut = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.connections = 0

    @property
    def is_cut(self) -> bool:
        return self._cut.is_set()

    def start(self) -> "TcpProxy":
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)
        self._thread.start()
        return self

    def cut(self) -> None:
        with self._lock:
            self._cut.set()
            for pair in self._pairs:
                pair.tainted = True
        log.info("proxy :%d cut", self.port)

    def heal(self) -> None:
        with self._lock:
            self._cut.clear()
            tainted = [p for p in self._pairs if p.tainted]
        for pair in tainted:
            pair.close()
        log.info("proxy :%d healed (%d broken connections closed)", self.port, len(tainted))

    def stop(self) -> None:
        self._stopping.set()
        self._listener.close()
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            pair.close()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            upstream: socket.socket | None = None
            if not self._cut.is_set():
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                    upstream.settimeout(None)
                    upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    client.close()  # target down: the client sees a refused link
                    continue
            pair = _Pair(client, upstream, tainted=upstream is None)
            with self._lock:
                self._pairs.add(pair)
            threading.Thread(target=self._pump, args=(pair, True), daemon=True).start()
            if upstream is not None:
                threading.Thread(target=self._pump, args=(pair, False), daemon=True).start()

    def _pump(self, pair: _Pair, from_client: bool) -> None:
        src = pair.client if from_client else pair.upstream
        dst = pair.upstream if from_client else pair.client
        assert src is not None
        try:
            while not pair.closed.is_set():
                data = src.recv(65536)
                if not data:
                    break
                if self._cut.is_set() or pair.tainted or dst is None:
                    pair.tainted = True
                    continue  # the packet vanished
                dst.sendall(data)
        except OSError:
            pass
        finally:
            pair.close()
            with self._lock:
                self._pairs.discard(pair)
