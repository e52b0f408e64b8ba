"""Renewing the device's TLS certificate over MQTT, before it expires, without a re-flash.

- When the certificate in ``mqtt.cert_file`` has less than ``mqtt.renew_before_fraction``
  of its lifetime left, the renewer makes a new P-256 key (kept at once, mode 0600, in
  ``<key_file>.next``, so a restart while waiting asks for the same key again), and sends a
  ``cert_request`` (QoS 1, straight through the link, not the outbox): a CSR for the new
  key, signed as proof by the key of the current certificate (``shared.cert_renewal``).
- Unanswered or refused requests are sent again, each with a fresh id and time, after a
  doubling, jittered delay (``mqtt.renew_retry_min_s`` .. ``renew_retry_max_s``).
- The ``cert_issued`` answer is checked (this device's CN, the new key, signed by the CA
  that signed the current certificate and trusted by ``mqtt.ca_file``, valid now) before it
  replaces anything. Then the certificate and the key are written atomically (the key
  0600) and the transport presents them from its next connection on: the current session
  stays up, and the outbox is untouched, so no record is lost.
- Between the two writes a power cut can leave the new certificate beside the old key;
  ``recover`` (run before the link starts) finishes the install from ``<key_file>.next``.
- Events (``cert_renewal_requested``, ``cert_renewal_refused``, ``cert_renewal_invalid``,
  ``cert_renewed``) carry serials, fingerprints and times, never key material.

The answer arrives on the link's network thread and is handed to the renewer's own
supervised thread through a small queue, so checking and writing never block the link.
"""

import logging
import queue
import random
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from edge_agent.config import MqttConfig
from shared.cert_renewal import (
    check_issued,
    fingerprint,
    read_ca_file,
    request_payload,
    same_key,
    sign,
)
from shared.certificates import (
    CertificateError,
    certificate_pem,
    csr_for,
    load_private_key,
    new_private_key,
    private_key_pem,
    read_certificate,
)
from shared.files import write_atomic
from shared.messages import CertIssued, CertRequest

log = logging.getLogger(__name__)

# How often the certificate file is read again while no renewal is due (it may be replaced
# by hand), and the longest the worker sleeps in one go (it also wakes on answers).
RECHECK_S = 3600.0
MAX_SLEEP_S = 1.0
# Request ids of the current key kept to match answers (retries make several).
MAX_REQUEST_IDS = 16


def pending_key_path(key_file: Path) -> Path:
    """Where the new key waits for its certificate."""
    return key_file.with_name(key_file.name + ".next")


def recover(cert_file: Path, key_file: Path) -> bool:
    """Finish an install a crash cut short: if the certificate on disk is for the waiting
    new key, that key becomes the key file. True if it did."""
    pending = pending_key_path(key_file)
    if not pending.exists():
        return False
    try:
        key_pem = pending.read_bytes()
        key = load_private_key(key_pem)
        cert = read_certificate(cert_file.read_bytes())
    except (OSError, CertificateError) as e:
        log.warning("certificate renewal: cannot check the waiting key (%s)", e)
        return False
    if not same_key(cert.public_key(), key.public_key()):
        return False  # still waiting for its certificate
    write_atomic(key_file, key_pem, 0o600)
    pending.unlink(missing_ok=True)
    log.info("certificate renewal: finished installing the renewed certificate's key")
    return True


@dataclass
class _Pending:
    """The renewal in progress: the new key and the ids of the requests sent for it."""

    key: ec.EllipticCurvePrivateKey
    csr: str
    request_ids: list[str] = field(default_factory=list)
    attempts: int = 0
    next_try: float = 0.0  # monotonic


