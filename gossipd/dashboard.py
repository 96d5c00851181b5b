"""The dashboard: a read-only web page of one node (served by the daemon) or of a whole local
testnet (served by `scripts/testnet.py dashboard`), updating live without a reload.

Rules:
- Read-only: the routes only report what `gossipctl status/peers/history` report; no route
  changes anything, so the page needs no permission beyond reaching the loopback port. Acting on
  a node stays with the control socket and its 0660 permission.
- Loopback by default (gossipd/metrics_http.py refuses other hosts unless told otherwise).
- The page and its script ship inside the package (gossipd/dashboard_assets/); nothing is
  fetched from the network at run time. No front-end dependencies: SVG charts drawn by a small
  script.
- The swarm view polls each node's control socket from a worker thread every POLL_S and serves
  the last snapshot, so a slow or frozen node delays only its own row, never the page.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import numpy as np
import trio

from gossipd.metrics_http import Route

if TYPE_CHECKING:
    from trio_typing import TaskStatus

    from gossipd.daemon import Node

log = logging.getLogger("gossipd.dashboard")

JSON = "application/json"
POLL_S = 2.0
NODE_TIMEOUT_S = 3.0
MAX_SWARM_POINTS = 2000


def asset(name: str) -> bytes:
    return resources.files("gossipd").joinpath("dashboard_assets", name).read_bytes()


def _json(value: Any) -> tuple[str, bytes]:
    # NaN/inf are not JSON: the page treats null as "not known yet".
    return JSON, json.dumps(_finite(value), separators=(",", ":")).encode()


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _since(query: str) -> float:
    values = parse_qs(query).get("since", ["-1"])
    try:
        since = float(values[0])
    except ValueError:
        raise ValueError("since must be a number of seconds") from None
    if not math.isfinite(since):
        raise ValueError("since must be finite")
    return since


def _static(name: str, content_type: str) -> Route:
    body = asset(name)
    if name.endswith(".html"):  # one request per page: the stylesheet is inlined
        body = body.replace(b"/*STYLE*/", asset("style.css"))
    return lambda _query: (content_type, body)


def node_routes(node: Node) -> dict[str, Route]:
    """Routes of the single-node dashboard served by the daemon itself."""
    return {
        "/": _static("node.html", "text/html; charset=utf-8"),
        "/dashboard.js": _static("dashboard.js", "text/javascript; charset=utf-8"),
        "/api/status": lambda _q: _json(node.status()),
        "/api/peers": lambda _q: _json(node.peers.snapshot(trio.current_time())),
        "/api/history": lambda q: _json(node.history.since(_since(q))),
    }


# ------------------------------------------------------------------ the swarm view

Request = Callable[..., Any]  # gossipd.cli.request(path, cmd, timeout=..., **args)


@dataclass
class SwarmState:
    """The last poll of every node of a testnet, and the swarm-level series."""

    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    series: list[dict[str, Any]] = field(default_factory=list)  # t, avg accuracy, consensus
    started: float = field(default_factory=time.time)

    def snapshot(self) -> dict[str, Any]:
        return {"nodes": self.nodes, "series": self.series, "now": time.time() - self.started}


def _decode_params(p: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(p["data"]), dtype="<f4")


def poll_swarm(sockets: dict[str, Path], request: Request, state: SwarmState) -> None:
    """One blocking poll of every node (run in a worker thread): status, peers and history
    of each; the mean of their parameters evaluated by the first live node; the true
    consensus distance (mean squared distance to the mean)."""
    vectors: list[np.ndarray] = []
    evaluator: Path | None = None
    for name, sock in sockets.items():
        row: dict[str, Any] = {"name": name, "up": False}
        try:
            row["status"] = request(sock, "status", timeout=NODE_TIMEOUT_S)
            row["peers"] = request(sock, "peers", timeout=NODE_TIMEOUT_S)
            row["history"] = request(sock, "history", timeout=NODE_TIMEOUT_S)["samples"][-300:]
            params = request(sock, "params", timeout=NODE_TIMEOUT_S)
            vectors.append(_decode_params(params))
            evaluator = evaluator or sock
            row["up"] = True
        except Exception as exc:  # a dead or frozen node is shown as down, never fatal
            row["error"] = f"{type(exc).__name__}: {exc}"[:200]
        state.nodes[name] = row
    if not vectors or len({v.size for v in vectors}) != 1:
        return
    mean = np.mean(np.stack(vectors), axis=0)
    point: dict[str, Any] = {
        "t": round(time.time() - state.started, 2),
        "consensus_distance": float(np.mean([np.sum((v - mean) ** 2) for v in vectors])),
        "avg_accuracy": None,
    }
    if evaluator is not None:
        data = base64.b64encode(mean.astype("<f4").tobytes()).decode()
        try:
            point["avg_accuracy"] = request(evaluator, "evaluate", timeout=NODE_TIMEOUT_S,
                                            data=data)["accuracy"]
        except Exception as exc:
            log.debug("evaluating the averaged model failed: %s", exc)
    state.series.append(point)
    del state.series[:-MAX_SWARM_POINTS]


def swarm_routes(state: SwarmState) -> dict[str, Route]:
    return {
        "/": _static("swarm.html", "text/html; charset=utf-8"),
        "/dashboard.js": _static("dashboard.js", "text/javascript; charset=utf-8"),
        "/api/swarm": lambda _q: _json(state.snapshot()),
    }


async def run_swarm_dashboard(
    sockets: dict[str, Path], request: Request, host: str = "127.0.0.1", port: int = 0,
    *, task_status: TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Poll the nodes of `sockets` (name -> control socket) and serve the swarm page."""
    from gossipd.metrics_http import serve_http

    state = SwarmState()

    async def poller() -> None:
        while True:
            await trio.to_thread.run_sync(poll_swarm, sockets, request, state)
            await trio.sleep(POLL_S)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poller)
        actual = await nursery.start(
            lambda task_status: serve_http(host, port, swarm_routes(state),
                                           what="swarm dashboard", task_status=task_status))
        task_status.started(actual)
