"""Byte layouts of the averaging handshake: signed transcripts and the KDF.

Pure functions, so PROTOCOL.md, the test vectors and AveragingSession share one
definition. Notation: u16/u32/u64 are big-endian unsigned ints, ``lp(x)`` is
``u16(len(x)) || x`` (length-prefixed, so no two field sequences can encode to the
same bytes), strings are UTF-8.

Signed Hello transcript (each side signs its own with its libp2p Ed25519 key)::

    SIG_CONTEXT || u32(version) || u8(role) || exchange_id[16]
      || lp(signer_peer_id) || lp(receiver_peer_id) || eph_pub[32]
      || lp(spec) || u64(num_params) || u64(step) || u64(time_ms)

  * role (1 = initiator, 2 = responder) stops reflection: a Hello echoed back to
    its sender claims the wrong role and is also signed by the wrong key.
  * signer and receiver peer IDs stop relaying a Hello to a third peer.
  * exchange_id (fresh, random, chosen by the initiator) binds the responder's
    Hello to this exchange, so an old responder Hello cannot be replayed.
  * eph_pub binds the ephemeral key to the long-term identity (no MITM).
  * time_ms (the signer's clock) lets the responder refuse replayed initiator Hellos
    after a bounded window, and remember the ids inside the window (protocol/replay.py).

Swarm tag (only in swarms with a shared secret; empty otherwise)::

    swarm_key = BLAKE2b(digest_size=32, person=PERSON_SWARM_KEY, data=secret_file_bytes)
    swarm_tag = BLAKE2b(digest_size=32, key=swarm_key, person=PERSON_SWARM, data=transcript)

  A peer without the secret cannot produce it, so it fails the handshake before any
  key is derived; the secret itself never crosses the wire.

KDF (both directions derive from the same X25519 shared secret)::

    info  = KDF_CONTEXT || u32(version) || exchange_id[16]
              || lp(initiator_peer_id) || lp(responder_peer_id)
              || initiator_eph_pub[32] || responder_eph_pub[32]
              || lp(spec) || u64(num_params)
    ikm   = shared                                  without a swarm secret
    ikm   = BLAKE2b(digest_size=32, key=swarm_key, person=PERSON_PSK, data=shared)  with one
    k_i2r = BLAKE2b(digest_size=32, key=ikm, person=PERSON_I2R, data=info)
    k_r2i = BLAKE2b(digest_size=32, key=ikm, person=PERSON_R2I, data=info)

Separate keys per direction mean a sealed Params cannot be reflected back to its
sender: it would be opened with the other key and fail authentication. Mixing the swarm
key into the input keying material means even a peer that somehow skipped the tag check
could not read or forge a payload without the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

__all__ = [
    "KDF_CONTEXT",
    "MIN_SWARM_SECRET_LEN",
    "PERSON_I2R",
    "PERSON_PSK",
    "PERSON_R2I",
    "PERSON_SWARM",
    "PERSON_SWARM_KEY",
    "ROLE_INITIATOR",
    "ROLE_RESPONDER",
    "SIG_CONTEXT",
    "SWARM_KEY_LEN",
    "SessionKeys",
    "derive_keys",
    "kdf_info",
    "lp",
    "signed_transcript",
    "swarm_key_from_secret",
    "swarm_tag",
    "swarm_tag_ok",
]

SIG_CONTEXT = b"gossipd/avg/hello-sig/v1\x00"
KDF_CONTEXT = b"gossipd/avg/kdf/v1\x00"
PERSON_I2R = b"gossipd/avg/i2r\x00"  # BLAKE2b personalisation: exactly 16 bytes
PERSON_R2I = b"gossipd/avg/r2i\x00"
PERSON_PSK = b"gossipd/avg/psk\x00"
PERSON_SWARM = b"gossipd/swarmtag"
PERSON_SWARM_KEY = b"gossipd-swarm"  # BLAKE2b pads personalisation to 16 bytes with zeros
SWARM_KEY_LEN = 32
MIN_SWARM_SECRET_LEN = 32
ROLE_INITIATOR = 1
ROLE_RESPONDER = 2


def lp(data: bytes) -> bytes:
    """u16 length prefix + data."""
    if len(data) > 0xFFFF:
        raise ValueError("field too long for a u16 length prefix")
    return struct.pack(">H", len(data)) + data


def signed_transcript(
    *,
    version: int,
    role: int,
    exchange_id: bytes,
    signer_peer_id: bytes,
    receiver_peer_id: bytes,
    eph_pub: bytes,
    spec: str,
    num_params: int,
    step: int,
    time_ms: int,
) -> bytes:
    """The exact bytes a Hello's ``sig`` signs (see module docstring)."""
    if role not in (ROLE_INITIATOR, ROLE_RESPONDER):
        raise ValueError("role must be ROLE_INITIATOR or ROLE_RESPONDER")
    if len(exchange_id) != 16 or len(eph_pub) != 32:
        raise ValueError("exchange_id must be 16 bytes and eph_pub 32 bytes")
    return b"".join(
        [
            SIG_CONTEXT,
            struct.pack(">IB", version, role),
            exchange_id,
            lp(signer_peer_id),
            lp(receiver_peer_id),
            eph_pub,
            lp(spec.encode("utf-8")),
            struct.pack(">QQQ", num_params, step, time_ms),
        ]
    )


