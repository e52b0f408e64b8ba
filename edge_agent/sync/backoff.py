"""Reconnect delays: exponential backoff with full jitter (AWS Architecture Blog, 2015).

Full jitter spreads a fleet's reconnects over the whole window, so a broker restart is not
followed by every device knocking at the same instant.
"""

import random


def full_jitter(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """A delay in [0, min(cap, base * 2**attempt)] for the ``attempt``-th retry (0-based)."""
    ceiling = min(cap, base * (2 ** min(attempt, 32)))
    return rng.uniform(0.0, ceiling)
