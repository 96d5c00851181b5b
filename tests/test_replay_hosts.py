"""Real libp2p hosts on loopback: a recorded exchange replayed to its responder is refused, and
still refused after the responder restarts with the same state directory (replay.bin)."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
import trio

from gossipd import exchange
from gossipd.identity import peer_id_for_seed
from gossipd.netapi import MessageStream, Stream, TransportError
from gossipd.replaylog import ReplayLog
from gossipd.transport import Libp2pTransport, open_transport
from protocol.errors import ProtocolError
from protocol.messages import AVG_PROTOCOL_ID, ErrorMsg, Hello
from protocol.session import AveragingSession

pytestmark = pytest.mark.integration
LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
N = 16
SPEC = "replay-test/16"
WINDOW_MS = 300_000


class Responder:
    """What a node does on its averaging handler, with outcomes recorded for the test."""

    def __init__(self, seed: bytes, replay: ReplayLog) -> None:
        self.seed = seed
        self.replay = replay
        self.served = 0
        self.refused: list[str] = []
        self.mixed: list[np.ndarray] = []

    def model(self, transport: Libp2pTransport) -> exchange.LocalModel:
        return exchange.LocalModel(
            peer_id_bytes=transport.peer_id_bytes(transport.peer_id), seed=self.seed, spec=SPEC,
            num_params=N, snapshot=lambda: (np.ones(N, np.float32), 5),
            apply_remote=lambda remote, _step: self.mixed.append(remote), replay=self.replay,
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@asynccontextmanager
async def responder(seed: bytes, members: set[str], r: Responder, port: int
                    ) -> AsyncIterator[Libp2pTransport]:
    # A restarted daemon listens where its config says: the same port as before.
    async with open_transport(seed, [f"/ip4/127.0.0.1/tcp/{port}"], members.__contains__) as t:
        model = r.model(t)

        async def on_avg(stream: Stream) -> None:
            try:
                await exchange.respond(t, stream, model, 5.0, exchange.ByteCounter())
            except ProtocolError as exc:
                r.refused.append(exc.code)
            except TransportError:
                r.refused.append("transport")
            else:
                r.served += 1

        t.set_handler(AVG_PROTOCOL_ID, on_avg)
        yield t


async def replay_hello(a: Libp2pTransport, b: Libp2pTransport, frame: bytes) -> ErrorMsg | Hello:
    """Send a recorded Hello frame on a fresh stream from a's (genuine) connection."""
    with trio.fail_after(10):
        while True:  # right after b restarts, a may still hold the dead connection
            try:
                await a.connect(b.peer_id, [x.split("/p2p/")[0] for x in b.listen_addrs()])
                ms = MessageStream(await a.open_stream(b.peer_id, AVG_PROTOCOL_ID))
                break
            except TransportError:
                await trio.sleep(0.2)
        await ms.send(frame)
        reply = await ms.receive()
        await ms.stream.aclose()
    assert isinstance(reply, ErrorMsg | Hello)
    return reply


async def test_replayed_exchange_is_refused_before_and_after_restart(tmp_path: Path) -> None:
    seed_a, seed_b = os.urandom(32), os.urandom(32)
    members = {peer_id_for_seed(seed_a), peer_id_for_seed(seed_b)}
    path = tmp_path / "replay.bin"
    now = exchange.wall_clock_ms()
    port = free_port()
    async with open_transport(seed_a, LOOPBACK, members.__contains__) as a:
        # 1. A genuine exchange, with A's side driven by hand so its Hello frame is recorded.
        r1 = Responder(seed_b, ReplayLog(path, WINDOW_MS, now))
        async with responder(seed_b, members, r1, port) as b:
            session = AveragingSession(
                initiator=True, local_peer_id=a.peer_id_bytes(a.peer_id), local_seed=seed_a,
                remote_peer_id=b.peer_id_bytes(b.peer_id), spec=SPEC, num_params=N, step=3,
                time_ms=exchange.wall_clock_ms(),
            )
            hello_frame = session.hello()
            reply = await replay_hello(a, b, hello_frame)  # first use: genuine
            assert isinstance(reply, Hello)
            with trio.fail_after(5):
                while not r1.refused and not r1.served:
                    await trio.sleep(0.01)  # the stream closed before Params: a failed exchange
            # 2. The same Hello again, on a new stream of the same authenticated connection.
            again = await replay_hello(a, b, hello_frame)
            assert isinstance(again, ErrorMsg) and again.code == "replay"
        r1.replay.close()
        # 3. The responder restarts from the same state directory and still refuses it.
        r2 = Responder(seed_b, ReplayLog(path, WINDOW_MS, exchange.wall_clock_ms()))
        assert r2.replay.restored == 1
        async with responder(seed_b, members, r2, port) as b2:
            after = await replay_hello(a, b2, hello_frame)
            assert isinstance(after, ErrorMsg) and after.code == "replay"
            with trio.fail_after(5):
                while "replay" not in r2.refused:
                    await trio.sleep(0.01)
        r2.replay.close()
    assert r1.mixed == [] and r2.mixed == []  # a replay never reaches the model
