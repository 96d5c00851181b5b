"""The libp2p transport: the only module in gossipd that imports libp2p.

Facts this module works around (measured on py-libp2p 0.8.1, see the project notes):
- The default host also accepts /plaintext/2.0.0, which lets anyone who knows a public key
  impersonate that peer. We offer Noise only.
- Leaving `host.run()` does not close the listener; `host.close()` must always be awaited.
- A peer that failed to dial sits in a 60 s negative cache; the daemon's peer table does its own
  backoff, so each explicit dial first clears that cache entry.
- libp2p never times out a frozen peer: callers wrap every call here in a trio deadline.
- libp2p logs routine dial failures at ERROR; those are quietened in gossipd/main.py.
- Bulk data crawls through py-libp2p's Noise and yamux layers in 64 KiB pieces; the classes in
  "the bulk data path" below change that without changing the wire (section comment there).
"""

from __future__ import annotations

import contextlib
import logging
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import trio
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from libp2p import new_host
from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_pair
from libp2p.custom_types import TProtocol
from libp2p.io.exceptions import IncompleteReadError
from libp2p.network.connection.exceptions import RawConnError
from libp2p.network.stream.exceptions import StreamError
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.exceptions import HandshakeFailure
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.security.secure_session import SecureSession
from libp2p.stream_muxer.exceptions import MuxedStreamError
from libp2p.stream_muxer.yamux.yamux import (
    TYPE_DATA,
    YAMUX_HEADER_FORMAT,
    Yamux,
    YamuxStream,
)
from multiaddr import Multiaddr

from gossipd.netapi import StreamHandler, TransportError

NOISE_PROTOCOL_ID = "/noise"
DISCONNECT_TIMEOUT_S = 2.0  # closing a stalled connection may itself stall

log = logging.getLogger("gossipd.transport")


PeerFilter = Callable[[str], bool]


# ------------------------------------------------------------------ the bulk data path
#
# py-libp2p 0.8.1 moves stream bytes through several Python layers, each with per-call costs and
# copies: 64 KiB yamux frames, each split into two Noise messages, each read with two socket
# reads and written with its own socket write; a 256 KiB initial window that grows only as the
# reader drains it, with writers out of window polling every 10 ms; and about nine copies of
# every received byte. An averaging exchange of 100 MiB each way ran at ~25 MB/s, 0.37x the same
# exchange over a plain TCP socket (scripts/bench_exchange.py, 2 cores). The classes below change
# what we control, all wire-compatible with any libp2p peer (frame and message boundaries are the
# sender's choice; windows only grow):
#   * BufferedNoiseSession: reads the socket in 256 KiB blocks and parses Noise messages out of
#     that buffer; seals all messages of one write into one buffer and one socket write;
#     ChaCha20-Poly1305 straight from and into caller buffers (cryptography's *_into).
#   * BulkYamuxStream: DATA frames of up to 1 MiB, a 16 MiB receive window granted as soon as a
#     stream exists, reads that hand over the stream's receive buffer instead of copying it.
#   * BulkYamux: a frame body is read with one call into the Noise session (py-libp2p's
#     read_exactly assembles and copies it twice).
# py-libp2p creates the connection and stream objects itself (its muxer negotiation instantiates
# Yamux directly), so ``tune_stream`` promotes each new stream, and its connection, to these
# subclasses; they add no state of their own that the originals would lack.

