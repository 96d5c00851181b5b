"""Payload codecs for flat float32 parameter vectors: "none", "bf16", "int8" (pure numpy).

Every codec maps ``n`` float32 values to a fixed, size-determined little-endian byte buffer
(``encoded_size``) and back. The layouts (normative, PROTOCOL.md "Parameter encodings"):

  * ``none`` (wire dtype ``"<f4"``): the 4n float32 bytes themselves.
  * ``bf16`` (wire dtype ``"bf16"``): 2n bytes, one uint16 per value: the top 16 bits of the
    float32, rounded to nearest, ties to even. A finite value whose rounding would reach
    infinity (|x| above the largest bfloat16, ~3.39e38) saturates to the largest finite
    bfloat16 of the same sign, so a finite vector always encodes to finite values.
  * ``int8`` (wire dtype ``"i8b256"``): blocks of INT8_BLOCK consecutive values (the last one
    may be short). 4 * ceil(n / 256) bytes of float32 scales, one per block, then the n int8
    values. scale = max|x| / 127 of the block (0 for an all-zero block), capped at
    INT8_MAX_SCALE; q = round-half-even(x / scale) clipped to [-127, 127] (0 where scale is
    0); the decoded value is float32(q) * scale.

Rules:
  * Decoding never produces NaN or Inf: a buffer that would decode to one is rejected
    (ValueError): a bf16 value with an all-ones exponent, an int8 scale that is NaN, Inf,
    negative (sign bit set) or above INT8_MAX_SCALE, the int8 value -128 (not symmetric),
    a "none" payload with a non-finite float. 127 * INT8_MAX_SCALE < float32 max, so a valid
    scale times a valid q is always finite.
  * Encoding refuses non-finite input (ValueError): a sender must notice its own divergence.
  * The work is done in segments of SEGMENT values, so no model-sized temporary is made
    beyond the output buffers.
  * Decoding is deterministic and exact (one float32 multiply per int8 value), so the sender's
    ``decode(encode(x))`` is bit for bit what the receiver gets: both sides can hash it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "INT8_BLOCK",
    "INT8_MAX_SCALE",
    "MODES",
    "MODE_OF_DTYPE",
    "WIRE_DTYPES",
    "check_encoded",
    "decode",
    "encode",
    "encoded_size",
    "roundtrip",
]

MODES = ("none", "bf16", "int8")
# Wire dtype string of each mode (the "dtype" field of the params plaintext).
WIRE_DTYPES = {"none": "<f4", "bf16": "bf16", "int8": "i8b256"}
MODE_OF_DTYPE = {dtype: mode for mode, dtype in WIRE_DTYPES.items()}

INT8_BLOCK = 256
INT8_MAX_SCALE = float(2.0**120)  # 127 * 2**120 < 2**127 < float32 max: products stay finite
SEGMENT = INT8_BLOCK * 1024  # values per processing step (a multiple of the block)

_F32 = np.dtype("<f4")
_U16 = np.dtype("<u2")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown compression mode {mode!r}; one of {', '.join(MODES)}")


def int8_blocks(n: int) -> int:
    """Number of int8 blocks (and scales) for ``n`` values."""
    return -(-n // INT8_BLOCK)


def encoded_size(n: int, mode: str) -> int:
    """Exact byte count of the encoding of ``n`` float32 values in ``mode``."""
    _check_mode(mode)
    if n < 0:
        raise ValueError("n must be >= 0")
    if mode == "none":
        return 4 * n
    if mode == "bf16":
        return 2 * n
    return 4 * int8_blocks(n) + n


def _as_vector(x: npt.ArrayLike) -> npt.NDArray[np.float32]:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"expected a flat vector, got shape {arr.shape}")
    if arr.dtype.kind != "f" or arr.dtype.itemsize != 4:
        raise ValueError(f"expected float32, got {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=_F32)


def encode(x: npt.ArrayLike, mode: str) -> npt.NDArray[np.uint8]:
    """Encode a flat float32 vector -> 1-D uint8 buffer of ``encoded_size(x.size, mode)``.

    For "none" the result is a view of ``x``'s bytes when ``x`` is contiguous '<f4'."""
    _check_mode(mode)
    arr = _as_vector(x)
    n = int(arr.size)
    out = np.empty(encoded_size(n, mode), dtype=np.uint8)
    if mode == "none":
        for lo in range(0, n, SEGMENT):
            if not np.isfinite(arr[lo : lo + SEGMENT]).all():
                raise ValueError("refusing to encode non-finite values")
        return arr.view(np.uint8)
    if mode == "bf16":
        _encode_bf16(arr, out.view(_U16))
    else:
        nb = int8_blocks(n)
        _encode_int8(arr, out[: 4 * nb].view(_F32), out[4 * nb :].view(np.int8))
    return out


