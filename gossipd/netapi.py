"""What the daemon needs from a transport, as typing Protocols, plus framed message I/O.

Rules:
- The daemon talks to `Transport` and `Stream` only; gossipd/transport.py implements them over
  libp2p and tests/fakes.py implements them in memory. Nothing else imports libp2p.
- Peer IDs are the base58 strings libp2p prints (12D3KooW...); `peer_id_bytes` gives the binary
  form that the wire protocol signs over.
- Every transport failure surfaces as TransportError, so callers catch one type.
- Framed reads never trust EOF: a frame is complete only when its length prefix is satisfied.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from protocol.framing import DEFAULT_MAX_FRAME, FrameDecoder
from protocol.messages import Message, from_wire

# Bytes asked for per read: a few ~1 MiB parameter frames. Every read is a trip through the
# transport's Python, and over libp2p a read that can take all a stream has buffered gets that
# buffer without a copy (gossipd.transport.BulkYamuxStream). Bounds what one read adds to the
# decoder's buffer.
READ_CHUNK = 4 << 20


class TransportError(Exception):
    """A dial, stream open, read or write failed (peer gone, reset, refused)."""


class Stream(Protocol):
    @property
    def remote_peer(self) -> str: ...

    async def send_all(self, data: bytes | bytearray) -> None: ...

    async def receive_some(self, max_bytes: int) -> bytes | bytearray:
        """Return up to max_bytes; b"" at end of stream. A bytearray returned is the caller's
        (the stream keeps no reference to it)."""
        ...

    async def aclose(self) -> None: ...

    async def reset(self) -> None: ...


StreamHandler = Callable[[Stream], Awaitable[None]]


class Transport(Protocol):
    @property
    def peer_id(self) -> str: ...

    def peer_id_bytes(self, peer_id: str) -> bytes: ...

    def listen_addrs(self) -> list[str]: ...

    def set_handler(self, protocol_id: str, handler: StreamHandler) -> None: ...

    async def connect(self, peer_id: str, addrs: Sequence[str]) -> None: ...

    async def open_stream(self, peer_id: str, protocol_id: str) -> Stream: ...

    def is_connected(self, peer_id: str) -> bool: ...

    async def disconnect(self, peer_id: str) -> None:
        """Close every connection to the peer (the next stream redials)."""
        ...


class MessageStream:
    """Length-prefixed protocol messages over a Stream, counting bytes both ways."""

    def __init__(self, stream: Stream, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.stream = stream
        self._decoder = FrameDecoder(max_frame)
        self.bytes_sent = 0
        self.bytes_received = 0

    async def send(self, frame: bytes | bytearray) -> None:
        await self.stream.send_all(frame)
        self.bytes_sent += len(frame)

    async def receive(self) -> Message:
        """Next message; raises TransportError on EOF before a whole frame arrived."""
        while True:
            body = self._decoder.next_frame()
            if body is not None:
                return from_wire(body)
            data = await self.stream.receive_some(READ_CHUNK)
            if not data:
                raise TransportError(
                    f"stream from {self.stream.remote_peer} ended mid-message "
                    f"({self._decoder.buffered} bytes buffered)"
                )
            self.bytes_received += len(data)
            self._decoder.feed(data, take=isinstance(data, bytearray))
