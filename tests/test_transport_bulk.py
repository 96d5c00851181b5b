"""Real libp2p hosts on loopback, the bulk data path: a multi-MiB averaging exchange completes in
its deadline with both sides at the pair's mean, and gossipd's Noise/yamux changes interoperate
with an unmodified py-libp2p peer in both directions of data."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
import pytest
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.noise.transport import Transport as NoiseTransport
from multiaddr import Multiaddr

from gossipd import exchange
from gossipd.mixing import merge
from gossipd.netapi import Stream
from gossipd.transport import BufferedNoiseSession, BulkYamuxStream, Libp2pTransport, open_transport
from protocol.messages import AVG_PROTOCOL_ID

pytestmark = pytest.mark.integration
LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
PROTO = "/gossipd/test-bulk/1.0.0"
MIB = 1 << 20


class Node:
    """A static model: merge_remote records the merged vector."""

    def __init__(self, seed: bytes, params: np.ndarray) -> None:
        self.seed = seed
        self.params = params
        self.merged: list[np.ndarray] = []

    def model(self, t: Libp2pTransport) -> exchange.LocalModel:
        return exchange.LocalModel(
            peer_id_bytes=t.peer_id_bytes(t.peer_id), seed=self.seed, spec="bulk-test",
            num_params=self.params.size, snapshot=lambda: (self.params, 1),
            apply_remote=lambda _r, _s: None,
            merge_remote=lambda sent, remote, _s: self.merged.append(
                merge(self.params, sent, remote, 0.5, out=remote)),
        )


async def test_an_8_mib_exchange_completes_and_both_sides_end_at_the_mean() -> None:
    n = 2 * MIB  # 8 MiB of float32 each way
    rng = np.random.default_rng(8)
    a = Node(os.urandom(32), rng.standard_normal(n, dtype=np.float32))
    b = Node(os.urandom(32), rng.standard_normal(n, dtype=np.float32))
    served: list[exchange.ExchangeOutcome] = []
    muxed_types: list[type] = []
    async with open_transport(a.seed, LOOPBACK) as ta, open_transport(b.seed, LOOPBACK) as tb:

        async def on_avg(stream: Stream) -> None:
            muxed_types.append(type(stream._raw.muxed_stream))  # type: ignore[attr-defined]
            served.append(await exchange.respond(tb, stream, b.model(tb), 20.0,
                                                 exchange.ByteCounter()))

        tb.set_handler(AVG_PROTOCOL_ID, on_avg)
        with trio.fail_after(20):
            await ta.connect(tb.peer_id, tb.listen_addrs())
            t0 = trio.current_time()
            out = await exchange.initiate(ta, tb.peer_id, a.model(ta), 20.0,
                                          exchange.ByteCounter())
            elapsed = trio.current_time() - t0
            while not served:
                await trio.sleep(0.01)
    assert elapsed < 10.0  # a generous bound; about 0.2 s on a 2-core machine
    assert out.bytes_sent >= 4 * n and out.bytes_received >= 4 * n
    mean = merge(a.params, a.params, b.params)
    np.testing.assert_array_equal(a.merged[0], mean)
    np.testing.assert_array_equal(b.merged[0], mean)
    assert muxed_types == [BulkYamuxStream]


@asynccontextmanager
async def stock_host(listen: bool) -> AsyncIterator[object]:
    """An unmodified py-libp2p host: its own Noise and yamux classes."""
    secret = Ed25519PrivateKey.from_bytes(os.urandom(32))
    keys = KeyPair(secret, secret.get_public_key())
    noise = NoiseTransport(keys, noise_privkey=new_x25519_pair().private_key)
    host = new_host(key_pair=keys, sec_opt={TProtocol("/noise"): noise}, muxer_preference="YAMUX")
    try:
        async with host.run(listen_addrs=[Multiaddr(LOOPBACK[0])] if listen else []):
            yield host
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await host.close()


def payload(tag: bytes, size: int) -> bytes:
    return (hashlib.sha256(tag).digest() * (size // 32 + 1))[:size]


async def pump(write: object, read: object, out: bytes, size: int) -> bytes:
    """Write ``out`` in 1 MiB pieces while reading ``size`` bytes (both ways at once)."""
    got = bytearray()

    async def send() -> None:
        for i in range(0, len(out), MIB):
            await write(out[i : i + MIB])  # type: ignore[operator]

    async def receive() -> None:
        while len(got) < size:
            data = await read(4 * MIB)  # type: ignore[operator]
            assert data, "stream ended early"
            got.extend(data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        nursery.start_soon(receive)
    return bytes(got)


@pytest.mark.parametrize("stock_dials", [True, False])
async def test_bulk_data_both_ways_with_an_unmodified_py_libp2p_peer(stock_dials: bool) -> None:
    size = 6 * MIB + 12345
    to_stock, to_ours = payload(b"to stock", size), payload(b"to ours", size)
    results: dict[str, bytes] = {}
    sessions: list[type] = []
    async with stock_host(listen=not stock_dials) as stock, \
            open_transport(os.urandom(32), LOOPBACK) as ours:
        stock_id = stock.get_id()  # type: ignore[attr-defined]

        async def ours_side(stream: Stream) -> None:
            sessions.append(type(stream._raw.muxed_conn.secured_conn))  # type: ignore[attr-defined]
            results["ours"] = await pump(stream.send_all, stream.receive_some, to_stock, size)
            await stream.aclose()

        async def stock_side(raw: object) -> None:
            results["stock"] = await pump(raw.write, raw.read, to_ours, size)  # type: ignore[attr-defined]
            await raw.close()  # type: ignore[attr-defined]

        with trio.fail_after(30):
            if stock_dials:
                ours.set_handler(PROTO, ours_side)
                addrs = [Multiaddr(a.split("/p2p/")[0]) for a in ours.listen_addrs()]
                await stock.connect(PeerInfo(ID.from_base58(ours.peer_id), addrs))  # type: ignore[attr-defined]
                raw = await stock.new_stream(ID.from_base58(ours.peer_id), [PROTO])  # type: ignore[attr-defined]
                await stock_side(raw)
                while "ours" not in results:
                    await trio.sleep(0.01)
            else:
                stock.set_stream_handler(PROTO, stock_side)  # type: ignore[attr-defined]
                addrs = [str(a) for a in stock.get_addrs()]  # type: ignore[attr-defined]
                await ours.connect(stock_id.to_base58(), addrs)
                await ours_side(await ours.open_stream(stock_id.to_base58(), PROTO))
                while "stock" not in results:
                    await trio.sleep(0.01)
    assert results["ours"] == to_ours
    assert results["stock"] == to_stock
    assert sessions == [BufferedNoiseSession]