def _encode_bf16(arr: npt.NDArray[np.float32], out: npt.NDArray[np.uint16]) -> None:
    for lo in range(0, arr.size, SEGMENT):
        bits = arr[lo : lo + SEGMENT].view(np.uint32)
        if ((bits & 0x7F800000) == 0x7F800000).any():
            raise ValueError("refusing to encode non-finite values")
        # Round to nearest, ties to even: add 0x7FFF plus the lowest kept bit, then truncate.
        # No wrap-around: the largest finite pattern 0xFF7FFFFF + 0x8000 < 2**32.
        rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
        top = rounded.astype(np.uint16)
        overflow = (top & 0x7F80) == 0x7F80
        if overflow.any():  # finite input rounded to Inf: saturate to the largest bf16
            top[overflow] = (top[overflow] & 0x8000) | 0x7F7F
        out[lo : lo + SEGMENT] = top


def _encode_int8(arr: npt.NDArray[np.float32], scales: npt.NDArray[np.float32],
                 q: npt.NDArray[np.int8]) -> None:
    n = arr.size
    for lo in range(0, n, SEGMENT):
        seg = arr[lo : lo + SEGMENT]
        full = seg.size // INT8_BLOCK * INT8_BLOCK
        blocks = [seg[:full].reshape(-1, INT8_BLOCK)] if full else []
        if full < seg.size:  # the short last block, as its own 1-row matrix
            blocks.append(seg[full:].reshape(1, -1))
        b0 = lo // INT8_BLOCK
        pos = lo
        for mat in blocks:
            amax = np.abs(mat).max(axis=1)
            if not np.isfinite(amax).all():
                raise ValueError("refusing to encode non-finite values")
            scale = np.minimum(amax / np.float32(127), np.float32(INT8_MAX_SCALE))
            # Divide (not multiply by 1/scale): 1/scale overflows for subnormal scales.
            col = scale[:, None]
            qm = np.divide(mat, col, out=np.zeros(mat.shape, np.float32), where=col > 0)
            np.rint(qm, out=qm)
            np.clip(qm, -127, 127, out=qm)
            q[pos : pos + mat.size] = qm.reshape(-1).astype(np.int8)
            scales[b0 : b0 + mat.shape[0]] = scale
            b0 += mat.shape[0]
            pos += mat.size


def _as_buffer(buf: Any) -> npt.NDArray[np.uint8]:
    if isinstance(buf, np.ndarray):
        if buf.dtype != np.uint8 or buf.ndim != 1:
            raise ValueError("encoded buffer must be a 1-D uint8 array")
        return buf
    return np.frombuffer(buf, dtype=np.uint8)


def decode(buf: Any, n: int, mode: str,
           out: npt.NDArray[np.float32] | None = None) -> npt.NDArray[np.float32]:
    """Decode ``encode`` output of ``n`` values -> float32 (written into ``out`` if given).

    Raises ValueError on a wrong buffer size or anything that would decode to NaN/Inf."""
    _check_mode(mode)
    data = _as_buffer(buf)
    if data.size != encoded_size(n, mode):
        raise ValueError(f"{mode} payload of {n} values must be {encoded_size(n, mode)} bytes, "
                         f"got {data.size}")
    if out is None:
        out = np.empty(n, dtype=np.float32)
    elif out.shape != (n,) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError("out must be a contiguous float32 vector of n values")
    if mode == "none":
        out[:] = data.view(_F32)
        for lo in range(0, n, SEGMENT):
            if not np.isfinite(out[lo : lo + SEGMENT]).all():
                raise ValueError("payload contains NaN or Inf")
    elif mode == "bf16":
        _decode_bf16(data.view(_U16), out)
    else:
        nb = int8_blocks(n)
        _decode_int8(data[: 4 * nb].view(_F32), data[4 * nb :].view(np.int8), out)
    return out