def kdf_info(
    *,
    version: int,
    exchange_id: bytes,
    initiator_peer_id: bytes,
    responder_peer_id: bytes,
    initiator_eph_pub: bytes,
    responder_eph_pub: bytes,
    spec: str,
    num_params: int,
) -> bytes:
    """The KDF input binding the whole handshake (see module docstring)."""
    if len(exchange_id) != 16 or len(initiator_eph_pub) != 32 or len(responder_eph_pub) != 32:
        raise ValueError("exchange_id must be 16 bytes and ephemeral keys 32 bytes")
    return b"".join(
        [
            KDF_CONTEXT,
            struct.pack(">I", version),
            exchange_id,
            lp(initiator_peer_id),
            lp(responder_peer_id),
            initiator_eph_pub,
            responder_eph_pub,
            lp(spec.encode("utf-8")),
            struct.pack(">Q", num_params),
        ]
    )


@dataclass(frozen=True)
class SessionKeys:
    """Directional secretstream keys: initiator->responder and back."""

    i2r: bytes
    r2i: bytes


def _check_swarm_key(swarm_key: bytes) -> None:
    if len(swarm_key) != SWARM_KEY_LEN:
        raise ValueError("swarm key must be 32 bytes")


def swarm_key_from_secret(secret: bytes) -> bytes:
    """The 32-byte swarm key every member derives from the shared secret file's bytes."""
    if len(secret) < MIN_SWARM_SECRET_LEN:
        raise ValueError(f"swarm secret must be at least {MIN_SWARM_SECRET_LEN} bytes")
    return hashlib.blake2b(secret, digest_size=SWARM_KEY_LEN, person=PERSON_SWARM_KEY).digest()


def swarm_tag(swarm_key: bytes | None, transcript: bytes) -> bytes:
    """The Hello's proof of the swarm secret; empty when the swarm has none."""
    if swarm_key is None:
        return b""
    _check_swarm_key(swarm_key)
    return hashlib.blake2b(transcript, digest_size=32, key=swarm_key, person=PERSON_SWARM).digest()


def swarm_tag_ok(swarm_key: bytes | None, transcript: bytes, tag: bytes) -> bool:
    """Constant-time check that ``tag`` is what ``swarm_tag`` gives for our key."""
    return hmac.compare_digest(swarm_tag(swarm_key, transcript), tag)


def derive_keys(shared: bytes, info: bytes, swarm_key: bytes | None = None) -> SessionKeys:
    """Two independent 32-byte keys from the X25519 secret (keyed BLAKE2b as PRF)."""
    if len(shared) != 32:
        raise ValueError("shared secret must be 32 bytes")
    ikm = shared
    if swarm_key is not None:
        _check_swarm_key(swarm_key)
        ikm = hashlib.blake2b(shared, digest_size=32, key=swarm_key, person=PERSON_PSK).digest()

    def prf(person: bytes) -> bytes:
        return hashlib.blake2b(info, digest_size=32, key=ikm, person=person).digest()

    return SessionKeys(i2r=prf(PERSON_I2R), r2i=prf(PERSON_R2I))
