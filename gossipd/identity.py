"""The node's long-term Ed25519 identity: a 32-byte seed in the state directory.

Rules:
- The file is created once, atomically, with mode 0600; it is never rewritten.
- A key file readable by group or others is refused (like ssh does), with the fix named.
- Under systemd the key arrives as a credential (LoadCredential=identity.key:..., see systemd/):
  $CREDENTIALS_DIRECTORY/identity.key, when present, is used as is and never created or written
  (refused only if others can read it: systemd grants access with an ACL that shows as group bits);
  the service user then cannot read the key's source file at all. Otherwise the key lives in
  state_dir/identity.key as above.
- The same seed drives the libp2p host key and the signatures of the averaging handshake, so the
  peer ID that Noise authenticates is the key that signs exchange transcripts.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from protocol.crypto import peer_id_from_ed25519_public_key, public_key_from_seed

KEY_FILE_NAME = "identity.key"
CREDENTIAL_NAME = "identity.key"
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
    return _read(path, info)


def credential_key_path(environ: Mapping[str, str] | None = None) -> Path | None:
    """$CREDENTIALS_DIRECTORY/identity.key if systemd passed the key as a credential."""
    env = os.environ if environ is None else environ
    directory = env.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = Path(directory) / CREDENTIAL_NAME
    return path if path.is_file() else None


def load_seed(state_dir: Path, environ: Mapping[str, str] | None = None) -> tuple[bytes, Path]:
    """The node's seed and where it came from: the systemd credential if there is one, else
    state_dir/identity.key (created on first start). The state directory is created either way
    (the replay table lives there)."""
    credential = credential_key_path(environ)
    if credential is None:
        return load_or_create_seed(state_dir), state_dir / KEY_FILE_NAME
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # systemd grants the service user read access to a credential with a POSIX ACL, whose mask
    # shows in the group bits of the mode; only access by others is a misconfiguration there.
    return _read(credential, credential.stat(), stat.S_IRWXO), credential


def create_key_file(path: Path) -> bytes:
    """Create a new identity key at `path` (0600); refuses to replace an existing file, since
    that would silently give the node a new peer ID."""
    if path.exists() or path.is_symlink():
        raise IdentityError(f"{path} already exists; a node's key is never replaced")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return _create(path)


def _read(path: Path, info: os.stat_result,
          forbidden: int = stat.S_IRWXG | stat.S_IRWXO) -> bytes:
    if info.st_mode & forbidden:
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
