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

# PyNaCl's own cffi module: nacl.bindings' secretstream functions take and return bytes only (a
# copy of every chunk each way); the *_into methods below call the same libsodium functions on
# caller buffers instead. The stream state objects are nacl.bindings' own.
from nacl._sodium import ffi as _ffi
from nacl._sodium import lib as _lib

from .errors import AuthenticationError, IntegrityError, LimitExceeded
from .messages import MAX_CHUNK_PLAINTEXT, MAX_CHUNKS

# A contiguous bytes-like object (numpy arrays via their .data memoryview).
Buffer = bytes | bytearray | memoryview

__all__ = [
    "ED25519_PEER_ID_PREFIX",
    "Opener",
    "Sealer",
    "Signer",
    "chunk_count",
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


class Signer:
    """An identity key ready to sign: deriving the key pair from the seed costs as much as the
    signature itself, so callers that sign often (the ledger, receipts) keep one of these."""

    def __init__(self, seed32: bytes) -> None:
        self._key = nacl.signing.SigningKey(seed32)
        self.public_key = bytes(self._key.verify_key)

    def sign(self, message: bytes) -> bytes:
        """The same signature as ``sign(seed32, message)``."""
        return bytes(self._key.sign(message).signature)


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


class Sealer:
    """Push side of one secretstream: ``header`` first, then ``push()`` each chunk in order.

    Only the last chunk is tagged FINAL (``final=True``), every other one MESSAGE, so the
    receiver can tell a complete stream from a truncated one.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != _KEYBYTES:
            raise ValueError("secretstream key must be 32 bytes")
        self._state = sodium.crypto_secretstream_xchacha20poly1305_state()
        header = sodium.crypto_secretstream_xchacha20poly1305_init_push(self._state, key)
        self.header = bytes(header)
        self._finished = False

    def push(self, piece: bytes, final: bool) -> bytes:
        if self._finished:
            raise ValueError("secretstream already finished")
        if len(piece) > MAX_CHUNK_PLAINTEXT:
            raise ValueError(f"chunk plaintext over {MAX_CHUNK_PLAINTEXT} bytes")
        tag = _TAG_FINAL if final else _TAG_MESSAGE
        self._finished = final
        sealed = sodium.crypto_secretstream_xchacha20poly1305_push(self._state, piece, None, tag)
        return bytes(sealed)

    def push_into(self, piece: Buffer, final: bool, out: Buffer) -> int:
        """Seal ``piece`` (any contiguous buffer) into ``out`` (writable, at least
        ``len(piece) + ABYTES`` bytes) without intermediate copies; returns the sealed length."""
        if self._finished:
            raise ValueError("secretstream already finished")
        src = memoryview(piece).cast("B")
        dst = memoryview(out).cast("B")
        if src.nbytes > MAX_CHUNK_PLAINTEXT:
            raise ValueError(f"chunk plaintext over {MAX_CHUNK_PLAINTEXT} bytes")
        sealed_len = src.nbytes + _ABYTES
        if dst.readonly or dst.nbytes < sealed_len:
            raise ValueError("output buffer too small or read-only")
        tag = _TAG_FINAL if final else _TAG_MESSAGE
        self._finished = final
        rc = _lib.crypto_secretstream_xchacha20poly1305_push(
            self._state.statebuf, _ffi.from_buffer(dst), _ffi.NULL,
            _ffi.from_buffer(src), src.nbytes, _ffi.NULL, 0, tag,
        )
        if rc != 0:
            raise RuntimeError("crypto_secretstream_xchacha20poly1305_push failed")
        return sealed_len


class Opener:
    """Pull side of one secretstream. ``pull(chunk, last)`` returns the chunk's plaintext.

    IntegrityError for a bad header, any chunk that fails authentication (tampered,
    dropped, duplicated or reordered: the stream's nonce counter moves on with every
    chunk), FINAL before the last chunk, a last chunk without FINAL (truncation), or a
    tag that ``Sealer`` never produces (PUSH/REKEY). After an error the opener is dead.
    """

    def __init__(self, key: bytes, header: bytes) -> None:
        if len(key) != _KEYBYTES:
            raise ValueError("secretstream key must be 32 bytes")
        if not isinstance(header, bytes) or len(header) != _HEADERBYTES:
            raise IntegrityError("secretstream header must be 24 bytes")
        self._state = sodium.crypto_secretstream_xchacha20poly1305_state()
        try:
            sodium.crypto_secretstream_xchacha20poly1305_init_pull(self._state, header, key)
        except (nacl.exceptions.CryptoError, ValueError):
            raise IntegrityError("bad secretstream header") from None
        self._index = 0
        self._dead = False

    def pull(self, chunk: bytes, last: bool) -> bytes:
        if self._dead:
            raise IntegrityError("secretstream already finished or failed")
        self._dead = True  # until this chunk is proven good
        if not isinstance(chunk, bytes) or len(chunk) < _ABYTES:
            raise IntegrityError("chunk shorter than the authentication tag")
        try:
            piece, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(
                self._state, chunk, None
            )
        except (nacl.exceptions.CryptoError, ValueError):
            raise IntegrityError(f"chunk {self._index} failed authentication") from None
        self._accept(tag, last)
        return bytes(piece)

    def _accept(self, tag: int, last: bool) -> None:
        """The tag rules of an authenticated chunk: FINAL on the last chunk only, MESSAGE on
        every other one, nothing else; then the stream moves on (or ends)."""
        if tag == _TAG_FINAL and not last:
            raise IntegrityError("data after the FINAL chunk")
        if tag != _TAG_FINAL and last:
            raise IntegrityError("stream truncated: last chunk is not FINAL")
        if tag not in (_TAG_FINAL, _TAG_MESSAGE):
            raise IntegrityError(f"unexpected secretstream tag {tag}")
        self._index += 1
        self._dead = last

    def pull_into(self, chunk: Buffer, last: bool, out: Buffer) -> int:
        """Like ``pull``, decrypting into ``out`` (writable, at least ``len(chunk) - ABYTES``
        bytes) instead of returning bytes; returns the plaintext length. On any error
        ``out`` may hold unauthenticated bytes: the caller must discard it."""
        if self._dead:
            raise IntegrityError("secretstream already finished or failed")
        self._dead = True  # until this chunk is proven good
        src = memoryview(chunk).cast("B")
        dst = memoryview(out).cast("B")
        if src.nbytes < _ABYTES:
            raise IntegrityError("chunk shorter than the authentication tag")
        plain_len = src.nbytes - _ABYTES
        if plain_len > MAX_CHUNK_PLAINTEXT:
            raise IntegrityError("chunk longer than the largest sealed chunk")
        if dst.readonly or dst.nbytes < plain_len:
            raise ValueError("output buffer too small or read-only")
        tag_out = _ffi.new("unsigned char *")
        rc = _lib.crypto_secretstream_xchacha20poly1305_pull(
            self._state.statebuf, _ffi.from_buffer(dst), _ffi.NULL, tag_out,
            _ffi.from_buffer(src), src.nbytes, _ffi.NULL, 0,
        )
        if rc != 0:
            raise IntegrityError(f"chunk {self._index} failed authentication")
        tag = int(tag_out[0])
        self._accept(tag, last)
        return plain_len


def chunk_count(size: int, chunk_size: int) -> int:
    """Chunks a plaintext of ``size`` bytes needs (an empty plaintext still has one)."""
    return max(1, -(-size // chunk_size))


def seal(key: bytes, plaintext: bytes, chunk_size: int = 1 << 20) -> tuple[bytes, list[bytes]]:
    """Encrypt ``plaintext`` as a whole secretstream: (24-byte header, sealed chunks).

    Chunks carry ``chunk_size`` plaintext bytes each (the last one may be shorter or empty).
    """
    if not 1 <= chunk_size <= MAX_CHUNK_PLAINTEXT:
        raise ValueError(f"chunk_size must be in 1..{MAX_CHUNK_PLAINTEXT}")
    count = chunk_count(len(plaintext), chunk_size)
    if count > MAX_CHUNKS:
        raise LimitExceeded(f"plaintext needs {count} chunks, cap is {MAX_CHUNKS}")
    sealer = Sealer(key)
    view = memoryview(plaintext)
    chunks = [
        sealer.push(bytes(view[i * chunk_size : (i + 1) * chunk_size]), i == count - 1)
        for i in range(count)
    ]
    return sealer.header, chunks


def open_sealed(key: bytes, header: bytes, chunks: Sequence[bytes], max_plaintext: int) -> bytes:
    """Decrypt a whole secretstream produced by ``seal`` (errors as ``Opener``).

    LimitExceeded: the total plaintext would exceed ``max_plaintext``; checked from the
    ciphertext lengths *before* decrypting, so an oversized stream costs no decryption work.
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
    opener = Opener(key, header)
    last = len(chunks) - 1
    return b"".join(opener.pull(chunk, i == last) for i, chunk in enumerate(chunks))
