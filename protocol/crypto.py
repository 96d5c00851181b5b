"""Cryptographic primitives of the protocol, all from libsodium via PyNaCl.

  * Identity: Ed25519 keys embedded in libp2p peer IDs (identity multihash).
  * Key agreement: ephemeral X25519, fresh per exchange (forward secrecy).
  * Payload: crypto_secretstream_xchacha20poly1305. The stream's per-chunk nonce
    counter makes reordering, dropping or duplicating chunks fail authentication,
    and the FINAL tag on the last chunk makes truncation detectable.
Every failure caused by remote input becomes a ProtocolError subclass; nacl's own
exceptions never escape.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import nacl.bindings as sodium
import nacl.exceptions
import nacl.signing

from .errors import AuthenticationError, IntegrityError, LimitExceeded
from .messages import MAX_CHUNK_PLAINTEXT, MAX_CHUNKS

__all__ = [
    "ED25519_PEER_ID_PREFIX",
    "ed25519_public_key_from_peer_id",
    "ephemeral_from_private",
    "new_ephemeral",
    "open_sealed",
    "peer_id_from_ed25519_public_key",
    "public_key_from_seed",
    "seal",
    "sign",
    "verify",
    "x25519_shared",
]

# identity multihash (code 0x00, length 0x24 = 36) wrapping the libp2p PublicKey
# protobuf: field 1 KeyType varint = 1 (Ed25519), field 2 Data = 32 bytes.
ED25519_PEER_ID_PREFIX = bytes.fromhex("002408011220")
_PEER_ID_LEN = len(ED25519_PEER_ID_PREFIX) + 32

_TAG_MESSAGE: int = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
_TAG_FINAL: int = sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL
_ABYTES: int = sodium.crypto_secretstream_xchacha20poly1305_ABYTES
_HEADERBYTES: int = sodium.crypto_secretstream_xchacha20poly1305_HEADERBYTES
_KEYBYTES: int = sodium.crypto_secretstream_xchacha20poly1305_KEYBYTES


# ------------------------------------------------------------------ identities


def ed25519_public_key_from_peer_id(peer_id: bytes) -> bytes:
    """Extract the Ed25519 key from a libp2p peer ID (binary form).

    Only the inline identity-multihash form is accepted: a SHA-256 peer ID (RSA,
    secp256k1 keys) carries no key we could verify against, and accepting other
    key types would need other signature schemes. The key must be a valid,
    non-small-order curve point, or a forged ID could make any signature verify.
    """
    if not isinstance(peer_id, bytes) or len(peer_id) != _PEER_ID_LEN:
        raise AuthenticationError("peer ID is not an inline Ed25519 identity multihash")
    if not peer_id.startswith(ED25519_PEER_ID_PREFIX):
        raise AuthenticationError("peer ID is not an inline Ed25519 identity multihash")
    key = peer_id[len(ED25519_PEER_ID_PREFIX) :]
    if not sodium.crypto_core_ed25519_is_valid_point(key):
        raise AuthenticationError("peer ID holds an invalid Ed25519 public key")
    return key


def peer_id_from_ed25519_public_key(public32: bytes) -> bytes:
    if len(public32) != 32:
        raise ValueError("Ed25519 public key must be 32 bytes")
    return ED25519_PEER_ID_PREFIX + public32


def public_key_from_seed(seed32: bytes) -> bytes:
    return bytes(nacl.signing.SigningKey(seed32).verify_key)


def sign(seed32: bytes, message: bytes) -> bytes:
    """Ed25519 signature (deterministic, RFC 8032) of ``message``; 64 bytes."""
    return bytes(nacl.signing.SigningKey(seed32).sign(message).signature)


def verify(public32: bytes, message: bytes, sig: bytes) -> None:
    """Raise AuthenticationError unless ``sig`` is a valid signature by ``public32``."""
    if len(public32) != 32 or len(sig) != 64:
        raise AuthenticationError("malformed public key or signature")
    try:
        nacl.signing.VerifyKey(public32).verify(message, sig)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise AuthenticationError("bad signature") from None


# ------------------------------------------------------------------ key agreement


def ephemeral_from_private(private32: bytes) -> tuple[bytes, bytes]:
    """(private, public) X25519 pair from a given private key (for test vectors)."""
    if len(private32) != 32:
        raise ValueError("X25519 private key must be 32 bytes")
    return private32, bytes(sodium.crypto_scalarmult_base(private32))


def new_ephemeral() -> tuple[bytes, bytes]:
    """Fresh (x25519 private, public) pair from the OS CSPRNG."""
    return ephemeral_from_private(os.urandom(32))


def x25519_shared(private32: bytes, peer_public32: bytes) -> bytes:
    """X25519 shared secret. A low-order peer key (all-zero result) is rejected:
    it would let a malicious peer force a key it knows regardless of ours."""
    if len(peer_public32) != 32:
        raise AuthenticationError("ephemeral public key must be 32 bytes")
    try:
        return bytes(sodium.crypto_scalarmult(private32, peer_public32))
    except nacl.exceptions.CryptoError:
        raise AuthenticationError("degenerate (low-order) ephemeral public key") from None


# ------------------------------------------------------------------ payload AEAD


def seal(key: bytes, plaintext: bytes, chunk_size: int = 1 << 20) -> tuple[bytes, list[bytes]]:
    """Encrypt ``plaintext`` as a secretstream: (24-byte header, sealed chunks).

    Chunks carry ``chunk_size`` plaintext bytes each (the last one may be shorter
    or empty); only the last chunk is tagged FINAL, all others MESSAGE.
    """
    if len(key) != _KEYBYTES:
        raise ValueError("secretstream key must be 32 bytes")
    if not 1 <= chunk_size <= MAX_CHUNK_PLAINTEXT:
        raise ValueError(f"chunk_size must be in 1..{MAX_CHUNK_PLAINTEXT}")
    count = max(1, -(-len(plaintext) // chunk_size))
    if count > MAX_CHUNKS:
        raise LimitExceeded(f"plaintext needs {count} chunks, cap is {MAX_CHUNKS}")
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    header = bytes(sodium.crypto_secretstream_xchacha20poly1305_init_push(state, key))
    view = memoryview(plaintext)
    chunks: list[bytes] = []
    for i in range(count):
        piece = bytes(view[i * chunk_size : (i + 1) * chunk_size])
        tag = _TAG_FINAL if i == count - 1 else _TAG_MESSAGE
        sealed = sodium.crypto_secretstream_xchacha20poly1305_push(state, piece, None, tag)
        chunks.append(bytes(sealed))
    return header, chunks


def open_sealed(key: bytes, header: bytes, chunks: Sequence[bytes], max_plaintext: int) -> bytes:
    """Decrypt a secretstream produced by ``seal``.

    IntegrityError: wrong key/header, any tampered, dropped, duplicated or
    reordered chunk, a missing FINAL tag (truncation), chunks after FINAL, or a
    tag ``seal`` never produces (PUSH/REKEY). LimitExceeded: the total plaintext
    would exceed ``max_plaintext``; checked from ciphertext lengths *before*
    decrypting, so an oversized stream costs no decryption work.
    """
    if len(key) != _KEYBYTES:
        raise ValueError("secretstream key must be 32 bytes")
    if not isinstance(header, bytes) or len(header) != _HEADERBYTES:
        raise IntegrityError("secretstream header must be 24 bytes")
    if not chunks:
        raise IntegrityError("empty stream: FINAL chunk missing")
    total = 0
    for chunk in chunks:
        if not isinstance(chunk, bytes) or len(chunk) < _ABYTES:
            raise IntegrityError("chunk shorter than the authentication tag")
        total += len(chunk) - _ABYTES
    if total > max_plaintext:
        raise LimitExceeded(f"sealed payload of {total} bytes exceeds {max_plaintext}")
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    try:
        sodium.crypto_secretstream_xchacha20poly1305_init_pull(state, header, key)
    except (nacl.exceptions.CryptoError, ValueError):
        raise IntegrityError("bad secretstream header") from None
    parts: list[bytes] = []
    last = len(chunks) - 1
    for i, chunk in enumerate(chunks):
        try:
            piece, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(state, chunk, None)
        except (nacl.exceptions.CryptoError, ValueError):
            raise IntegrityError(f"chunk {i} failed authentication") from None
        if tag == _TAG_FINAL and i != last:
            raise IntegrityError("data after the FINAL chunk")
        if tag != _TAG_FINAL and i == last:
            raise IntegrityError("stream truncated: last chunk is not FINAL")
        if tag not in (_TAG_FINAL, _TAG_MESSAGE):
            raise IntegrityError(f"unexpected secretstream tag {tag}")
        parts.append(bytes(piece))
    return b"".join(parts)
