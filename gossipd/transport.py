"""The libp2p transport: the only module in gossipd that imports libp2p.

Facts this module works around (measured on py-libp2p 0.8.1, see the project notes):
- The default host also accepts /plaintext/2.0.0, which lets anyone who knows a public key
  impersonate that peer. We offer Noise only.
- Leaving `host.run()` does not close the listener; `host.close()` must always be awaited.
- A peer that failed to dial sits in a 60 s negative cache; the daemon's peer table does its own
  backoff, so each explicit dial first clears that cache entry.
- libp2p never times out a frozen peer: callers wrap every call here in a trio deadline.
- libp2p logs routine dial failures at ERROR; those are quietened in gossipd/main.py.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_pair
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamError
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.exceptions import HandshakeFailure
from libp2p.security.noise.transport import Transport as NoiseTransport
from multiaddr import Multiaddr

from gossipd.netapi import StreamHandler, TransportError

NOISE_PROTOCOL_ID = "/noise"

log = logging.getLogger("gossipd.transport")


PeerFilter = Callable[[str], bool]


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
        return await self._gate(await super().secure_inbound(conn))

    async def secure_outbound(self, conn: Any, peer_id: Any) -> Any:
        return await self._gate(await super().secure_outbound(conn, peer_id))


class Libp2pStream:
    """A libp2p stream seen through gossipd.netapi.Stream."""

    def __init__(self, raw: object, remote_peer: str) -> None:
        self._raw: object = raw
        self._remote = remote_peer

    @property
    def remote_peer(self) -> str:
        return self._remote

    async def send_all(self, data: bytes) -> None:
        try:
            await self._raw.write(data)  # type: ignore[attr-defined]
        except (StreamError, OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise TransportError(f"write to {self._remote} failed: {exc!r}") from exc

    async def receive_some(self, max_bytes: int) -> bytes:
        try:
            data: bytes = await self._raw.read(max_bytes)  # type: ignore[attr-defined]
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
