"""The peer table: who we know, where they listen, and whether they are worth dialling now.

Rules:
- Pure bookkeeping: time comes in as an argument, randomness from an injected random.Random, so
  the table is tested without a clock or a network.
- A peer that fails (dial, exchange) is backed off exponentially (1 s doubling to 30 s); one
  success clears it. A crashed peer therefore costs the swarm a few cheap failures, not a stall.
- Addresses learned from others are capped (per peer and in total) so a chatty or hostile peer
  cannot grow our memory.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0
MAX_ADDRS_PER_PEER = 8


@dataclass
class PeerEntry:
    peer_id: str
    addrs: list[str] = field(default_factory=list)
    first_seen: float = 0.0
    last_ok: float | None = None
    failures: int = 0
    retry_at: float = 0.0
    exchanges_ok: int = 0
    exchanges_failed: int = 0
    strikes: int = 0
    banned_until: float | None = None  # math.inf: until unbanned

    def banned(self, now: float) -> bool:
        return self.banned_until is not None and now < self.banned_until

    def available(self, now: float) -> bool:
        return now >= self.retry_at and not self.banned(now)

    def as_dict(self, now: float) -> dict[str, object]:
        return {
            "peer_id": self.peer_id,
            "addrs": list(self.addrs),
            "live": self.available(now),
            "failures": self.failures,
            "exchanges_ok": self.exchanges_ok,
            "exchanges_failed": self.exchanges_failed,
            "strikes": self.strikes,
            "banned": self.banned(now),
            "banned_for_s": None if not self.banned(now) or self.banned_until is None
            else (None if self.banned_until == math.inf else round(self.banned_until - now, 1)),
            "last_ok_age_s": None if self.last_ok is None else round(now - self.last_ok, 3),
        }


def split_p2p_addr(addr: str) -> tuple[str, str]:
    """'/ip4/1.2.3.4/tcp/1/p2p/12D3...' -> ('/ip4/1.2.3.4/tcp/1', '12D3...')."""
    base, sep, peer_id = addr.rpartition("/p2p/")
    if not sep or not base or not peer_id or "/" in peer_id:
        raise ValueError(f"address {addr!r} does not end in /p2p/<peer id>")
    return base, peer_id


class PeerTable:
    def __init__(self, self_id: str, max_peers: int, rng: random.Random,
                 admit: Callable[[str], bool] = lambda _peer: True) -> None:
        self.self_id = self_id
        self._admit = admit
        self.max_peers = max_peers
        self._rng = rng
        self._peers: dict[str, PeerEntry] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._peers

    def get(self, peer_id: str) -> PeerEntry | None:
        return self._peers.get(peer_id)

    def add(self, peer_id: str, addrs: list[str], now: float) -> bool:
        """Learn or refresh a peer; returns True if it was new. Ignores ourselves and overflow."""
        if peer_id == self.self_id or not self._admit(peer_id):
            return False
        entry = self._peers.get(peer_id)
        if entry is None:
            if len(self._peers) >= self.max_peers:
                return False
            entry = PeerEntry(peer_id=peer_id, first_seen=now)
            self._peers[peer_id] = entry
            new = True
        else:
            new = False
        for addr in addrs:
            if addr not in entry.addrs:
                entry.addrs.append(addr)
        del entry.addrs[:-MAX_ADDRS_PER_PEER]  # keep the newest
        return new

    def record_ok(self, peer_id: str, now: float) -> None:
        entry = self._peers.get(peer_id)
        if entry is not None:
            entry.failures = 0
            entry.retry_at = now
            entry.last_ok = now

    def record_failure(self, peer_id: str, now: float) -> None:
        entry = self._peers.get(peer_id)
        if entry is not None:
            entry.failures += 1
            delay = min(BACKOFF_MAX_S, BACKOFF_START_S * 2 ** (entry.failures - 1))
            entry.retry_at = now + delay

    def record_exchange(self, peer_id: str, ok: bool, now: float) -> None:
        entry = self._peers.get(peer_id)
        if entry is None:
            return
        if ok:
            entry.exchanges_ok += 1
            self.record_ok(peer_id, now)
        else:
            entry.exchanges_failed += 1
            self.record_failure(peer_id, now)

    def strike(self, peer_id: str) -> int:
        entry = self._peers.get(peer_id)
        if entry is None:
            return 0
        entry.strikes += 1
        return entry.strikes

    def remove(self, peer_id: str) -> bool:
        return self._peers.pop(peer_id, None) is not None

    def ban(self, peer_id: str, now: float, seconds: float | None) -> None:
        """Refuse the peer (both ways) for `seconds`, or until unbanned when None. A banned
        peer stays in the table so that the ban is remembered; it is never picked."""
        entry = self._peers.get(peer_id)
        if entry is None:
            entry = PeerEntry(peer_id=peer_id, first_seen=now)
            self._peers[peer_id] = entry  # bans are kept even over max_peers: they are few
        entry.banned_until = math.inf if seconds is None else now + seconds

    def unban(self, peer_id: str) -> bool:
        entry = self._peers.get(peer_id)
        if entry is None or entry.banned_until is None:
            return False
        entry.banned_until = None
        return True

    def is_banned(self, peer_id: str, now: float) -> bool:
        entry = self._peers.get(peer_id)
        return entry is not None and entry.banned(now)

    def pick(self, now: float, exclude: set[str] | frozenset[str] = frozenset()) -> str | None:
        """A uniformly random peer that is not backed off (nor in `exclude`), or None."""
        live = [p.peer_id for p in self._peers.values()
                if p.available(now) and p.peer_id not in exclude]
        return self._rng.choice(live) if live else None

    def sample(self, k: int, now: float) -> list[str]:
        live = [p.peer_id for p in self._peers.values() if p.available(now)]
        return self._rng.sample(live, min(k, len(live)))

    def strikes_total(self) -> int:
        return sum(p.strikes for p in self._peers.values())

    def known(self) -> list[str]:
        return sorted(self._peers)

    def records(self, exclude: str, limit: int) -> list[tuple[str, list[str]]]:
        """(peer_id, addrs) to tell another peer about: those we reached, then the rest."""
        entries = [p for p in self._peers.values()
                   if p.peer_id != exclude and p.addrs and p.banned_until is None]
        entries.sort(key=lambda p: (p.last_ok is None, p.failures))
        return [(p.peer_id, list(p.addrs)) for p in entries[:limit]]

    def snapshot(self, now: float) -> list[dict[str, object]]:
        return [self._peers[k].as_dict(now) for k in sorted(self._peers)]
