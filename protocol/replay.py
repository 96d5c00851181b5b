"""Replay protection for initiator Hellos: a bounded time window plus the ids seen inside it.

Rules (PROTOCOL.md, "Replay protection"):
  * Every Hello carries the signer's wall clock (``time_ms``, signed). A responder refuses an
    initiator Hello whose time is more than ``window_ms`` away from its own clock, in either
    direction, and one whose ``exchange_id`` it has already accepted inside the window.
  * A Hello is recorded only after its signature verified, so nobody can fill the table with
    ids of exchanges that never were.
  * Memory is bounded: past ``capacity`` entries the oldest are forgotten and the *floor*
    rises to their time; anything at or below the floor is refused, because we could no
    longer tell whether it was seen. A full table therefore costs freshness, never safety.
  * Surviving a restart is the caller's job: it appends ``record()`` bytes to a file before
    acting on the Hello and passes the file's bytes to ``ReplayGuard.restore`` at start. A
    torn last record (crash mid-write) is ignored: that exchange never got an answer.
Pure: time comes in as an argument; no clock, file or socket here.
"""

from __future__ import annotations

import heapq
import struct
from typing import Protocol

from .errors import ReplayDetected
from .messages import EXCHANGE_ID_LEN

__all__ = ["DEFAULT_CAPACITY", "DEFAULT_WINDOW_MS", "RECORD_LEN", "ReplayCheck", "ReplayGuard"]

DEFAULT_WINDOW_MS = 300_000  # five minutes: generous for NTP-synchronised clocks
DEFAULT_CAPACITY = 100_000  # ~5 MB at most; a busy node does a few exchanges a second
_RECORD = struct.Struct(">Q16s")  # u64 time_ms || exchange_id[16]
RECORD_LEN = _RECORD.size


class ReplayCheck(Protocol):
    """What a responder session needs: ReplayGuard, or a wrapper that also persists."""

    def check(self, exchange_id: bytes, time_ms: int, now_ms: int) -> None: ...


class ReplayGuard:
    def __init__(self, window_ms: int = DEFAULT_WINDOW_MS, capacity: int = DEFAULT_CAPACITY
                 ) -> None:
        if window_ms < 1 or capacity < 1:
            raise ValueError("window_ms and capacity must be >= 1")
        self.window_ms = window_ms
        self.capacity = capacity
        self._seen: dict[bytes, int] = {}
        self._by_time: list[tuple[int, bytes]] = []  # heap, same entries as _seen
        self._floor = -1

    def __len__(self) -> int:
        return len(self._seen)

    @property
    def floor_ms(self) -> int:
        """Hellos at or before this time are refused (-1: nothing forgotten yet)."""
        return self._floor

    def check(self, exchange_id: bytes, time_ms: int, now_ms: int) -> None:
        """Accept and remember one verified initiator Hello, or raise ReplayDetected."""
        if len(exchange_id) != EXCHANGE_ID_LEN:
            raise ValueError("exchange_id must be 16 bytes")
        skew = time_ms - now_ms
        if abs(skew) > self.window_ms:
            raise ReplayDetected(
                f"Hello is {skew / 1000:+.1f} s from our clock, outside the "
                f"{self.window_ms / 1000:g} s window (replayed, or a clock is wrong: check NTP)"
            )
        if time_ms <= self._floor:
            raise ReplayDetected("Hello is older than what the replay table still remembers")
        if exchange_id in self._seen:
            raise ReplayDetected("exchange id was already used: replayed Hello")
        self._add(exchange_id, time_ms)
        self._expire(now_ms)

    def _add(self, exchange_id: bytes, time_ms: int) -> None:
        self._seen[exchange_id] = time_ms
        heapq.heappush(self._by_time, (time_ms, exchange_id))
        while len(self._seen) > self.capacity:
            t, old = heapq.heappop(self._by_time)
            del self._seen[old]
            self._floor = max(self._floor, t)

    def _expire(self, now_ms: int) -> None:
        # Entries older than the window are refused by the window check anyway.
        while self._by_time and self._by_time[0][0] < now_ms - self.window_ms:
            _, old = heapq.heappop(self._by_time)
            del self._seen[old]

    # ------------------------------------------------------------ persistence

    @staticmethod
    def record(exchange_id: bytes, time_ms: int) -> bytes:
        """The 24 bytes to append to the replay file for one accepted Hello."""
        return _RECORD.pack(time_ms, exchange_id)

    def dump(self) -> bytes:
        """All remembered entries, oldest first (to compact the replay file)."""
        return b"".join(self.record(i, t) for t, i in sorted(self._by_time))

    @classmethod
    def restore(cls, data: bytes, now_ms: int, window_ms: int = DEFAULT_WINDOW_MS,
                capacity: int = DEFAULT_CAPACITY) -> ReplayGuard:
        """A guard holding the in-window records of ``data`` (whole records only)."""
        guard = cls(window_ms, capacity)
        whole = len(data) - len(data) % RECORD_LEN
        for time_ms, exchange_id in _RECORD.iter_unpack(data[:whole]):
            if time_ms >= now_ms - window_ms and exchange_id not in guard._seen:
                guard._add(exchange_id, time_ms)
        return guard