# Noise transport messages: u16 length prefix, at most 65535 bytes of ciphertext of which 16 are
# the Poly1305 tag (the Noise spec's limit, as in go-libp2p).
_NOISE_MAX_MESSAGE = 65535
_NOISE_TAG = 16
_NOISE_MAX_PLAINTEXT = _NOISE_MAX_MESSAGE - _NOISE_TAG
_NOISE_MAX_NONCE = 2**64 - 1
# One socket read takes up to this much ciphertext; short reads return what is there.
_RAW_READ = 1 << 18
# Largest yamux DATA frame we send (py-libp2p: 64 KiB); receivers accept frames up to their
# window (py-libp2p caps frames at 16 MiB).
BULK_FRAME = 1 << 20
# Receive window each stream grants its sender up front (py-libp2p starts at 256 KiB and grows
# only after reads): an exchange's frames never wait for a window update. It also bounds what a
# stream buffers when its reader stalls.
STREAM_WINDOW = 16 << 20
# A writer without window polls this often (py-libp2p: 10 ms) for at most WINDOW_WAIT_S, then
# fails like py-libp2p's writer.
_WINDOW_POLL_S = 0.001
WINDOW_WAIT_S = 5.0
# py-libp2p's deadline for the body of an announced DATA frame.
_DATA_BODY_TIMEOUT_S = 60.0
_YAMUX_HEADER = struct.Struct(YAMUX_HEADER_FORMAT)

BufferLike = bytes | bytearray | memoryview


class _NoiseCipher:
    """One direction of an established Noise session: ChaCha20-Poly1305 with empty associated
    data and the nonce 0^32 || u64le(n), n counting messages (the Noise spec; what
    noiseprotocol's CipherState does), taken over from the handshake's state."""

    def __init__(self, state: Any) -> None:
        self._aead = ChaCha20Poly1305(state.k)
        self._n: int = state.n

    def _nonce(self) -> bytes:
        if self._n >= _NOISE_MAX_NONCE:
            raise RawConnError("Noise nonce space exhausted")
        nonce = b"\0\0\0\0" + self._n.to_bytes(8, "little")
        self._n += 1
        return nonce

    def encrypt_into(self, plaintext: memoryview, out: memoryview) -> None:
        self._aead.encrypt_into(self._nonce(), plaintext, None, out)

    def decrypt_into(self, ciphertext: memoryview, out: memoryview) -> int:
        try:
            written: int = self._aead.decrypt_into(self._nonce(), ciphertext, None, out)
        except InvalidTag:
            # RawConnError makes yamux drop the connection (other errors it logs and reads on).
            raise RawConnError("Noise message failed authentication") from None
        return written


def _chacha_state(state: Any) -> bool:
    """Whether a noiseprotocol CipherState is the ChaCha20-Poly1305 one _NoiseCipher mirrors."""
    aead = getattr(getattr(state, "cipher", None), "cipher", None)
    return (isinstance(aead, ChaCha20Poly1305) and isinstance(getattr(state, "k", None), bytes)
            and isinstance(getattr(state, "n", None), int))


