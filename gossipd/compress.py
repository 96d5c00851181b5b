"""Compression of the parameters a node sends in an averaging exchange (pure numpy).

Modes (config key ``averaging.compression``): "none" (float32), "bf16" (round-to-nearest-even
bfloat16, 2 bytes a value) and "int8" (blocks of INT8_BLOCK values, one float32 scale per
block, symmetric int8 in [-127, 127]; 4 * ceil(n / 256) + n bytes). The codec itself and its
byte layouts live in ``protocol.quant`` (the wire format is the protocol's); this module adds
error feedback, kept by the node between exchanges.

Rules:
  * Each sender picks its own mode; a receiver decodes whatever valid encoding arrives, so
    nodes with different settings still average with each other (no negotiation).
  * Error feedback (optax-like, pure): the encoder compresses ``x + residual``; the sent,
    dequantized value is ``x_hat = decode(encode(x + residual))``; the new residual is
    ``(x + residual) - x_hat``. Mode "none" keeps no residual.
  * The merge on BOTH sides uses the dequantized vectors, what was actually sent:
    ``C + w * (R_hat - S_hat)``, where S_hat is this node's sent x_hat and R_hat the peer's.
    The pair's sum then changes by w * (R_hat - S_hat) + w * (S_hat - R_hat) = 0, exactly,
    whatever the compression error. Merging with S_hat instead of S moves the node by
    ``w * (S - S_hat) = w * (residual_new - residual_old)``, which telescopes over exchanges:
    with error feedback the total drift stays bounded by w * |residual| instead of adding up.
  * The receipt hash of the sent vector is taken over x_hat (the receiver hashes the same
    decoded float32 values).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from protocol.quant import INT8_BLOCK, MODES, WIRE_DTYPES, decode, encode, encoded_size, roundtrip

__all__ = [
    "INT8_BLOCK",
    "MODES",
    "EFState",
    "ErrorFeedback",
    "decode",
    "ef_compress",
    "ef_init",
    "encode",
    "encoded_size",
    "roundtrip",
    "wire_dtype",
]

F32 = npt.NDArray[np.float32]


def wire_dtype(mode: str) -> str:
    """The params ``dtype`` string a sender of ``mode`` puts on the wire."""
    if mode not in MODES:
        raise ValueError(f"unknown compression mode {mode!r}")
    return WIRE_DTYPES[mode]


class EFState(NamedTuple):
    """Error-feedback state: what compression left out so far (None: nothing yet)."""

    residual: F32 | None


def ef_init() -> EFState:
    return EFState(residual=None)


def ef_compress(state: EFState, x: npt.ArrayLike,
                mode: str) -> tuple[npt.NDArray[np.uint8], F32, EFState]:
    """Compress ``x`` with error feedback -> (encoded buffer, dequantized x_hat, new state).

    Neither ``x`` nor ``state.residual`` is modified. For "none" the buffer may view ``x``'s
    bytes and x_hat is ``x`` as float32 (no copy when it already is)."""
    arr = np.asarray(x)
    if mode not in MODES:
        raise ValueError(f"unknown compression mode {mode!r}")
    if arr.ndim != 1 or arr.dtype != np.float32:
        raise ValueError("ef_compress takes a flat float32 vector")
    if mode == "none":
        return encode(arr, "none"), arr, EFState(residual=None)
    if state.residual is None:
        target = arr.copy()
    elif state.residual.shape != arr.shape:
        raise ValueError(f"residual has shape {state.residual.shape}, vector {arr.shape}")
    else:
        target = arr + state.residual
    buf = encode(target, mode)
    x_hat = decode(buf, int(arr.size), mode)
    np.subtract(target, x_hat, out=target)  # target is ours: it becomes the new residual
    return buf, x_hat, EFState(residual=target)


class ErrorFeedback:
    """The mutable holder a node keeps: one EFState, advanced by each exchange it sends in.

    Calling it is the LocalModel ``compress`` hook: vector -> (encoded, dequantized). The
    state advances when a snapshot is encoded, also for an exchange that fails later: the
    residual stays bounded either way (at most half a quantization step per value), only
    that exchange's share of the telescoping sum is lost. Exchanges run on the trio thread
    and the call does not yield, so concurrent exchanges advance it one after the other."""

    def __init__(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown compression mode {mode!r}")
        self.mode = mode
        self.state = ef_init()

    @property
    def dtype(self) -> str:
        return WIRE_DTYPES[self.mode]

    def __call__(self, x: npt.ArrayLike) -> tuple[npt.NDArray[np.uint8], F32]:
        buf, x_hat, self.state = ef_compress(self.state, x, self.mode)
        return buf, x_hat
