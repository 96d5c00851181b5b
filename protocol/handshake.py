"""Byte layouts of the averaging handshake: signed transcripts and the KDF.

Pure functions, so SPEC.md, the test vectors and AveragingSession share one
definition. Notation: u16/u32/u64 are big-endian unsigned ints, ``lp(x)`` is
``u16(len(x)) || x`` (length-prefixed, so no two field sequences can encode to the
same bytes), strings are UTF-8.

Signed Hello transcript (each side signs its own with its libp2p Ed25519 key)::

    SIG_CONTEXT || u32(version) || u8(role) || exchange_id[16]
      || lp(signer_peer_id) || lp(receiver_peer_id) || eph_pub[32]
      || lp(spec) || u64(num_params) || u64(step)

  * role (1 = initiator, 2 = responder) stops reflection: a Hello echoed back to
    its sender claims the wrong role and is also signed by the wrong key.
  * signer and receiver peer IDs stop relaying a Hello to a third peer.
  * exchange_id (fresh, random, chosen by the initiator) binds the responder's
    Hello to this exchange, so an old responder Hello cannot be replayed.
  * eph_pub binds the ephemeral key to the long-term identity (no MITM).

KDF (both directions derive from the same X25519 shared secret)::

    info  = KDF_CONTEXT || u32(version) || exchange_id[16]
              || lp(initiator_peer_id) || lp(responder_peer_id)
              || initiator_eph_pub[32] || responder_eph_pub[32]
              || lp(spec) || u64(num_params)
    k_i2r = BLAKE2b(digest_size=32, key=shared, person=PERSON_I2R, data=info)
    k_r2i = BLAKE2b(digest_size=32, key=shared, person=PERSON_R2I, data=info)

Separate keys per direction mean a sealed Params cannot be reflected back to its
sender: it would be opened with the other key and fail authentication.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

__all__ = [
    "KDF_CONTEXT",
    "PERSON_I2R",
    "PERSON_R2I",
    "ROLE_INITIATOR",
    "ROLE_RESPONDER",
    "SIG_CONTEXT",
    "SessionKeys",
    "derive_keys",
    "kdf_info",
    "lp",
    "signed_transcript",
]

SIG_CONTEXT = b"gossipd/avg/hello-sig/v1\x00"
KDF_CONTEXT = b"gossipd/avg/kdf/v1\x00"
PERSON_I2R = b"gossipd/avg/i2r\x00"  # BLAKE2b personalisation: exactly 16 bytes
PERSON_R2I = b"gossipd/avg/r2i\x00"
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
            struct.pack(">QQ", num_params, step),
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


def derive_keys(shared: bytes, info: bytes) -> SessionKeys:
    """Two independent 32-byte keys from the X25519 secret (keyed BLAKE2b as PRF)."""
    if len(shared) != 32:
        raise ValueError("shared secret must be 32 bytes")

    def prf(person: bytes) -> bytes:
        return hashlib.blake2b(info, digest_size=32, key=shared, person=person).digest()

    return SessionKeys(i2r=prf(PERSON_I2R), r2i=prf(PERSON_R2I))
