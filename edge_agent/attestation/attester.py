"""Answering a challenge: measure, then sign the quote with the identity key."""

from collections.abc import Callable
from datetime import UTC, datetime

from edge_agent.attestation.identity import IdentityKey
from shared.attestation import encode_signature, key_id, quote_payload
from shared.messages import Challenge, Quote


class Attester:
    """Builds signed quotes; ``measure`` is called afresh for every challenge."""

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

    def answer(self, challenge: Challenge) -> Quote:
        """The quote for ``challenge``: this device's measurements, bound to its nonce."""
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
