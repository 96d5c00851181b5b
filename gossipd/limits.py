"""Caps on the work peers can make a node do, so one peer cannot crowd out the others.

Rules:
- At most `max_exchanges` inbound exchanges run at once, and at most one per peer: a second
  averaging stream from a peer that already has one open is reset at once (an honest peer never
  opens two; it waits for its exchange to end).
- Every inbound stream (averaging or peer exchange) spends one token of its peer's bucket:
  `rate` tokens a second, up to `burst`. An empty bucket resets the stream before any work.
- Resets are counted by reason and show in `gossipctl status`; nothing here is a strike (a busy
  node is not evidence of a hostile peer).
- Memory is bounded: at most MAX_TRACKED buckets are kept; the least recently used goes first.
Pure bookkeeping: time comes in as an argument.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field

MAX_TRACKED = 4096


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class InboundLimits:
    max_exchanges: int = 8
    rate: float = 5.0
    burst: float = 20.0
    refused: Counter[str] = field(default_factory=Counter)
    _active: dict[str, int] = field(default_factory=dict)
    _buckets: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict)

    @property
    def active_exchanges(self) -> int:
        return sum(self._active.values())

    def allow_stream(self, peer_id: str, now: float) -> bool:
        """Spend one token of the peer's bucket; False (and counted) when it is empty."""
        bucket = self._buckets.pop(peer_id, None)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        self._buckets[peer_id] = bucket
        while len(self._buckets) > MAX_TRACKED:
            self._buckets.popitem(last=False)
        if bucket.tokens < 1:
            self.refused["rate"] += 1
            return False
        bucket.tokens -= 1
        return True

    def start_exchange(self, peer_id: str) -> bool:
        """Claim an exchange slot for `peer_id`; pair every True with finish_exchange."""
        if self._active.get(peer_id, 0) >= 1:
            self.refused["peer_busy"] += 1
            return False
        if self.active_exchanges >= self.max_exchanges:
            self.refused["node_busy"] += 1
            return False
        self._active[peer_id] = self._active.get(peer_id, 0) + 1
        return True

    def finish_exchange(self, peer_id: str) -> None:
        left = self._active.get(peer_id, 0) - 1
        if left > 0:
            self._active[peer_id] = left
        else:
            self._active.pop(peer_id, None)
