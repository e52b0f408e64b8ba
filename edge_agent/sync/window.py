"""The outbox's send window: which batches are out, unacknowledged, and when to re-send them.

Pure logic (time comes in as an argument; no I/O), shared by the link's publisher thread and
its network thread under one lock:

- the *cursor* is the last record handed to the wire in this session; the next batch starts
  after it. A new session (reconnect) or a restarted publisher starts from the oldest
  unacknowledged record again (:meth:`SendWindow.reset`): the controller stores each record
  once, so re-sending is safe;
- each batch in flight is keyed by ``(epoch, first_seq, last_seq)`` with when it was last
  sent and how often; at most ``limit`` are out at once;
- an ack retires only the batches it covers entirely: an ack for an older, shorter batch
  that starts at the same record (re-delivered after a reconnect) must not retire a longer
  batch sent since;
- an overdue batch is re-sent alone with its own doubling timeout (capped at 8x): on a live
  persistent session the broker redelivers QoS 1 itself, so a missing ack means the
  controller lost or is far behind on that batch, and re-sending the whole window would only
  add load when it is already overloaded;
- a batch's timeout runs from when the broker has it (its PUBACK, through the ``delivered``
  probe given with :meth:`SendWindow.delivered_by`), not from when it was queued: time spent
  in this device's own send queue or socket (a busy device, a slow uplink, a broker pushing
  back) is not the controller's delay, and re-sending then would only queue a copy behind
  the original.
"""

import threading
from collections.abc import Callable
from dataclasses import dataclass

BatchKey = tuple[int, int, int]  # (epoch, first_seq, last_seq)
Cursor = tuple[int, int]  # (epoch, seq) of the last record sent

MAX_BACKOFF_FACTOR = 8


@dataclass(slots=True)
class _InFlight:
    sent_at: float  # when the controller's clock for this batch started
    sends: int
    # Whether the broker has the batch yet; until it says so the clock does not run.
    delivered: Callable[[], bool] | None = None


class SendWindow:
    """Batches sent and not yet acknowledged, and where the next batch starts."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the send window needs room for at least one batch")
        self.limit = limit
        self._lock = threading.Lock()
        self._cursor: Cursor | None = None
        self._inflight: dict[BatchKey, _InFlight] = {}

    @property
    def cursor(self) -> Cursor | None:
        with self._lock:
            return self._cursor

    def __len__(self) -> int:
        with self._lock:
            return len(self._inflight)

    def full(self) -> bool:
        with self._lock:
            return len(self._inflight) >= self.limit

    def in_flight(self) -> list[BatchKey]:
        with self._lock:
            return sorted(self._inflight)

    def reset(self) -> None:
        """Forget the session's position and batches: send again from the oldest record."""
        with self._lock:
            self._cursor = None
            self._inflight.clear()

    def sent(self, key: BatchKey, *, after: Cursor | None, now: float) -> bool:
        """Record that batch ``key``, read after cursor ``after``, goes out now. False (and
        nothing recorded) when a reset moved the cursor meanwhile: the batch was read from a
        position that no longer holds and must not be sent."""
        with self._lock:
            if self._cursor != after:
                return False
            self._inflight[key] = _InFlight(now, 1)
            self._cursor = (key[0], key[2])
            return True

    def delivered_by(self, key: BatchKey, probe: Callable[[], bool]) -> None:
        """Let batch ``key``'s ack timeout start only once ``probe()`` says the broker has
        it (paho's PUBACK); nothing when the batch left the window meanwhile."""
        with self._lock:
            flight = self._inflight.get(key)
            if flight is not None:
                flight.delivered = probe

    def acked(self, epoch: int, first_seq: int, hwm: int) -> int:
        """Retire the batches an ack for ``epoch`` records ``first_seq..hwm`` covers; returns
        how many."""
        with self._lock:
            covered = [
                k for k in self._inflight if k[0] == epoch and k[1] >= first_seq and k[2] <= hwm
            ]
            for key in covered:
                del self._inflight[key]
            return len(covered)

    def overdue(self, now: float, ack_timeout_s: float) -> list[BatchKey]:
        """Batches whose ack is late: each waits ``ack_timeout_s`` doubled per re-send,
        counted from when the broker was first seen to have it."""
        late = []
        with self._lock:
            for key, f in self._inflight.items():
                if f.delivered is not None:
                    if not f.delivered():
                        continue  # still on its way to the broker: not the controller's delay
                    f.sent_at, f.delivered = now, None
                if now - f.sent_at > ack_timeout_s * min(2 ** (f.sends - 1), MAX_BACKOFF_FACTOR):
                    late.append(key)
        return sorted(late)

    def resent(self, key: BatchKey, *, still_held: bool, now: float) -> bool:
        """Decide the re-send of overdue batch ``key``: True when it should go out again
        (recorded as sent now). False when it was acknowledged or reset meanwhile, or when
        nothing of it is held any more (acked through another batch, or dropped under the
        outbox quota), in which case it leaves the window."""
        with self._lock:
            flight = self._inflight.get(key)
            if flight is None:
                return False
            if not still_held:
                del self._inflight[key]
                return False
            self._inflight[key] = _InFlight(now, flight.sends + 1)
            return True