class BufferedNoiseSession(SecureSession):
    """py-libp2p's Noise session after the handshake, with buffered socket I/O; same wire format.

    Rules kept from the original: ``read(n)`` returns exactly n bytes unless the connection ends;
    an EOF raises IncompleteReadError (with nothing received between messages: what yamux treats
    as a clean close); a message that fails authentication ends the connection. Writes are
    serialised, so Noise nonces stay in wire order. Only yamux's receive loop reads.
    """

    def __init__(self, inner: SecureSession) -> None:
        super().__init__(
            local_peer=inner.local_peer,
            local_private_key=inner.local_private_key,
            remote_peer=inner.remote_peer,
            remote_permanent_pubkey=inner.remote_permanent_pubkey,
            is_initiator=inner.is_initiator,
            conn=inner.conn,
        )
        conn: Any = inner.conn
        proto = conn.noise_state.noise_protocol
        self._tx = _NoiseCipher(proto.cipher_state_encrypt)
        self._rx = _NoiseCipher(proto.cipher_state_decrypt)
        self._raw = conn.read_writer.read_write_closer
        self._cipher = bytearray()  # ciphertext read from the socket; unparsed from _cpos on
        self._cpos = 0
        self._plain = bytearray(_NOISE_MAX_PLAINTEXT)  # one message; unread: [_plo, _phi)
        self._plo = 0
        self._phi = 0
        self._write_lock = trio.Lock()

    @classmethod
    def wrap(cls, inner: Any) -> Any:
        """This session around a freshly handshaken py-libp2p Noise session, or ``inner`` itself
        when it is not the construction this class mirrors."""
        conn = getattr(inner, "conn", None)
        proto = getattr(getattr(conn, "noise_state", None), "noise_protocol", None)
        raw = getattr(getattr(conn, "read_writer", None), "read_write_closer", None)
        if (type(inner) is not SecureSession or proto is None or raw is None
                or not hasattr(ChaCha20Poly1305, "encrypt_into")  # cryptography >= 45
                or not _chacha_state(proto.cipher_state_encrypt)
                or not _chacha_state(proto.cipher_state_decrypt)):
            return inner
        return cls(inner)

    async def _fill_cipher(self, need: int) -> None:
        """Make at least ``need`` unparsed ciphertext bytes available."""
        while len(self._cipher) - self._cpos < need:
            if self._cpos:
                del self._cipher[: self._cpos]
                self._cpos = 0
            data = await self._raw.read(_RAW_READ)
            if not data:
                have = len(self._cipher)
                raise IncompleteReadError(
                    f"connection closed inside a Noise message ({have} of {need} bytes)",
                    expected_bytes=need, received_bytes=have,
                )
            self._cipher += data

    async def _next_length(self) -> int:
        """Ciphertext length of the next message, once all of it is buffered."""
        await self._fill_cipher(2)
        length = int.from_bytes(self._cipher[self._cpos : self._cpos + 2], "big")
        if length < _NOISE_TAG:
            raise RawConnError(f"Noise message of {length} bytes is shorter than its tag")
        await self._fill_cipher(2 + length)
        return length

    def _open_into(self, length: int, out: memoryview) -> int:
        """Decrypt the next message (``length`` bytes of ciphertext) into the front of ``out``."""
        start = self._cpos + 2
        with memoryview(self._cipher) as view:
            n = self._rx.decrypt_into(view[start : start + length], out[: length - _NOISE_TAG])
        self._cpos = start + length
        return n

    async def read_exact(self, n: int) -> bytearray:
        """Exactly ``n`` plaintext bytes; whole messages are decrypted straight into the
        result."""
        out = bytearray(n)
        with memoryview(out) as dst:
            pos = min(n, self._phi - self._plo)
            dst[:pos] = self._plain[self._plo : self._plo + pos]
            self._plo += pos
            while pos < n:  # each round consumes one message of the peer's
                length = await self._next_length()
                if length - _NOISE_TAG <= n - pos:
                    pos += self._open_into(length, dst[pos : pos + length - _NOISE_TAG])
                    continue
                with memoryview(self._plain) as plain:
                    self._phi = self._open_into(length, plain)
                take = n - pos
                dst[pos:] = self._plain[:take]
                self._plo = take
                pos = n
        return out

    async def read(self, n: int | None = None) -> bytes:
        if n == 0:
            return b""
        if n is not None:
            return bytes(await self.read_exact(n))
        while self._plo == self._phi:  # n=None: what the next message holds
            length = await self._next_length()
            with memoryview(self._plain) as plain:
                self._phi = self._open_into(length, plain)
            self._plo = 0
        data = bytes(self._plain[self._plo : self._phi])
        self._plo = self._phi
        return data

    async def write(self, data: BufferLike) -> None:
        await self.write_parts((data,))

    async def write_parts(self, parts: Sequence[BufferLike]) -> None:
        """Seal the concatenation of ``parts`` as Noise messages (each part starts a new one)
        and write them with one socket write."""
        views = [memoryview(p).cast("B") for p in parts]
        views = [v for v in views if v.nbytes] or [memoryview(b"")]
        pieces = [v[lo : lo + _NOISE_MAX_PLAINTEXT]
                  for v in views for lo in range(0, max(v.nbytes, 1), _NOISE_MAX_PLAINTEXT)]
        out = bytearray(sum(2 + p.nbytes + _NOISE_TAG for p in pieces))
        async with self._write_lock:
            with memoryview(out) as dst:
                pos = 0
                for piece in pieces:
                    clen = piece.nbytes + _NOISE_TAG
                    dst[pos : pos + 2] = clen.to_bytes(2, "big")
                    self._tx.encrypt_into(piece, dst[pos + 2 : pos + 2 + clen])
                    pos += 2 + clen
            await self._raw.write(out)


