"""Wire codec for flat float32 parameter vectors, plain or compressed.

Plaintext layout (msgpack map, keys in this order when encoding)::

    {"dtype": <str>, "n": <int>, "step": <int>, "data": <bin: encoded_size(n) bytes>}

``dtype`` names the encoding of ``data`` (protocol.quant, PROTOCOL.md 4.4):
``"<f4"`` little-endian float32 (4n bytes), ``"bf16"`` bfloat16 (2n bytes), ``"i8b256"``
blockwise int8 (4 * ceil(n / 256) scales, then n int8 values).

Rules:
  * Each sender picks its encoding; a receiver accepts any of the three and always returns
    float32 (no negotiation). Any other dtype, or ``data`` not exactly the size its dtype
    implies for ``n``, is DecodeError.
  * Never pickle (nor np.load with allow_pickle): the payload comes from a peer.
  * ``n`` must equal the expected parameter count -> else SpecMismatch (the peer
    trains another model).
  * NaN/Inf are rejected on both ends: averaging with a diverged peer would
    poison the local model, and a sender should notice its own divergence. An encoding
    that would decode to NaN/Inf (or breaks protocol.quant's rules) is DecodeError.
  * Every encoding of n values is at most 4n + 1 data bytes (int8 of n = 1 is 5), and the
    header at most 48 bytes, so ``params_plaintext_bound`` (4n + 64) holds for all of them.
  * Large vectors are never serialised into one buffer: the encoding is a short
    header (``params_header``, everything before the data bytes) followed by the
    data bytes, so senders stream the array (or its encoded buffer) as it is and
    receivers decode the data bytes straight from the receive buffer; "<f4" data is
    returned as a float32 view of it (``parse_params_header`` recognises the header).
    ``encode_params`` and ``decode_params`` are the same layout as one bytes object.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt

from . import quant
from .errors import DecodeError, SpecMismatch
from .framing import safe_unpackb
from .messages import MAX_CHUNK_PLAINTEXT, MAX_NUM_PARAMS, MAX_STEP, SECRETSTREAM_ABYTES
from .quant import MODE_OF_DTYPE, WIRE_DTYPES, encoded_size

__all__ = [
    "AUTO_CHUNKS",
    "AUTO_CHUNK_MIN",
    "CHUNK_FRAME_OVERHEAD",
    "MAX_HEADER_LEN",
    "START_FRAME_BOUND",
    "WIRE_DTYPE",
    "WIRE_DTYPES",
    "all_finite",
    "auto_chunk_size",
    "check_params",
    "decode_params",
    "decode_payload",
    "encode_params",
    "params_frame_bound",
    "params_header",
    "params_plaintext_bound",
    "parse_params_header",
    "payload_parts",
    "wire_view",
]

WIRE_DTYPE = "<f4"
# Upper bound on everything in the encoding except the data bytes: fixmap header,
# four keys, the dtype string, two uint64s and a bin32 header (48 bytes with "i8b256").
# It also absorbs the one byte by which int8 of a single value exceeds 4n.
_OVERHEAD_BOUND = 64
# Framing around one sealed chunk: u32 length (4), fixmap (1), "t" (2), "chunk" (6),
# "data" (5), bin32 header (5).
CHUNK_FRAME_OVERHEAD = 23
START_FRAME_BOUND = 96


def params_plaintext_bound(num_params: int) -> int:
    """Largest ``encode_params`` output for ``num_params`` floats, in any encoding."""
    return 4 * num_params + _OVERHEAD_BOUND


# Automatic chunk size: about AUTO_CHUNKS chunks per payload, between AUTO_CHUNK_MIN and the 1 MiB
# cap. A sender and receiver each hold a few chunk-sized buffers at a time, so small payloads
# get small chunks (an exchange stays within ~2x its payload in memory), large ones 1 MiB chunks
# (fewest frames).
AUTO_CHUNKS = 16
AUTO_CHUNK_MIN = 64 << 10


def auto_chunk_size(plaintext_size: int) -> int:
    """The chunk size a sender uses for ``plaintext_size`` bytes unless told otherwise."""
    per_chunk = -(-plaintext_size // AUTO_CHUNKS)
    per_chunk = -(-per_chunk // 4096) * 4096
    return min(MAX_CHUNK_PLAINTEXT, max(AUTO_CHUNK_MIN, per_chunk))


def params_frame_bound(num_params: int, chunk_size: int | None = None) -> int:
    """Largest total of the framed ParamsStart and ParamsChunks for ``num_params`` floats.

    ``chunk_size`` None means the automatic size (``auto_chunk_size``). ParamsStart: u32
    length, the map with its keys and type tag, the 24-byte header and two ints (under
    START_FRAME_BOUND). Each ParamsChunk: u32 length, a 1-key map plus type tag,
    a bin header and the sealed chunk (CHUNK_FRAME_OVERHEAD + ABYTES + plaintext bytes).
    """
    plaintext = params_plaintext_bound(num_params)
    chunk = auto_chunk_size(plaintext) if chunk_size is None else chunk_size
    chunks = max(1, -(-plaintext // chunk))
    return START_FRAME_BOUND + plaintext + chunks * (CHUNK_FRAME_OVERHEAD + SECRETSTREAM_ABYTES)


# Longest params_header: fixmap, the keys, "i8b256", two uint64s and a bin32 header (48 bytes).
MAX_HEADER_LEN = _OVERHEAD_BOUND


def _packed(obj: Any) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


def params_header(n: int, step: int, dtype: str = WIRE_DTYPE) -> bytes:
    """The encoding of ``{"dtype": dtype, "n": n, "step": step, "data": <data bytes>}`` up to
    and including the bin header of ``data``: byte for byte what msgpack writes before the
    data bytes (keys in order, smallest int and bin formats)."""
    size = encoded_size(n, MODE_OF_DTYPE[dtype])
    return (b"\x84" + _packed("dtype") + _packed(dtype) + _packed("n") + _packed(n)
            + _packed("step") + _packed(step) + _packed("data")
            + _bin_header(size))


def _bin_header(length: int) -> bytes:
    if length < 1 << 8:
        return b"\xc4" + length.to_bytes(1, "big")
    if length < 1 << 16:
        return b"\xc5" + length.to_bytes(2, "big")
    return b"\xc6" + length.to_bytes(4, "big")


def parse_params_header(header: bytes, n: int, dtype: str = WIRE_DTYPE) -> int | None:
    """The step of ``header`` if it is exactly ``params_header(n, step, dtype)`` for a valid
    step, else None (then the payload is some other msgpack, which ``decode_params`` judges)."""
    head = b"\x84" + _packed("dtype") + _packed(dtype) + _packed("n") + _packed(n) \
        + _packed("step")
    tail = _packed("data") + _bin_header(encoded_size(n, MODE_OF_DTYPE[dtype]))
    if len(header) <= len(head) + len(tail):
        return None
    if not (header.startswith(head) and header.endswith(tail)):
        return None
    middle = header[len(head) : len(header) - len(tail)]
    try:
        step = msgpack.unpackb(middle)
    except Exception:
        return None
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
        return None
    return step if _packed(step) == middle else None


def check_params(flat: npt.NDArray[Any], step: int) -> npt.NDArray[Any]:
    """Validate what a sender may send; returns the vector as a 1-D array."""
    arr = np.asarray(flat)
    if arr.ndim != 1:
        raise ValueError(f"parameters must be a flat vector, got shape {arr.shape}")
    if arr.dtype.kind != "f" or arr.dtype.itemsize != 4:
        raise ValueError(f"parameters must be float32, got {arr.dtype}")
    if not 1 <= arr.size <= MAX_NUM_PARAMS:
        raise ValueError("parameter count out of range")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
        raise ValueError("step must be an int in 0..2**63-1")
    if not all_finite(arr):
        raise ValueError("refusing to send non-finite parameters")
    return arr


def wire_view(arr: npt.NDArray[Any]) -> memoryview:
    """The little-endian float32 bytes of a checked vector: a view, copied only when the array
    is not already contiguous '<f4'."""
    return np.ascontiguousarray(arr, dtype=WIRE_DTYPE).data.cast("B")


def all_finite(arr: npt.NDArray[Any], block: int = 1 << 18) -> bool:
    """np.isfinite(arr).all() in blocks, so the check allocates no model-sized mask."""
    flat = arr.reshape(-1)
    return all(bool(np.isfinite(flat[i : i + block]).all()) for i in range(0, flat.size, block))


def payload_parts(flat: npt.NDArray[Any], step: int, encoding: str = "none",
                  num_params: int | None = None) -> tuple[bytes, memoryview]:
    """(header, data bytes) of a payload in ``encoding`` ("none", "bf16", "int8").

    ``flat`` is either the float32 vector (encoded here; "none" sends a view of it) or, for
    a sender that encoded it itself (error feedback), the uint8 buffer of
    ``protocol.quant.encode``; that one is validated, not re-encoded. ``num_params`` (the
    float32 count; required for a uint8 buffer) must match. Local misuse is ValueError."""
    if encoding not in WIRE_DTYPES:
        raise ValueError(f"unknown encoding {encoding!r}; one of {', '.join(WIRE_DTYPES)}")
    arr = np.asarray(flat)
    if arr.dtype == np.uint8:
        if num_params is None or not 1 <= num_params <= MAX_NUM_PARAMS:
            raise ValueError("an encoded buffer needs num_params in range")
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
            raise ValueError("step must be an int in 0..2**63-1")
        buf = quant.check_encoded(np.ascontiguousarray(arr), num_params, encoding)
        data = buf.data.cast("B")
        n = num_params
    else:
        arr = check_params(arr, step)
        n = int(arr.size)
        if num_params is not None and n != num_params:
            raise ValueError(f"expected {num_params} parameters")
        data = wire_view(arr) if encoding == "none" else quant.encode(arr, encoding).data
    return params_header(n, step, WIRE_DTYPES[encoding]), data


def encode_params(flat: npt.NDArray[Any], step: int, encoding: str = "none") -> bytes:
    """Encode a 1-D float32 vector and the sender's training step as one bytes object."""
    header, data = payload_parts(flat, step, encoding)
    return header + bytes(data)


