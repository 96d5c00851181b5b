"""Inbound limits: token buckets per peer, one exchange per peer, a node-wide cap; and a flood of
streams from one peer over the in-memory transport does not stop an honest exchange."""

from __future__ import annotations

import numpy as np
import trio
import trio.testing

from gossipd.limits import MAX_TRACKED, InboundLimits
from protocol.messages import AVG_PROTOCOL_ID
from tests.fakes import MemoryNetwork
from tests.test_node import make_node, params, start


def test_token_bucket_refills_at_the_rate() -> None:
    lim = InboundLimits(rate=2.0, burst=3.0)
    assert [lim.allow_stream("p", 0.0) for _ in range(4)] == [True, True, True, False]
    assert lim.allow_stream("p", 0.5)  # one token back after 0.5 s at 2/s
    assert not lim.allow_stream("p", 0.5)
    assert lim.allow_stream("q", 0.5)  # buckets are per peer
    assert lim.refused["rate"] == 2


def test_one_exchange_per_peer_and_a_node_cap() -> None:
    lim = InboundLimits(max_exchanges=2)
    assert lim.start_exchange("a") and not lim.start_exchange("a")
    assert lim.start_exchange("b") and not lim.start_exchange("c")
    lim.finish_exchange("a")
    assert lim.start_exchange("c") and lim.active_exchanges == 2
    assert lim.refused == {"peer_busy": 1, "node_busy": 1}


def test_tracked_buckets_are_bounded() -> None:
    lim = InboundLimits()
    for i in range(MAX_TRACKED + 10):
        lim.allow_stream(f"p{i}", 0.0)
    assert len(lim._buckets) == MAX_TRACKED


async def test_a_stream_flood_does_not_stop_an_honest_exchange(
        autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    a, b = make_node(net, "a", 0.0), make_node(net, "b", 1.0)
    x = make_node(net, "x", 5.0)
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        await start(nursery, a, b)  # x only floods: its own node is not running

        async def open_and_hold() -> None:
            stream = await x.transport.open_stream(a.transport.peer_id, AVG_PROTOCOL_ID)
            await trio.sleep(30)  # say nothing: holds a slot until a's exchange deadline
            await stream.aclose()

        for _ in range(200):
            nursery.start_soon(open_and_hold)
        await trio.sleep(0.5)
        b.peers.add(a.transport.peer_id, ["/memory"], trio.current_time())
        await b._average_once(a.transport.peer_id)
        nursery.cancel_scope.cancel()
    assert b.stats.ok == 1
    np.testing.assert_allclose(params(b), 0.5)
    refused = a.limits.refused
    assert refused["rate"] + refused["peer_busy"] >= 190  # x got one slot, at most a few more