class CertRenewer:
    """Renews ``config.cert_file`` / ``config.key_file`` through ``send`` and ``reload``."""

    def __init__(
        self,
        *,
        device_id: str,
        config: MqttConfig,
        send: Callable[[CertRequest], bool],
        reload: Callable[[], None],
        record_event: Callable[[str, dict[str, object]], None],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if config.cert_file is None or config.key_file is None:
            raise ValueError("certificate renewal needs mqtt.cert_file and mqtt.key_file")
        self.device_id = device_id
        self.cert_file: Path = config.cert_file
        self.key_file: Path = config.key_file
        self.pending_file = pending_key_path(config.key_file)
        self._config = config
        self._send = send
        self._reload = reload
        self._record_event = record_event
        self._clock = clock
        self._monotonic = monotonic
        self._rng = random.Random()  # noqa: S311 (jitter, not cryptography)
        self._answers: queue.Queue[CertIssued] = queue.Queue(maxsize=8)
        self._wake = threading.Event()
        self._pending: _Pending | None = None
        self.renewals = 0
        self.refusals = 0
        self.invalid = 0
        self.requests_sent = 0

    def outcomes(self) -> dict[str, int]:
        """Answers handled since start, by outcome (for /metrics)."""
        return {"renewed": self.renewals, "refused": self.refusals, "invalid": self.invalid}

    def not_after(self) -> datetime | None:
        """When the current certificate expires; None if it cannot be read."""
        try:
            return read_certificate(self.cert_file.read_bytes()).not_valid_after_utc
        except (OSError, CertificateError):
            return None

    # --- called from the link's network thread -------------------------------------------
    def on_issued(self, message: CertIssued) -> None:
        """Hand an answer to the worker; never blocks (a flood beyond the queue is dropped:
        only an answer to a request of ours can be used, and a later retry asks again)."""
        try:
            self._answers.put_nowait(message)
        except queue.Full:
            log.warning("certificate renewal: answer queue full; answer dropped")
        self._wake.set()

    # --- the worker ----------------------------------------------------------------------
    def run(self, stopping: threading.Event, connected: Callable[[], bool]) -> None:
        """Renew whenever due, until ``stopping`` (one supervised run)."""
        while not stopping.is_set():
            while True:
                try:
                    self.handle(self._answers.get_nowait())
                except queue.Empty:
                    break
            delay = self.tick(connected=connected())
            self._wake.wait(min(delay, MAX_SLEEP_S))
            self._wake.clear()

    def due(self, now: datetime) -> tuple[bool, float]:
        """Whether the current certificate is due for renewal at ``now``, and if not, the
        seconds until it will be (capped at ``RECHECK_S``)."""
        cert = read_certificate(self.cert_file.read_bytes())
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        renew_at = end - (end - start) * self._config.renew_before_fraction
        if now >= renew_at:
            return True, 0.0
        return False, min(RECHECK_S, (renew_at - now).total_seconds())

    def tick(self, *, connected: bool) -> float:
        """Send a request if one is due; returns how long to wait before the next look."""
        now = self._clock()
        is_due, wait = self.due(now)
        if not is_due:
            return wait
        if not connected:
            return MAX_SLEEP_S
        pending = self._pending or self._start()
        mono = self._monotonic()
        if mono < pending.next_try:
            return pending.next_try - mono
        self._request(pending, now)
        return pending.next_try - mono

    def _start(self) -> _Pending:
        """The renewal's key: the one waiting from before a restart, or a new one."""
        key: ec.EllipticCurvePrivateKey | None = None
        if self.pending_file.exists():
            try:
                key = load_private_key(self.pending_file.read_bytes())
            except (OSError, CertificateError) as e:
                log.warning("certificate renewal: waiting key unusable (%s); making a new one", e)
        if key is None:
            key = new_private_key()
            write_atomic(self.pending_file, private_key_pem(key), 0o600)
        self._pending = _Pending(key, csr_for(self.device_id, key).decode("ascii"))
        return self._pending

    def _request(self, pending: _Pending, now: datetime) -> None:
        current = read_certificate(self.cert_file.read_bytes())
        current_key = load_private_key(self.key_file.read_bytes())
        request_id = secrets.token_hex(16)
        payload = request_payload(
            device_id=self.device_id,
            request_id=request_id,
            requested_at=now,
            current_fingerprint=fingerprint(current),
            csr=pending.csr,
        )
        message = CertRequest(
            device_id=self.device_id,
            ts=now,
            request_id=request_id,
            csr=pending.csr,
            certificate=certificate_pem(current).decode("ascii"),
            signature=sign(current_key, payload),
        )
        pending.request_ids = [*pending.request_ids, request_id][-MAX_REQUEST_IDS:]
        pending.attempts += 1
        pending.next_try = self._monotonic() + self._retry_delay(pending.attempts)
        if self._send(message):
            self.requests_sent += 1
            log.info(
                "certificate renewal requested (serial %x expires %s; attempt %d)",
                current.serial_number,
                current.not_valid_after_utc.isoformat(),
                pending.attempts,
            )
            self._record_event(
                "cert_renewal_requested",
                {
                    "serial": format(current.serial_number, "x"),
                    "not_after": current.not_valid_after_utc.isoformat(),
                    "attempt": pending.attempts,
                },
            )

    def _retry_delay(self, attempts: int) -> float:
        """Doubling per attempt from ``renew_retry_min_s`` up to ``renew_retry_max_s``, the
        upper half jittered ("equal jitter": an answer gets at least half the wait)."""
        cfg = self._config
        ceiling = min(
            cfg.renew_retry_max_s, cfg.renew_retry_min_s * float(2 ** min(attempts - 1, 32))
        )
        return ceiling / 2 + self._rng.uniform(0.0, ceiling / 2)

    def handle(self, message: CertIssued) -> bool:
        """Act on one answer; True if it installed a certificate."""
        pending = self._pending
        if pending is None or message.request_id not in pending.request_ids:
            log.info("certificate renewal: answer to no request of ours ignored")
            return False
        if message.refused is not None:
            self.refusals += 1
            log.warning(
                "certificate renewal refused by the controller: %s: %.256s",
                message.refused,
                message.detail or "",
            )
            self._record_event(
                "cert_renewal_refused",
                {"reason": message.refused, "detail": (message.detail or "")[:256]},
            )
            return False
        assert message.certificate is not None and message.ca is not None  # the schema's rule
        try:
            cert = check_issued(
                message.certificate,
                message.ca,
                device_id=self.device_id,
                new_key=pending.key.public_key(),
                current=read_certificate(self.cert_file.read_bytes()),
                trusted=self._trusted(),
                now=self._clock(),
            )
        except CertificateError as e:
            self.invalid += 1
            log.error("certificate renewal: the certificate sent is not usable: %s", e)
            self._record_event("cert_renewal_invalid", {"error": str(e)[:256]})
            return False
        self._install(pending, certificate_pem(cert))
        self.renewals += 1
        log.info(
            "certificate renewed: serial %x valid until %s",
            cert.serial_number,
            cert.not_valid_after_utc.isoformat(),
        )
        self._record_event(
            "cert_renewed",
            {
                "serial": format(cert.serial_number, "x"),
                "fingerprint": fingerprint(cert),
                "not_after": cert.not_valid_after_utc.isoformat(),
                "attempts": pending.attempts,
            },
        )
        return True

    def _trusted(self) -> list[x509.Certificate]:
        if self._config.ca_file is None:
            return []
        return read_ca_file(self._config.ca_file.read_bytes())

    def _install(self, pending: _Pending, cert_pem: bytes) -> None:
        """Certificate first, then the key (``recover`` finishes this after a crash in
        between), then the transport's context for the next connection."""
        write_atomic(self.cert_file, cert_pem, 0o644)
        write_atomic(self.key_file, private_key_pem(pending.key), 0o600)
        self.pending_file.unlink(missing_ok=True)
        self._pending = None
        self._reload()


__all__ = ["CertRenewer", "pending_key_path", "recover"]
