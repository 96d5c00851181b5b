#!/usr/bin/env python3
"""Serve the swarm dashboard for nodes given by their control sockets.

    scripts/dashboard.py --node n0=/tmp/gtn-x/n0.sock --node n1=/tmp/gtn-x/n1.sock [--port 8480]
    scripts/testnet.py dashboard --out DIR      (the same, for the nodes of a testnet `up`)

Prints the URL, then serves until Ctrl-C: a peer graph with recent exchanges, every node's
accuracy and loss, the averaged model's accuracy and the consensus distance, polled every 2 s.
Read-only; loopback only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import trio  # noqa: E402

from gossipd.cli import request  # noqa: E402
from gossipd.dashboard import run_swarm_dashboard  # noqa: E402


def parse_nodes(items: list[str]) -> dict[str, Path]:
    nodes: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"dashboard: --node expects NAME=SOCKET, got {item!r}")
        nodes[name] = Path(path)
    return nodes


async def serve(nodes: dict[str, Path], host: str, port: int) -> None:
    async with trio.open_nursery() as nursery:
        actual = await nursery.start(run_swarm_dashboard, nodes, request, host, port)
        print(f"http://{host}:{actual}/", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dashboard.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--node", action="append", default=[], metavar="NAME=SOCKET",
                        required=True, help="a node's name and control socket (repeat)")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to serve on")
    parser.add_argument("--port", type=int, default=0, help="port (default: any free one)")
    args = parser.parse_args(argv)
    try:
        trio.run(serve, parse_nodes(args.node), args.host, args.port)
    except KeyboardInterrupt:
        return 0
    except ValueError as exc:  # a non-loopback host
        print(f"dashboard: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
