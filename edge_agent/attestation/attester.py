"""Answering a challenge: measure, then sign the quote with the identity key.

Each nonce is answered once: a challenge delivered again (QoS 1 re-delivery after a
reconnect, which a reconnect storm makes common) gets the very quote sent the first time,
byte for byte, which the controller recognises as a duplicate. A second, different quote for
the same nonce is what a replay looks like to the controller (``nonce_replayed``), and would
quarantine an honest device.
"""

import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime

from edge_agent.attestation.identity import IdentityKey
from shared.attestation import encode_signature, key_id, quote_payload
from shared.messages import Challenge, Quote

# Nonces remembered with their quotes: a device has one live challenge at a time (a new
# birth supersedes the last), so a few cover every re-delivery the broker can still make.
REMEMBERED_NONCES = 16


class Attester:
    """Builds signed quotes; ``measure`` is called afresh for every new challenge."""

    def __init__(
        self,
        key: IdentityKey,
        measure: Callable[[], dict[str, str]],
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._key = key
        self._measure = measure
        self._clock = clock
        self.key_id = key_id(key.public_key_raw())
        self._answered: OrderedDict[tuple[str, str], Quote] = OrderedDict()
        self._lock = threading.Lock()
        self.repeated = 0  # challenges answered again with the quote already sent

    def answer(self, challenge: Challenge) -> Quote:
        """The quote for ``challenge``: this device's measurements, bound to its nonce; for
        a nonce answered before, the same quote again."""
        key = (challenge.device_id, challenge.nonce)
        with self._lock:
            sent = self._answered.get(key)
            if sent is not None:
                self.repeated += 1
                return sent
        quote = self._sign(challenge)
        with self._lock:
            # Two deliveries answered at once: the first quote stored is the one both send.
            sent = self._answered.setdefault(key, quote)
            while len(self._answered) > REMEMBERED_NONCES:
                self._answered.popitem(last=False)
        return sent

    def _sign(self, challenge: Challenge) -> Quote:
        measurements = self._measure()
        answered_at = self._clock()
        payload = quote_payload(
            device_id=challenge.device_id,
            nonce=challenge.nonce,
            key_id=self.key_id,
            measurements=measurements,
            issued_at=challenge.issued_at,
            answered_at=answered_at,
        )
        return Quote(
            device_id=challenge.device_id,
            nonce=challenge.nonce,
            key_id=self.key_id,
            measurements=measurements,
            issued_at=challenge.issued_at,
            answered_at=answered_at,
            signature=encode_signature(self._key.sign(payload)),
        )


__all__ = ["Attester"]
