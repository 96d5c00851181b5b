"""A node's defences against lying peers, and the testbed's lies: the daemon's glue around the
pure rules of gossipd/robust.py and gossipd/attacks.py.

Rules:
- Before a peer's vector is merged, `check_remote` refuses one whose norm is far from ours
  (averaging.robust = "clip"); the exchange then fails with ParamsRejected, a strike.
- The clipping itself happens in the runner's merge; every outcome (clean, clipped, clipped
  hard, rejected) updates the peer's reputation, shown in `gossipctl peers`.
- A peer whose record recommends a ban is banned for BAN_S (gossipd/robust.py: only refused
  vectors lead there; hard clipping alone never does).
- averaging.attack (testbeds only) replaces what this node sends with a lie; "alie" estimates
  the honest spread from the last ALIE_WINDOW vectors it received.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from gossipd import attacks, robust
from gossipd.peers import PeerTable

log = logging.getLogger("gossipd.node")

BAN_S = 600.0  # a peer whose reputation falls below the line is banned this long
ALIE_WINDOW = 8  # attack "alie": received vectors it estimates the honest spread from


class Defence:
    def __init__(self, robust_mode: str, attack: str, seed: bytes, peers: PeerTable,
                 clock: Callable[[], float]) -> None:
        self.robust_mode = robust_mode
        self.attack = attack
        self.reputation = robust.reputation_init()
        self._peers = peers
        self._clock = clock
        self._attack = attacks.attack_init(int.from_bytes(seed[:4], "big"))
        self._received: list[np.ndarray] = []  # attack "alie" only

    def check_remote(self, peer_id: str, sent: np.ndarray, remote: np.ndarray) -> str | None:
        """A reason to refuse the peer's vector (counted as a strike by the node), or None."""
        if self.robust_mode == "none":
            return None
        reason = robust.check_remote(sent, remote)
        if reason is not None:
            self.note(peer_id, "rejected")
        return reason

    def on_clip(self, peer_id: str | None, info: robust.ClipInfo) -> None:
        """The runner's report of one clipped merge."""
        if peer_id is not None:
            self.note(peer_id, robust.outcome_of(info))

    def note(self, peer_id: str, outcome: robust.Outcome) -> None:
        self.reputation = robust.reputation_update(self.reputation, peer_id, outcome)
        now = self._clock()
        if robust.recommend_ban(self.reputation, peer_id) and not self._peers.is_banned(
                peer_id, now):
            self._peers.ban(peer_id, now, BAN_S)
            log.warning("banned %s for %.0f s: its updates were refused too often "
                        "(reputation %s)", peer_id, BAN_S,
                        self.reputation.peers[peer_id].as_dict())

    def received(self, remote: np.ndarray) -> None:
        """A vector a peer sent us (kept only for the "alie" attack)."""
        if self.attack == "alie":
            self._received = [*self._received, np.array(remote)][-ALIE_WINDOW:]

    def peer_rows(self) -> list[dict[str, object]]:
        """`gossipctl peers`: the peer table plus each peer's reputation."""
        rows = self._peers.snapshot(self._clock())
        for row in rows:
            score = self.reputation.peers.get(str(row.get("peer_id")))
            row["reputation"] = None if score is None else score.as_dict()
        return rows

    def tamper(self, honest: np.ndarray) -> np.ndarray:
        """averaging.attack (testbeds): the lie this node sends instead of its snapshot."""
        lie, self._attack = attacks.attack_apply(self._attack, self.attack, honest,
                                                 self._received)
        return lie
