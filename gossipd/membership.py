"""Who may take part: the swarm's member allowlist and optional shared secret.

Rules:
- A swarm is closed by default. A node starts only if its config names members (peer IDs, inline
  or in a file), or a swarm secret, or says `swarm.open = true` explicitly (test swarms).
- The allowlist is enforced three times: after the Noise handshake (the connection is dropped
  before any stream exists), at every inbound stream, and before a learned peer enters the peer
  table (we never dial a non-member).
- The swarm secret (a file of at least 32 bytes, never sent) is hashed to a 32-byte swarm key that
  the averaging handshake mixes into its signatures and keys: a peer without it fails the first
  exchange with an authentication error and a strike.
- This node itself is always a member.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from pathlib import Path

from protocol.handshake import MIN_SWARM_SECRET_LEN, swarm_key_from_secret

MIN_SECRET_BYTES = MIN_SWARM_SECRET_LEN
MAX_PROVEN = 100_000  # bound on remembered proven peers (beyond it, newcomers wait)


class MembershipError(Exception):
    """The membership settings cannot be used; the message names the key and the fix."""


@dataclass
class Membership:
    open: bool
    members: frozenset[str]
    swarm_key: bytes | None = None
    self_id: str = ""
    refused: int = 0
    refused_peers: dict[str, int] = field(default_factory=dict)
    proven_peers: set[str] = field(default_factory=set)

    def allows(self, peer_id: str) -> bool:
        if self.open or peer_id == self.self_id or peer_id in self.members:
            return True
        # Secret-only swarms cannot tell members by ID: the exchange handshake checks the key.
        return not self.members and self.swarm_key is not None

    @property
    def secret_only(self) -> bool:
        return not self.open and not self.members and self.swarm_key is not None

    def proven(self, peer_id: str) -> bool:
        """May this peer see our peer list? In a secret-only swarm only once it has completed
        an exchange (which proves the secret); otherwise an allowed peer may."""
        if not self.secret_only:
            return self.allows(peer_id)
        return peer_id == self.self_id or peer_id in self.proven_peers

    def prove(self, peer_id: str) -> None:
        """A completed averaging exchange proved the peer holds the swarm secret."""
        if len(self.proven_peers) < MAX_PROVEN:
            self.proven_peers.add(peer_id)

    def refuse(self, peer_id: str) -> None:
        """Count a refused non-member (bounded: at most 1024 distinct IDs are remembered)."""
        self.refused += 1
        if peer_id in self.refused_peers or len(self.refused_peers) < 1024:
            self.refused_peers[peer_id] = self.refused_peers.get(peer_id, 0) + 1

    @property
    def mode(self) -> str:
        if self.open:
            return "open"
        parts = []
        if self.members:
            parts.append(f"allowlist of {len(self.members)}")
        if self.swarm_key is not None:
            parts.append("swarm secret")
        return "closed: " + " + ".join(parts)


def read_members_file(path: Path) -> list[str]:
    """One peer ID per line; blank lines and '#' comments are ignored."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MembershipError(f"swarm.members_file: cannot read {path}: {exc.strerror}") from exc
    return [ln.split("#", 1)[0].strip() for ln in text.splitlines() if ln.split("#", 1)[0].strip()]


def read_swarm_key(path: Path) -> bytes:
    try:
        info = path.stat()
        secret = path.read_bytes()
    except OSError as exc:
        raise MembershipError(f"swarm.secret_file: cannot read {path}: {exc.strerror}") from exc
    if info.st_mode & (stat.S_IRWXO | stat.S_IWGRP):
        raise MembershipError(
            f"swarm.secret_file {path} is writable or readable by others; "
            f"fix with: chmod 640 {path}"
        )
    if len(secret) < MIN_SECRET_BYTES:
        raise MembershipError(
            f"swarm.secret_file {path} holds {len(secret)} bytes, expected at least "
            f"{MIN_SECRET_BYTES}; create one with: head -c 32 /dev/urandom > {path}"
        )
    return swarm_key_from_secret(secret)


def check_member_ids(ids: list[str]) -> None:
    for peer_id in ids:
        if not peer_id.isalnum() or not 20 <= len(peer_id) <= 128:
            raise MembershipError(f"swarm.members: {peer_id!r} is not a peer ID (12D3KooW...)")


def build(open_swarm: bool, members: tuple[str, ...], members_file: Path | None,
          secret_file: Path | None, self_id: str = "") -> Membership:
    ids = list(members)
    if members_file is not None:
        ids += read_members_file(members_file)
    check_member_ids(ids)
    key = read_swarm_key(secret_file) if secret_file is not None else None
    if not open_swarm and not ids and key is None:
        raise MembershipError(
            "swarm is closed by default but names no members: set swarm.members (peer IDs), "
            "swarm.members_file or swarm.secret_file; or swarm.open = true for an open test swarm"
        )
    return Membership(open=open_swarm, members=frozenset(ids), swarm_key=key, self_id=self_id)
