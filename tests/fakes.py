"""In-memory fakes of gossipd.netapi: a network of transports joined by trio memory streams.

Faults are explicit knobs, not mocks: `down` peers refuse dials and streams, `frozen` peers accept
a stream and then never read or write (like a SIGSTOPped process), `tamper` rewrites bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import nacl.signing
import trio
import trio.testing

from gossipd.netapi import StreamHandler, TransportError

ED25519_ID_PREFIX = bytes.fromhex("002408011220")  # identity multihash of an Ed25519 key


def fake_identity(name: str) -> tuple[bytes, str]:
    """(seed, peer_id) for a named fake node: a real Ed25519 key, its ID bytes written in hex."""
    seed = hashlib.sha256(name.encode()).digest()
    public = bytes(nacl.signing.SigningKey(seed).verify_key)
    return seed, "fk" + (ED25519_ID_PREFIX + public).hex()


class MemoryStream:
    def __init__(self, inner: trio.abc.HalfCloseableStream, remote: str,
                 tamper: Callable[[bytes], bytes] | None = None) -> None:
        self._inner = inner
        self._remote = remote
        self._tamper = tamper

    @property
    def remote_peer(self) -> str:
        return self._remote

    async def send_all(self, data: bytes) -> None:
        if self._tamper is not None:
            data = self._tamper(data)
        try:
            await self._inner.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise TransportError(f"write to {self._remote}: {exc!r}") from exc

    async def receive_some(self, max_bytes: int) -> bytes:
        try:
            return bytes(await self._inner.receive_some(max_bytes))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise TransportError(f"read from {self._remote}: {exc!r}") from exc

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def reset(self) -> None:
        await self._inner.aclose()


class MemoryNetwork:
    def __init__(self) -> None:
        self.transports: dict[str, MemoryTransport] = {}
        self.down: set[str] = set()
        self.frozen: set[str] = set()
        self.nursery: trio.Nursery | None = None

    def transport(self, name: str) -> MemoryTransport:
        seed, peer_id = fake_identity(name)
        t = MemoryTransport(self, peer_id, seed)
        self.transports[t.peer_id] = t
        return t


class MemoryTransport:
    def __init__(self, network: MemoryNetwork, peer_id: str, seed: bytes) -> None:
        self.network = network
        self._peer_id = peer_id
        self.seed = seed
        self.handlers: dict[str, StreamHandler] = {}
        self.connected: set[str] = set()
        self.disconnects: list[str] = []  # peers whose connections the node dropped
        self.tamper_outgoing: Callable[[bytes], bytes] | None = None

    @property
    def peer_id(self) -> str:
        return self._peer_id

    def peer_id_bytes(self, peer_id: str) -> bytes:
        try:
            return bytes.fromhex(peer_id.removeprefix("fk"))
        except ValueError as exc:
            raise TransportError(f"not a peer ID: {peer_id!r}") from exc

    def listen_addrs(self) -> list[str]:
        return [f"/memory/{self._peer_id}/p2p/{self._peer_id}"]

    def set_handler(self, protocol_id: str, handler: StreamHandler) -> None:
        self.handlers[protocol_id] = handler

    def _reachable(self, peer_id: str) -> MemoryTransport:
        target = self.network.transports.get(peer_id)
        if target is None or peer_id in self.network.down:
            raise TransportError(f"dial {peer_id} failed: unreachable")
        return target

    async def connect(self, peer_id: str, addrs: Sequence[str]) -> None:
        await trio.sleep(0)
        self._reachable(peer_id)
        self.connected.add(peer_id)

    async def open_stream(self, peer_id: str, protocol_id: str) -> MemoryStream:
        await trio.sleep(0)
        target = self._reachable(peer_id)
        handler = target.handlers.get(protocol_id)
        if handler is None:
            raise TransportError(f"{peer_id} does not speak {protocol_id}")
        ours, theirs = trio.testing.memory_stream_pair()
        assert self.network.nursery is not None, "set network.nursery before opening streams"
        if peer_id in self.network.frozen:
            self.network.nursery.start_soon(_hold_forever, theirs)
        else:
            self.network.nursery.start_soon(
                handler, MemoryStream(theirs, self._peer_id, target.tamper_outgoing)
            )
        return MemoryStream(ours, peer_id, self.tamper_outgoing)

    def is_connected(self, peer_id: str) -> bool:
        return peer_id in self.connected and peer_id not in self.network.down

    async def disconnect(self, peer_id: str) -> None:
        self.connected.discard(peer_id)
        self.disconnects.append(peer_id)


async def _hold_forever(stream: trio.abc.Stream) -> None:
    async with stream:
        await trio.sleep_forever()
