"""How a remote tier failed, as the router sees it (no HTTP client needed to read it).

``timeout``, ``connect``, ``server_error`` (5xx) and ``rate_limited`` (429) count against
the tier's circuit breaker; ``rejected`` (another 4xx) and ``bad_response`` do not.
"""

from typing import Literal

FailureKind = Literal[
    "timeout", "connect", "server_error", "rate_limited", "rejected", "bad_response"
]
BREAKER_KINDS = frozenset({"timeout", "connect", "server_error", "rate_limited"})


class TierError(RuntimeError):
    """A remote tier did not answer usefully; ``kind`` says how."""

    def __init__(
        self, tier: str, kind: FailureKind, detail: str, retry_after_s: float | None = None
    ) -> None:
        super().__init__(f"{tier}: {kind}: {detail}")
        self.tier = tier
        self.kind = kind
        self.retry_after_s = retry_after_s

    @property
    def counts_against_breaker(self) -> bool:
        return self.kind in BREAKER_KINDS