def decode_payload(data: npt.NDArray[np.uint8], n: int, dtype: str) -> npt.NDArray[np.float32]:
    """The float32 values of a payload's data bytes (size already checked by the caller's
    header match). "<f4" returns a view of ``data`` when it is 4-byte aligned."""
    mode = MODE_OF_DTYPE[dtype]
    if mode == "none":
        arr = data.view(WIRE_DTYPE)
        if not all_finite(arr):
            raise DecodeError("params contain NaN or Inf")
        return arr.astype(np.float32, copy=False)
    try:
        return quant.decode(data, n, mode)
    except ValueError as exc:
        raise DecodeError(f"params data: {exc}") from None


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
    dtype = body.get("dtype")
    if not isinstance(dtype, str) or dtype not in MODE_OF_DTYPE:
        raise DecodeError(f"params dtype must be one of {', '.join(MODE_OF_DTYPE)}")
    n = _int_field(body, "n", MAX_NUM_PARAMS)
    step = _int_field(body, "step", MAX_STEP)
    if n != expected_n:
        raise SpecMismatch(f"peer sent {n} parameters, we have {expected_n}")
    data = body.get("data")
    size = encoded_size(n, MODE_OF_DTYPE[dtype])
    if not isinstance(data, bytes) or len(data) != size:
        raise DecodeError(f"{dtype} params data must be exactly {size} bytes for n = {n}")
    # frombuffer is read-only and borrows `data`; the float32 result must be a writable copy.
    arr = decode_payload(np.frombuffer(data, dtype=np.uint8), n, dtype)
    return (arr.copy() if not arr.flags.writeable else arr), step