class BulkYamux(Yamux):
    """py-libp2p's yamux connection, reading a DATA frame's body with one call into a
    BufferedNoiseSession, and sending a frame's header and payload without joining them."""

    async def _read_data_body(self, length: int) -> Any:
        secured = self.secured_conn
        if not isinstance(secured, BufferedNoiseSession):
            return await super()._read_data_body(length)
        with trio.fail_after(_DATA_BODY_TIMEOUT_S):
            return await secured.read_exact(length)  # the loop only extends a buffer with it

    async def write_frame_parts(self, header: bytes, payload: memoryview) -> None:
        secured = self.secured_conn
        if not isinstance(secured, BufferedNoiseSession):
            await self._write_frame(header + payload)
            return
        async with self._write_lock:
            await secured.write_parts((header, payload))
        await trio.lowlevel.checkpoint()


class BulkYamuxStream(YamuxStream):
    """A yamux stream that sends DATA frames of up to BULK_FRAME bytes (whatever the window
    allows), grants its peer STREAM_WINDOW at once, and hands its receive buffer to a reader that
    takes all of it. Frames never exceed the send window, so any yamux peer accepts them."""

    async def grant_window(self) -> None:
        async with self.window_lock:
            extra = STREAM_WINDOW - self.recv_window
            if extra <= 0:
                return
            self.recv_window += extra
            self.target_recv_window = max(self.target_recv_window, STREAM_WINDOW)
        await self.send_window_update(extra)

    async def write(self, data: BufferLike) -> None:
        view = memoryview(data).cast("B")
        total = view.nbytes
        sent = 0
        waited_since: float | None = None
        while sent < total:  # each round sends a frame, or waits (bounded) for window
            async with self.rw_lock.write_lock():
                if self.send_closed:
                    raise MuxedStreamError("Stream is closed for sending")
                async with self.window_lock:
                    if self.closed:
                        raise MuxedStreamError("Stream is closed")
                    n = min(self.send_window, BULK_FRAME, total - sent)
                    if n > 0:
                        self.send_window -= n
            if n <= 0:
                now = trio.current_time()
                if waited_since is None:
                    waited_since = now
                elif now - waited_since > WINDOW_WAIT_S:
                    raise MuxedStreamError(
                        f"Timed out waiting for window update after {WINDOW_WAIT_S} seconds.")
                await trio.sleep(_WINDOW_POLL_S)
                continue
            waited_since = None
            header = _YAMUX_HEADER.pack(0, TYPE_DATA, 0, self.stream_id, n)
            payload = view[sent : sent + n]
            if isinstance(self.conn, BulkYamux):
                await self.conn.write_frame_parts(header, payload)
            else:
                await self.conn._write_frame(header + payload)
            sent += n

    async def read(self, n: int | None = -1) -> Any:
        if n is not None and n > 0:
            data = await self._take_buffer(n)
            if data is not None:
                await self._auto_tune_and_send_window_update(bytes_read=len(data))
                return data
        return await super().read(n)

    async def _take_buffer(self, n: int) -> bytearray | None:
        """All buffered bytes if there are some, at most ``n``, and nothing unusual is going on
        (py-libp2p's read path handles resets, EOF and shutdown); the stream gets a new empty
        buffer, so nothing is copied."""
        conn = self.conn
        async with conn.streams_lock:
            buf = conn.stream_buffers.get(self.stream_id)
            if (not buf or len(buf) > n or self.reset_received
                    or conn.event_shutting_down.is_set() or self.stream_id not in conn.streams):
                return None
            conn.stream_buffers[self.stream_id] = bytearray()
            if self.closed:  # drained a fully closed stream: drop its bookkeeping, as py-libp2p
                conn._finalize_stream_locked(self, fully_closed=True)
            return buf


