"""Length-prefixed msgpack framing (sans-io).

Wire format of one frame::

    +----------------------+-------------------------------------+
    | length: u32 big-end. | body: msgpack map with str keys     |
    +----------------------+-------------------------------------+

Rules (see PROTOCOL.md, "Framing"):
  * ``length`` counts body bytes only, must be >= 1 and <= the receiver's limit.
    A too-large header raises FrameTooLarge immediately, before buffering the body.
  * The body must decode to exactly one msgpack map whose keys are all ``str``;
    trailing bytes inside a frame are an error.
  * Only nil, bool, int, float, str (valid UTF-8), bin, array and map may appear.
    Ext types (including the built-in timestamp ext) are rejected, because nothing
    in the protocol needs them and they widen the attack surface.
  * Nesting depth is capped (MAX_DEPTH) so decoding and validation stay shallow.
  * After a decode error the decoder is poisoned: the stream's framing can no
    longer be trusted, so every later call raises again (like h11's ERROR state).
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from .errors import DecodeError, FrameTooLarge, LimitExceeded, ProtocolError

__all__ = [
    "DEFAULT_MAX_FRAME",
    "HEADER_SIZE",
    "MAX_CONTAINER_LEN",
    "MAX_DEPTH",
    "FrameDecoder",
    "check_plain_tree",
    "encode_frame",
    "safe_unpackb",
]

# The largest message is one ParamsChunk: 1 MiB of plaintext, 17 bytes of tag, ~20 of framing.
DEFAULT_MAX_FRAME: int = (1 << 20) + 1024
HEADER_SIZE = 4
# Largest value the u32 header can express.
_U32_MAX = 0xFFFFFFFF
# No message needs more than a few thousand list items or map keys; bound them so a
# tiny body cannot announce a huge container.
MAX_CONTAINER_LEN = 4096
# Deepest legal message: PeersResponse -> peers list -> PeerRecord map -> addrs list.
MAX_DEPTH = 4

_HEADER = struct.Struct(">I")


def _reject_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack ext type {code} is not allowed")


def safe_unpackb(data: bytes | bytearray | memoryview, *, max_len: int | None = None) -> Any:
    """Decode one msgpack object with strict limits; DecodeError on anything odd.

    ``max_len`` bounds str/bin lengths (defaults to ``len(data)``, which no honest
    encoding can exceed anyway). Any exception from msgpack becomes DecodeError:
    msgpack raises a zoo of types (ValueError, ExtraData, FormatError, StackError,
    UnicodeDecodeError, TypeError) and none of them may escape to the caller.
    """
    limit = len(data) if max_len is None else max_len
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=_reject_ext,
            max_str_len=limit,
            max_bin_len=limit,
            max_array_len=MAX_CONTAINER_LEN,
            max_map_len=MAX_CONTAINER_LEN,
            max_ext_len=0,
        )
    except ProtocolError:
        raise
    except Exception as exc:
        raise DecodeError(f"invalid msgpack: {type(exc).__name__}: {exc}") from None
    check_plain_tree(obj)
    return obj


def check_plain_tree(obj: Any, depth: int = 0) -> None:
    """Reject types msgpack may produce that the protocol does not allow.

    Catches e.g. ``msgpack.Timestamp`` (decoded without consulting ext_hook),
    bytes map keys (allowed by strict_map_key) and excessive nesting.
    """
    if depth > MAX_DEPTH:
        raise DecodeError("msgpack nesting too deep")
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return
    if isinstance(obj, list):
        for item in obj:
            check_plain_tree(item, depth + 1)
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise DecodeError("map keys must be str")
            check_plain_tree(value, depth + 1)
        return
    raise DecodeError(f"msgpack type {type(obj).__name__} is not allowed")


def encode_frame(body: dict[str, Any]) -> bytes:
    """Pack ``body`` (a str-keyed map) and prefix it with its u32 length."""
    if not isinstance(body, dict) or not all(isinstance(k, str) for k in body):
        raise TypeError("frame body must be a dict with str keys")
    payload: bytes = msgpack.packb(body, use_bin_type=True)
    if len(payload) > _U32_MAX:
        raise LimitExceeded("frame body does not fit a u32 length header")
    return _HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Incremental decoder: feed() arbitrary byte chunks, pull frames out.

    Holds at most one partial frame plus whatever was fed after it; the caller
    controls memory by not feeding more while ``next_frame()`` yields frames.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if not 1 <= max_frame <= _U32_MAX:
            raise ValueError("max_frame must be in 1..2**32-1")
        self._max_frame = max_frame
        self._buf = bytearray()
        self._error: ProtocolError | None = None

    @property
    def max_frame(self) -> int:
        return self._max_frame

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview, *, take: bool = False) -> None:
        """Buffer ``data``. With ``take=True`` a bytearray becomes the decoder's own (and is
        modified) instead of being copied, when nothing else is buffered."""
        if self._error is not None:
            raise DecodeError(f"decoder is unusable after an earlier error: {self._error}")
        if take and not self._buf and isinstance(data, bytearray):
            self._buf = data
        else:
            self._buf += data

    def next_frame(self) -> dict[str, Any] | None:
        """Return the next complete frame body, or None if more bytes are needed."""
        if self._error is not None:
            raise DecodeError(f"decoder is unusable after an earlier error: {self._error}")
        try:
            return self._next()
        except ProtocolError as exc:
            self._error = exc
            raise

    def _next(self) -> dict[str, Any] | None:
        if len(self._buf) < HEADER_SIZE:
            return None
        (length,) = _HEADER.unpack_from(self._buf, 0)
        if length > self._max_frame:
            raise FrameTooLarge(f"frame of {length} bytes exceeds limit {self._max_frame}")
        if length == 0:
            raise DecodeError("empty frame")
        end = HEADER_SIZE + length
        if len(self._buf) < end:
            return None
        # Decode from a view of the buffer (msgpack copies out only str/bin values), and release
        # the view before the buffer is resized.
        with memoryview(self._buf)[HEADER_SIZE:end] as view:
            body = safe_unpackb(view)
        del self._buf[:end]
        if not isinstance(body, dict):
            raise DecodeError(f"frame body must be a map, got {type(body).__name__}")
        return body