def check_encoded(buf: Any, n: int, mode: str) -> npt.NDArray[np.uint8]:
    """Validate an encoding of ``n`` values without decoding it (what a sender of a buffer
    encoded elsewhere checks): the same rules as ``decode``, ValueError on any breach.
    Returns the buffer as a 1-D uint8 array."""
    _check_mode(mode)
    data = _as_buffer(buf)
    if data.size != encoded_size(n, mode):
        raise ValueError(f"{mode} payload of {n} values must be {encoded_size(n, mode)} bytes, "
                         f"got {data.size}")
    if mode == "none":
        vals = data.view(_F32)
        bad = any(not np.isfinite(vals[lo : lo + SEGMENT]).all() for lo in range(0, n, SEGMENT))
    elif mode == "bf16":
        top = data.view(_U16)
        bad = any(((top[lo : lo + SEGMENT] & 0x7F80) == 0x7F80).any()
                  for lo in range(0, n, SEGMENT))
    else:
        nb = int8_blocks(n)
        _check_scales(data[: 4 * nb].view(_F32))
        q = data[4 * nb :].view(np.int8)
        bad = any((q[lo : lo + SEGMENT] == -128).any() for lo in range(0, n, SEGMENT))
    if bad:
        raise ValueError(f"{mode} payload would decode to NaN/Inf or holds int8 -128")
    return data


def _check_scales(scales: npt.NDArray[np.float32]) -> None:
    # NaN fails the <= test; a set sign bit covers -0.0 and negative scales.
    if not ((scales <= np.float32(INT8_MAX_SCALE)).all()
            and not (scales.view(np.uint32) >> 31).any()):
        raise ValueError("int8 scales must be finite, >= 0 and <= 2**120")


def _decode_bf16(top: npt.NDArray[np.uint16], out: npt.NDArray[np.float32]) -> None:
    bits = out.view(np.uint32)
    for lo in range(0, top.size, SEGMENT):
        seg = top[lo : lo + SEGMENT]
        if ((seg & 0x7F80) == 0x7F80).any():
            raise ValueError("bf16 payload contains NaN or Inf")
        np.left_shift(seg.astype(np.uint32), 16, out=bits[lo : lo + SEGMENT])


def _decode_int8(scales: npt.NDArray[np.float32], q: npt.NDArray[np.int8],
                 out: npt.NDArray[np.float32]) -> None:
    _check_scales(scales)
    n = q.size
    for lo in range(0, n, SEGMENT):
        seg = q[lo : lo + SEGMENT]
        if (seg == -128).any():
            raise ValueError("int8 value -128 is not allowed (symmetric range)")
        full = seg.size // INT8_BLOCK * INT8_BLOCK
        b0 = lo // INT8_BLOCK
        nfull = full // INT8_BLOCK
        if full:
            np.multiply(seg[:full].reshape(-1, INT8_BLOCK), scales[b0 : b0 + nfull, None],
                        out=out[lo : lo + full].reshape(-1, INT8_BLOCK), dtype=np.float32)
        if full < seg.size:
            np.multiply(seg[full:], scales[b0 + nfull], out=out[lo + full : lo + seg.size],
                        dtype=np.float32)


def roundtrip(x: npt.ArrayLike, mode: str) -> npt.NDArray[np.float32]:
    """``decode(encode(x, mode))``: the value a receiver gets (a copy, also for "none")."""
    arr = _as_vector(x)
    return decode(encode(arr, mode), int(arr.size), mode)