async def tune_stream(raw: object) -> None:
    """Promote a new py-libp2p yamux stream and its connection to BulkYamuxStream / BulkYamux,
    and grant the stream's window. Other muxers, or subclasses we do not know, are left alone."""
    muxed = getattr(raw, "muxed_stream", None)
    if type(muxed) is YamuxStream:
        muxed.__class__ = BulkYamuxStream
        if type(muxed.conn) is Yamux:
            muxed.conn.__class__ = BulkYamux
    if isinstance(muxed, BulkYamuxStream):
        await muxed.grant_window()


class MemberOnlyNoise(NoiseTransport):
    """Noise that drops a connection right after the handshake unless the authenticated remote
    peer is a member. py-libp2p has no peer-ID gater; this refuses non-members in both directions
    before any stream (and so any handler) exists."""

    def __init__(self, *args: Any, allows: PeerFilter, on_refused: Callable[[str], None],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._allows = allows
        self._on_refused = on_refused

    async def _gate(self, secure_conn: Any) -> Any:
        remote = secure_conn.get_remote_peer().to_base58()
        if not self._allows(remote):
            self._on_refused(remote)
            with contextlib.suppress(Exception):
                await secure_conn.close()
            raise HandshakeFailure(f"peer {remote} is not a member of this swarm")
        return secure_conn

    async def secure_inbound(self, conn: Any) -> Any:
        return await self._gate(BufferedNoiseSession.wrap(await super().secure_inbound(conn)))

    async def secure_outbound(self, conn: Any, peer_id: Any) -> Any:
        return await self._gate(
            BufferedNoiseSession.wrap(await super().secure_outbound(conn, peer_id)))


class Libp2pStream:
    """A libp2p stream seen through gossipd.netapi.Stream."""

    def __init__(self, raw: object, remote_peer: str) -> None:
        self._raw: object = raw
        self._remote = remote_peer

    @property
    def remote_peer(self) -> str:
        return self._remote

    async def send_all(self, data: bytes | bytearray) -> None:
        try:
            await self._raw.write(data)  # type: ignore[attr-defined]
        except (StreamError, OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise TransportError(f"write to {self._remote} failed: {exc!r}") from exc

    async def receive_some(self, max_bytes: int) -> bytes | bytearray:
        try:
            data: bytes | bytearray = await self._raw.read(max_bytes)  # type: ignore[attr-defined]
        except EOFError:  # libp2p's StreamEOF subclasses EOFError
            return b""
        except (StreamError, OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise TransportError(f"read from {self._remote} failed: {exc!r}") from exc
        return data

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._raw.close()  # type: ignore[attr-defined]

    async def reset(self) -> None:
        with contextlib.suppress(Exception):
            await self._raw.reset()  # type: ignore[attr-defined]


class Libp2pTransport:
    """gossipd.netapi.Transport over a running libp2p host (TCP + Noise + Yamux)."""

    def __init__(self, host: object, allows: PeerFilter, on_refused: Callable[[str], None]
                 ) -> None:
        self._host: object = host
        self._peer_id: str = host.get_id().to_base58()  # type: ignore[attr-defined]
        self._allows = allows
        self._on_refused = on_refused

    @property
    def peer_id(self) -> str:
        return self._peer_id

    def peer_id_bytes(self, peer_id: str) -> bytes:
        try:
            return bytes(ID.from_base58(peer_id).to_bytes())
        except Exception as exc:
            raise TransportError(f"not a peer ID: {peer_id!r}") from exc

    def listen_addrs(self) -> list[str]:
        return [str(a) for a in self._host.get_addrs()]  # type: ignore[attr-defined]

    def set_handler(self, protocol_id: str, handler: StreamHandler) -> None:
        async def on_stream(raw: object) -> None:
            # Nothing may escape into libp2p: an exception here tears down the whole host.
            stream: Libp2pStream | None = None
            try:
                remote = raw.muxed_conn.peer_id.to_base58()  # type: ignore[attr-defined]
                stream = Libp2pStream(raw, remote)
                if not self._allows(remote):  # second line of defence after the Noise gate
                    self._on_refused(remote)
                    await stream.reset()
                    return
                await tune_stream(raw)
                await handler(stream)
            except Exception:
                log.exception("handler for %s failed", protocol_id)
                if stream is not None:
                    await stream.reset()

        self._host.set_stream_handler(protocol_id, on_stream)  # type: ignore[attr-defined]

    async def connect(self, peer_id: str, addrs: Sequence[str]) -> None:
        try:
            pid = ID.from_base58(peer_id)
            maddrs = [Multiaddr(a.split("/p2p/")[0]) for a in addrs]
        except Exception as exc:
            raise TransportError(f"bad peer address for {peer_id}: {exc}") from exc
        self._host.get_network().unblock_peer(pid)  # type: ignore[attr-defined]
        try:
            await self._host.connect(PeerInfo(pid, maddrs))  # type: ignore[attr-defined]
        except trio.Cancelled:
            raise
        except Exception as exc:
            raise TransportError(f"dial {peer_id} failed: {exc}") from exc

    async def open_stream(self, peer_id: str, protocol_id: str) -> Libp2pStream:
        try:
            raw = await self._host.new_stream(  # type: ignore[attr-defined]
                ID.from_base58(peer_id), [protocol_id]
            )
            await tune_stream(raw)
        except trio.Cancelled:
            raise
        except Exception as exc:
            raise TransportError(f"open {protocol_id} to {peer_id} failed: {exc}") from exc
        return Libp2pStream(raw, peer_id)

    def is_connected(self, peer_id: str) -> bool:
        try:
            pid = ID.from_base58(peer_id)
        except Exception:
            return False
        return pid in self._host.get_connected_peers()  # type: ignore[attr-defined]

    async def disconnect(self, peer_id: str) -> None:
        """Close the connections to a peer whose exchange stalled: after a network partition
        heals, the old TCP connection is still in its retransmission backoff and every new
        stream on it times out (about 80 s in a testnet), while a fresh dial works at once."""
        try:
            pid = ID.from_base58(peer_id)
        except Exception:
            return
        with trio.move_on_after(DISCONNECT_TIMEOUT_S):
            try:
                await self._host.get_network().close_peer(pid)  # type: ignore[attr-defined]
            except trio.Cancelled:
                raise
            except Exception as exc:  # a connection already half gone: nothing left to close
                log.debug("closing the connections to %s: %s", peer_id, exc)


@contextlib.asynccontextmanager
async def open_transport(
    seed: bytes,
    listen: Sequence[str],
    allows: PeerFilter = lambda _peer: True,
    on_refused: Callable[[str], None] = lambda _peer: None,
) -> AsyncIterator[Libp2pTransport]:
    """Start a Noise-only libp2p host on `listen` that admits only peers `allows` accepts;
    always close it (and its listener) on exit."""
    secret = Ed25519PrivateKey.from_bytes(seed)
    key_pair = KeyPair(secret, secret.get_public_key())
    noise = MemberOnlyNoise(key_pair, noise_privkey=new_x25519_pair().private_key,
                            allows=allows, on_refused=on_refused)
    host = new_host(
        key_pair=key_pair,
        sec_opt={TProtocol(NOISE_PROTOCOL_ID): noise},
        muxer_preference="YAMUX",
    )
    try:
        async with host.run(listen_addrs=[Multiaddr(a) for a in listen]):
            yield Libp2pTransport(host, allows, on_refused)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await host.close()
