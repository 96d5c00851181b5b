"""A delay line for benchmarks: a TCP relay on 127.0.0.1 that holds every byte a fixed time
in each direction, so two processes on one machine see a link with a real round trip (this
machine has no netem). No bandwidth limit and no loss: only latency. Order is kept; a
direction that falls behind applies backpressure (at most QUEUE chunks in flight).

    port = await nursery.start(delay_line, upstream_port, 0.010)   # 10 ms each way

Loopback only, and it lives as long as the nursery that started it.
"""

from __future__ import annotations

import trio
from trio_typing import TaskStatus

QUEUE = 4096
CHUNK = 1 << 16


async def _pump(src: trio.SocketStream, dst: trio.SocketStream, delay_s: float) -> None:
    send, receive = trio.open_memory_channel[tuple[float, bytes]](QUEUE)

    async def reader() -> None:
        async with send:
            while data := await src.receive_some(CHUNK):
                await send.send((trio.current_time() + delay_s, data))

    async def writer() -> None:
        async with receive:
            async for due, data in receive:
                await trio.sleep_until(due)
                await dst.send_all(data)
        await dst.send_eof()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        nursery.start_soon(writer)


async def _relay(client: trio.SocketStream, upstream_port: int, delay_s: float) -> None:
    async with client, await trio.open_tcp_stream("127.0.0.1", upstream_port) as server:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_pump, client, server, delay_s)
                nursery.start_soon(_pump, server, client, delay_s)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # one side went away: the relay ends with it


async def delay_line(upstream_port: int, delay_s: float,
                     task_status: TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled; reports the listening port through task_status."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners,
                           lambda s: _relay(s, upstream_port, delay_s), listeners)
        task_status.started(port)


def main(argv: list[str] | None = None) -> int:
    """`delay_line.py --upstream PORT --delay-ms D`: serve in a process of its own (so the
    relay's own scheduling does not share an event loop with either peer), print the port."""
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--upstream", type=int, required=True, help="the TCP port to relay to")
    p.add_argument("--delay-ms", type=float, required=True, help="one-way delay")
    p.add_argument("--seconds", type=float, default=3600.0, help="stop after this long")
    a = p.parse_args(argv)

    async def serve() -> None:
        with trio.move_on_after(a.seconds):
            async with trio.open_nursery() as nursery:
                port = await nursery.start(delay_line, a.upstream, a.delay_ms / 1e3)
                print(port, flush=True)

    trio.run(serve)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
