"""Exchange receipts: one record of a completed exchange, signed by both peers.

Canonical receipt bytes (the thing both sign; PROTOCOL.md, "Receipts")::

    RECEIPT_CONTEXT                       "gossipd/receipt/v2" 00
    || exchange_id[16]
    || lp(initiator_peer_id) || lp(responder_peer_id)
    || u64(time_ms)                       the initiator's Hello time
    || u64(initiator_step) || u64(responder_step)
    || initiator_params_hash[32] || responder_params_hash[32]
                                          BLAKE3-256 of the float32 bytes each side sent
    || lp(algorithm) || lp(compression)
    || u64(initiator_samples) || u64(responder_samples)
                                          local samples trained since each side's last exchange
    || u64(initiator_ledger_seq) || initiator_ledger_head[32]
    || u64(responder_ledger_seq) || responder_ledger_head[32]
    sig = Ed25519(identity key, BLAKE2b-256(person="gossipd/receipt", data=receipt bytes))

Everything in it is known once both Hellos are swapped: each Hello's ReceiptInfo commits to the
hash of the parameters its sender is about to send, beside its samples and ledger head. So each
side signs right after the Hellos and sends its ReceiptSig ahead of its parameters: no round
trip of its own. The receiver checks the signature as it arrives and the parameters against the
committed hash once they are in, and merges only when both hold: a peer that refuses to sign,
or sends other parameters than it signed for, gets no merge. A receipt with both signatures is
proof that both took part in exactly this exchange.
Version 1 bodies ("gossipd/receipt/v1", BLAKE2b-256 parameter hashes, protocol version 1 and 2
ledgers) still parse and verify: the layout is the same.
Pure: bytes in, bytes out.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any

import blake3
import numpy as np
import numpy.typing as npt

from .crypto import ed25519_public_key_from_peer_id, sign, verify
from .errors import AuthenticationError, DecodeError
from .handshake import lp

__all__ = [
    "RECEIPT_CONTEXT",
    "ReceiptBody",
    "params_hash",
    "params_hasher",
    "receipt_digest",
    "sign_receipt",
    "verify_receipt",
]

RECEIPT_CONTEXT = b"gossipd/receipt/v2\x00"
RECEIPT_CONTEXT_V1 = b"gossipd/receipt/v1\x00"  # same layout, BLAKE2b-256 parameter hashes
PERSON = b"gossipd/receipt\x00"
_HEAD = struct.Struct(">Q32s")


# From this size on, params_hash lets the BLAKE3 binding spread the work over threads; below
# it, waking that thread pool costs more than it saves on a machine whose cores are busy.
PARALLEL_HASH_BYTES = 16 << 20


def params_hasher(threads: bool = False) -> Any:
    """A fresh BLAKE3 state for params_hash, for a caller that hashes a vector's
    little-endian float32 bytes piece by piece (e.g. while they arrive) and then digest()s.
    BLAKE3 because this hash runs over every vector of every exchange, on its path: 4-6 GB/s
    on one core of the reference machines (SHA-256 1.7, BLAKE2b 0.94). `threads`: let the
    binding spread large updates over all cores (it releases the GIL either way)."""
    if threads:
        return blake3.blake3(max_threads=blake3.blake3.AUTO)
    return blake3.blake3()


def params_hash(flat: npt.NDArray[Any]) -> bytes:
    """BLAKE3-256 of a parameter vector as the wire carries it (little-endian float32). No
    copy when ``flat`` already is contiguous "<f4"."""
    data = np.ascontiguousarray(flat, dtype="<f4")
    h = params_hasher(threads=data.nbytes >= PARALLEL_HASH_BYTES)
    h.update(data.data.cast("B"))
    digest: bytes = h.digest()
    return digest


@dataclass(frozen=True)
class ReceiptBody:
    exchange_id: bytes
    initiator: bytes  # binary peer IDs
    responder: bytes
    time_ms: int
    initiator_step: int
    responder_step: int
    initiator_params_hash: bytes
    responder_params_hash: bytes
    algorithm: str
    compression: str
    initiator_samples: int
    responder_samples: int
    initiator_head: tuple[int, bytes]
    responder_head: tuple[int, bytes]

    def to_bytes(self) -> bytes:
        if len(self.exchange_id) != 16:
            raise ValueError("exchange_id must be 16 bytes")
        for h in (self.initiator_params_hash, self.responder_params_hash,
                  self.initiator_head[1], self.responder_head[1]):
            if len(h) != 32:
                raise ValueError("hashes must be 32 bytes")
        return b"".join([
            RECEIPT_CONTEXT, self.exchange_id, lp(self.initiator), lp(self.responder),
            struct.pack(">QQQ", self.time_ms, self.initiator_step, self.responder_step),
            self.initiator_params_hash, self.responder_params_hash,
            lp(self.algorithm.encode()), lp(self.compression.encode()),
            struct.pack(">QQ", self.initiator_samples, self.responder_samples),
            _HEAD.pack(*self.initiator_head), _HEAD.pack(*self.responder_head),
        ])

    @classmethod
    def from_bytes(cls, data: bytes) -> ReceiptBody:
        """Parse canonical receipt bytes; DecodeError for anything else."""
        try:
            if not (data.startswith(RECEIPT_CONTEXT) or data.startswith(RECEIPT_CONTEXT_V1)):
                raise DecodeError("not a gossipd receipt")
            pos = len(RECEIPT_CONTEXT)  # both contexts have the same length
            xid = data[pos : pos + 16]
            pos += 16
            fields: list[bytes] = []
            for _ in range(2):
                (n,) = struct.unpack_from(">H", data, pos)
                fields.append(data[pos + 2 : pos + 2 + n])
                pos += 2 + n
            t, si, sr = struct.unpack_from(">QQQ", data, pos)
            pos += 24
            hi, hr = data[pos : pos + 32], data[pos + 32 : pos + 64]
            pos += 64
            strs: list[str] = []
            for _ in range(2):
                (n,) = struct.unpack_from(">H", data, pos)
                strs.append(data[pos + 2 : pos + 2 + n].decode())
                pos += 2 + n
            ni, nr = struct.unpack_from(">QQ", data, pos)
            pos += 16
            head_i = _HEAD.unpack_from(data, pos)
            head_r = _HEAD.unpack_from(data, pos + _HEAD.size)
            pos += 2 * _HEAD.size
        except (struct.error, UnicodeDecodeError) as exc:
            raise DecodeError(f"truncated or malformed receipt: {exc}") from None
        if pos != len(data) or len(xid) != 16 or len(hi) != 32 or len(hr) != 32:
            raise DecodeError("malformed receipt (length)")
        return cls(xid, fields[0], fields[1], t, si, sr, hi, hr, strs[0], strs[1], ni, nr,
                   (head_i[0], head_i[1]), (head_r[0], head_r[1]))


def receipt_digest(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=32, person=PERSON).digest()


def sign_receipt(seed: bytes, body: bytes) -> bytes:
    return sign(seed, receipt_digest(body))


def verify_receipt(record: dict[str, Any]) -> ReceiptBody:
    """A ledger receipt {"body", "initiator_sig", "responder_sig"}: both signatures valid for
    the peers the body names. AuthenticationError / DecodeError otherwise."""
    body, sig_i, sig_r = record.get("body"), record.get("initiator_sig"), \
        record.get("responder_sig")
    if not isinstance(body, bytes) or not isinstance(sig_i, bytes) or not isinstance(sig_r, bytes):
        raise DecodeError("receipt needs body, initiator_sig and responder_sig bytes")
    parsed = ReceiptBody.from_bytes(body)
    digest = receipt_digest(body)
    for who, peer, sig in (("initiator", parsed.initiator, sig_i),
                           ("responder", parsed.responder, sig_r)):
        try:
            verify(ed25519_public_key_from_peer_id(peer), digest, sig)
        except AuthenticationError:
            raise AuthenticationError(f"the {who}'s signature does not verify") from None
    return parsed
