"""Wire codec for flat float32 parameter vectors.

Plaintext layout (msgpack map, keys in this order when encoding)::

    {"dtype": "<f4", "n": <int>, "step": <int>, "data": <bin: n * 4 bytes>}

Rules:
  * Only little-endian float32 exists on the wire; ``dtype`` is explicit so a
    future version can add others without guessing.
  * Never pickle (nor np.load with allow_pickle): the payload comes from a peer.
  * ``n`` must equal the expected parameter count -> else SpecMismatch (the peer
    trains another model); ``data`` must be exactly ``4 * n`` bytes.
  * NaN/Inf are rejected on both ends: averaging with a diverged peer would
    poison the local model, and a sender should notice its own divergence.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt

from .errors import DecodeError, SpecMismatch
from .framing import safe_unpackb
from .messages import MAX_CHUNK_PLAINTEXT, MAX_NUM_PARAMS, MAX_STEP, SECRETSTREAM_ABYTES

__all__ = [
    "CHUNK_FRAME_OVERHEAD",
    "START_FRAME_BOUND",
    "WIRE_DTYPE",
    "decode_params",
    "encode_params",
    "params_frame_bound",
    "params_plaintext_bound",
]

WIRE_DTYPE = "<f4"
# Upper bound on everything in the encoding except the data bytes: fixmap header,
# four keys, the dtype string, two uint64s and a bin32 header. 64 is generous.
_OVERHEAD_BOUND = 64
# Framing around one sealed chunk: u32 length (4), fixmap (1), "t" (2), "chunk" (6),
# "data" (5), bin32 header (5).
CHUNK_FRAME_OVERHEAD = 23
START_FRAME_BOUND = 96


def params_plaintext_bound(num_params: int) -> int:
    """Largest ``encode_params`` output for ``num_params`` floats."""
    return 4 * num_params + _OVERHEAD_BOUND


def params_frame_bound(num_params: int, chunk_size: int = MAX_CHUNK_PLAINTEXT) -> int:
    """Largest total of the framed ParamsStart and ParamsChunks for ``num_params`` floats.

    ParamsStart: u32 length, the map with its keys and type tag, the 24-byte header and two
    ints (under START_FRAME_BOUND). Each ParamsChunk: u32 length, a 1-key map plus type tag,
    a bin header and the sealed chunk (CHUNK_FRAME_OVERHEAD + ABYTES + plaintext bytes).
    """
    plaintext = params_plaintext_bound(num_params)
    chunks = max(1, -(-plaintext // chunk_size))
    return START_FRAME_BOUND + plaintext + chunks * (CHUNK_FRAME_OVERHEAD + SECRETSTREAM_ABYTES)


def encode_params(flat: npt.NDArray[Any], step: int) -> bytes:
    """Encode a 1-D float32 vector and the sender's training step."""
    arr = np.asarray(flat)
    if arr.ndim != 1:
        raise ValueError(f"parameters must be a flat vector, got shape {arr.shape}")
    if arr.dtype.kind != "f" or arr.dtype.itemsize != 4:
        raise ValueError(f"parameters must be float32, got {arr.dtype}")
    if not 1 <= arr.size <= MAX_NUM_PARAMS:
        raise ValueError("parameter count out of range")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
        raise ValueError("step must be an int in 0..2**63-1")
    if not bool(np.isfinite(arr).all()):
        raise ValueError("refusing to send non-finite parameters")
    data = np.ascontiguousarray(arr, dtype=WIRE_DTYPE).tobytes()
    body = {"dtype": WIRE_DTYPE, "n": int(arr.size), "step": step, "data": data}
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def _int_field(body: dict[str, Any], key: str, hi: int) -> int:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
        raise DecodeError(f"params field {key!r} must be an int in 0..{hi}")
    return value


def decode_params(blob: bytes, expected_n: int) -> tuple[npt.NDArray[np.float32], int]:
    """Decode ``encode_params`` output -> (native float32 copy, step)."""
    body = safe_unpackb(blob)
    if not isinstance(body, dict):
        raise DecodeError("params payload must be a map")
    if body.get("dtype") != WIRE_DTYPE:
        raise DecodeError("params dtype must be '<f4'")
    n = _int_field(body, "n", MAX_NUM_PARAMS)
    step = _int_field(body, "step", MAX_STEP)
    if n != expected_n:
        raise SpecMismatch(f"peer sent {n} parameters, we have {expected_n}")
    data = body.get("data")
    if not isinstance(data, bytes) or len(data) != 4 * n:
        raise DecodeError("params data must be exactly 4 * n bytes")
    # frombuffer is read-only and borrows `data`; astype makes a native, writable copy.
    arr = np.frombuffer(data, dtype=WIRE_DTYPE).astype(np.float32)
    if not bool(np.isfinite(arr).all()):
        raise DecodeError("params contain NaN or Inf")
    return arr, step
