"""The node's long-term Ed25519 identity: a 32-byte seed in the state directory.

Rules:
- The file is created once, atomically, with mode 0600; it is never rewritten.
- A key file readable by group or others is refused (like ssh does), with the fix named.
- The same seed drives the libp2p host key and the signatures of the averaging handshake, so the
  peer ID that Noise authenticates is the key that signs exchange transcripts.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from protocol.crypto import peer_id_from_ed25519_public_key, public_key_from_seed

KEY_FILE_NAME = "identity.key"
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
SEED_BYTES = 32


class IdentityError(Exception):
    """The identity file exists but cannot be used; the message says what to do."""


def load_or_create_seed(state_dir: Path) -> bytes:
    """Return the node's 32-byte Ed25519 seed, creating it on first start."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state_dir / KEY_FILE_NAME
    try:
        info = path.stat()
    except FileNotFoundError:
        return _create(path)
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(
            f"identity key {path} is accessible by other users (mode "
            f"{stat.S_IMODE(info.st_mode):04o}); fix with: chmod 600 {path}"
        )
    seed = path.read_bytes()
    if len(seed) != SEED_BYTES:
        raise IdentityError(
            f"identity key {path} holds {len(seed)} bytes, expected {SEED_BYTES}; "
            "restore it from a backup, or delete it to make this node a new peer"
        )
    return seed


def _create(path: Path) -> bytes:
    seed = os.urandom(SEED_BYTES)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, seed)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)  # the umask may have cleared bits, never added any; be explicit
    os.replace(tmp, path)
    return seed


def base58(data: bytes) -> str:
    """Bitcoin-alphabet base58, the text form of libp2p peer IDs."""
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def peer_id_for_seed(seed: bytes) -> str:
    """The peer ID (12D3KooW...) that a node with this identity seed will have."""
    return base58(peer_id_from_ed25519_public_key(public_key_from_seed(seed)))
