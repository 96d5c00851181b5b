#!/usr/bin/env python3
"""Local multi-process testnet: N gossipd processes on 127.0.0.1, run, measure, stop, summarise.

    scripts/testnet.py run --nodes 4 --seconds 90 --partition dirichlet:0.1 --out testnet-out

Each node gets its own directory under --out (config.toml, state/ with its key, gossipd.log) and
a control socket in a short private temp dir (Unix socket paths are limited to 108 bytes). All
nodes start at once; node 0's key and port are fixed beforehand and its address is every other
node's only bootstrap peer, so the rest must find each other by peer exchange.
Readiness is polled over the control sockets (no fixed sleeps). At the end every node's status and
parameters are collected, all nodes get SIGTERM (SIGKILL after 15 s, counted as a failure), and
DIR/summary.json plus a table are written. Exit status 0 when every node started, answered and
stopped cleanly; 1 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gossipd.cli import ControlError, request  # noqa: E402
from gossipd.identity import load_or_create_seed, peer_id_for_seed  # noqa: E402

READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0


@dataclass
class NodeProc:
    index: int
    dir: Path
    socket: Path
    proc: subprocess.Popen[bytes]
    log: Any
    status: dict[str, Any] = field(default_factory=dict)
    params: Any = None
    exit_code: int | None = None
    killed: bool = False


def _toml_value(v: Any) -> str:
    return json.dumps(v)  # JSON scalars and string lists are valid TOML values


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> None:
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise SystemExit(f"testnet: --set expects SECTION.KEY=VALUE, got {item!r}")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        out.setdefault(section, {})[name] = value
    return out


def node_env() -> dict[str, str]:
    env = dict(os.environ)
    # Many nodes share few cores: one compute thread per node keeps them from thrashing.
    env.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_node(args: argparse.Namespace, i: int, sockdir: Path, bootstrap: list[str],
               overrides: dict[str, dict[str, Any]], listen: str) -> NodeProc:
    ndir = args.out / f"node{i}"
    ndir.mkdir(parents=True, exist_ok=True)
    sock = sockdir / f"n{i}.sock"
    sections: dict[str, dict[str, Any]] = {
        "node": {"state_dir": str(ndir / "state"), "control_socket": str(sock),
                 "log_level": args.log_level},
        "network": {"listen": [listen], "bootstrap": bootstrap,
                    "discovery_interval_s": 1.0},
        "averaging": {"enabled": not args.local_only},
        "train": {"task": args.task, "partition": args.partition, "num_shards": args.nodes,
                  "shard_index": i, "seed": args.seed},
    }
    for section, values in overrides.items():
        sections.setdefault(section, {}).update(values)
    write_config(ndir / "config.toml", sections)
    log = open(ndir / "gossipd.log", "ab")  # noqa: SIM115 - closed in stop_all
    proc = subprocess.Popen(
        [sys.executable, "-m", "gossipd.main", "--config", str(ndir / "config.toml")],
        stdout=log, stderr=subprocess.STDOUT, env=node_env(), cwd=ndir,
    )
    return NodeProc(i, ndir, sock, proc, log)


def wait_ready(nodes: list[NodeProc], deadline: float) -> None:
    pending = list(nodes)
    while pending:
        for n in list(pending):
            if n.proc.poll() is not None:
                tail = (n.dir / "gossipd.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"node {n.index} exited with {n.proc.returncode}:\n{tail}")
            if n.socket.exists():
                try:
                    n.status = request(n.socket, "status", timeout=5)
                except ControlError:
                    continue
                pending.remove(n)
        if time.monotonic() > deadline:
            raise RuntimeError(f"nodes {[n.index for n in pending]} not ready in time")
        time.sleep(0.1)


def poll_status(nodes: list[NodeProc]) -> None:
    for n in nodes:
        if n.killed or n.proc.poll() is not None:
            continue
        with contextlib.suppress(ControlError):
            n.status = request(n.socket, "status", timeout=5)


def progress_line(nodes: list[NodeProc], elapsed: float) -> str:
    parts = []
    for n in nodes:
        if n.killed:
            parts.append(f"n{n.index}: killed")
            continue
        s = n.status
        acc = s.get("accuracy")
        parts.append(f"n{n.index}: step {s.get('step', 0)} acc "
                     f"{'-' if acc is None else f'{acc:.3f}'} peers {len(s.get('known_peers', []))}"
                     f" ok {s.get('exchanges_ok', 0)}")
    return f"[{elapsed:5.0f}s] " + " | ".join(parts)


def stop_all(nodes: list[NodeProc]) -> None:
    for n in nodes:
        if n.proc.poll() is None:
            n.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for n in nodes:
        try:
            n.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            n.proc.kill()
            n.proc.wait()
        n.exit_code = n.proc.returncode
        n.log.close()


def evaluate(args: argparse.Namespace, nodes: list[NodeProc]) -> dict[str, Any]:
    import numpy as np

    from gossipd.data import Partition, load_shard
    from gossipd.mixing import consensus_distance, mean_vector
    from gossipd.trainer import Trainer, TrainHyper

    shard = load_shard(args.task, num_shards=args.nodes, shard_index=0,
                       partition=Partition.parse(args.partition), seed=args.seed)
    alive = [n for n in nodes if n.params is not None]
    vectors = [
        np.frombuffer(base64.b64decode(n.params["data"]), dtype="<f4").copy() for n in alive
    ]
    hidden = args.overrides.get("train", {}).get("hidden", TrainHyper().hidden)
    trainer = Trainer(args.task, shard, TrainHyper(hidden=hidden), args.seed)
    accs = {n.index: float(trainer.evaluate(v)) for n, v in zip(alive, vectors, strict=True)}
    avg = mean_vector(vectors) if vectors else None
    return {
        "node_accuracy": accs,
        "avg_model_accuracy": None if avg is None else float(trainer.evaluate(avg)),
        "consensus_distance": float(consensus_distance(vectors)) if vectors else None,
    }


def _listening(addr: str) -> bool:
    parts = addr.split("/")
    if len(parts) < 5 or parts[1] != "ip4" or parts[3] != "tcp":
        return False
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex((parts[2], int(parts[4]))) == 0


def leftovers(nodes: list[NodeProc]) -> dict[str, Any]:
    """What a finished testnet must not leave behind: processes, socket files, listening ports."""
    alive = [n.proc.pid for n in nodes if n.proc.poll() is None]
    # A SIGKILLed node cannot remove its socket; the daemon replaces such a stale file on its
    # next start. Only sockets of nodes that were asked to stop count as left behind.
    sockets = [str(n.socket) for n in nodes if n.socket.exists() and not n.killed]
    ports = [a for n in nodes for a in n.status.get("listen_addrs", []) if _listening(a)]
    return {"processes_alive": alive, "sockets_left": sockets, "ports_listening": ports}


def print_table(summary: dict[str, Any]) -> None:
    print()
    print(f"{'node':<5} {'peer id':<16} {'accuracy':>8} {'step':>6} {'ex ok':>6} {'ex fail':>7} "
          f"{'sent':>10} {'received':>10} {'exit':>5}")
    for n in summary["nodes"]:
        acc = "-" if n["accuracy"] is None else f"{n['accuracy']:.4f}"
        print(f"{n['index']:<5} {('…' + n['peer_id'][-14:]) if n['peer_id'] else '-':<16} "
              f"{acc:>8} {n['step']:>6} {n['exchanges_ok']:>6} {n['exchanges_failed']:>7} "
              f"{n['bytes_sent']:>10} {n['bytes_received']:>10} {n['exit_code']!s:>5}")
    avg = summary["avg_model_accuracy"]
    print(f"\naveraged-model accuracy {avg if avg is None else f'{avg:.4f}'}   "
          f"mean node accuracy {summary['mean_node_accuracy']:.4f}   "
          f"min node accuracy {summary['min_node_accuracy']:.4f}   "
          f"consensus distance {summary['consensus_distance']:.3g}")
    print(f"mode {'local-only' if summary['local_only'] else 'gossip'}   "
          f"partition {summary['partition']}   {summary['seconds']} s   "
          f"leftovers {summary['leftovers']}")


def run(args: argparse.Namespace) -> int:
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.overrides = parse_overrides(args.set)
    kill_at = None
    if args.kill:
        idx, _, at = args.kill.partition("@")
        kill_at = (int(idx), float(at))
    sockdir = Path(tempfile.mkdtemp(prefix="gtn-"))
    nodes: list[NodeProc] = []
    kill_record: dict[str, Any] | None = None
    ok = True
    try:
        t0 = time.monotonic()
        # Node 0's key and port are fixed up front so that every node can start at once with
        # node 0 as its only bootstrap peer (start-up is mostly JAX import and compile).
        # Every node's key is made up front too: the swarm is closed, its allowlist is all nodes.
        ids = [peer_id_for_seed(load_or_create_seed(args.out / f"node{i}" / "state"))
               for i in range(args.nodes)]
        swarm = {"open": True} if args.open_swarm else {"members": ids}
        args.overrides = {"swarm": swarm, **args.overrides}
        bootstrap = [f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/{ids[0]}"]
        first_listen = bootstrap[0].split("/p2p/")[0]
        nodes = [start_node(args, i, sockdir, [] if i == 0 else bootstrap, args.overrides,
                            listen=first_listen if i == 0 else "/ip4/127.0.0.1/tcp/0")
                 for i in range(args.nodes)]
        wait_ready(nodes, t0 + READY_TIMEOUT_S)
        print(f"testnet: {args.nodes} nodes ready in {time.monotonic() - t0:.1f} s; "
              f"running {args.seconds:g} s ({'local-only' if args.local_only else 'gossip'}, "
              f"{args.partition}); logs in {args.out}", flush=True)
        start = time.monotonic()
        next_report = start
        while (elapsed := time.monotonic() - start) < args.seconds:
            if kill_at and not nodes[kill_at[0]].killed and elapsed >= kill_at[1]:
                nodes[kill_at[0]].proc.kill()
                nodes[kill_at[0]].killed = True
                poll_status(nodes)
                kill_record = {
                    "node": kill_at[0], "at_s": round(elapsed, 1),
                    "exchanges_ok_at_kill": {
                        n.index: n.status.get("exchanges_ok", 0) for n in nodes if not n.killed},
                    "step_at_kill": {n.index: n.status.get("step", 0) for n in nodes
                                     if not n.killed},
                }
                print(f"testnet: SIGKILLed node {kill_at[0]} at {elapsed:.0f} s", flush=True)
            for n in nodes:
                if not n.killed and n.proc.poll() is not None:
                    raise RuntimeError(f"node {n.index} exited early with {n.proc.returncode}")
            if time.monotonic() >= next_report:
                poll_status(nodes)
                print(progress_line(nodes, elapsed), flush=True)
                next_report += args.report_every
            time.sleep(0.2)
        for n in nodes:
            if n.killed:
                continue
            n.status = request(n.socket, "status", timeout=10)
            n.params = request(n.socket, "params", timeout=10)
    except (RuntimeError, ControlError) as exc:
        print(f"testnet: {exc}", file=sys.stderr)
        ok = False
    finally:
        stop_all(nodes)
        left = leftovers(nodes)
        shutil.rmtree(sockdir, ignore_errors=True)
    results = evaluate(args, nodes) if ok else {"node_accuracy": {}, "avg_model_accuracy": None,
                                                 "consensus_distance": None}
    rows = []
    for n in nodes:
        s = n.status
        rows.append({
            "index": n.index, "peer_id": s.get("peer_id"),
            "accuracy": results["node_accuracy"].get(n.index),
            "reported_accuracy": s.get("accuracy"), "step": s.get("step", 0),
            "bytes_sent": s.get("bytes_sent", 0), "bytes_received": s.get("bytes_received", 0),
            "exchanges_ok": s.get("exchanges_ok", 0),
            "exchanges_failed": s.get("exchanges_failed", 0),
            "exchanges_served_ok": s.get("exchanges_served_ok", 0),
            "known_peers": len(s.get("known_peers", [])), "killed": n.killed,
            "exit_code": n.exit_code,
        })
    accs = [r["accuracy"] for r in rows if r["accuracy"] is not None]
    summary = {
        "nodes": rows, "avg_model_accuracy": results["avg_model_accuracy"],
        "consensus_distance": results["consensus_distance"] or 0.0,
        "mean_node_accuracy": sum(accs) / len(accs) if accs else 0.0,
        "min_node_accuracy": min(accs) if accs else 0.0,
        "local_only": args.local_only, "partition": args.partition, "task": args.task,
        "seed": args.seed, "seconds": args.seconds, "leftovers": left, "kill": kill_record,
        "ok": ok,
    }
    clean = all(r["exit_code"] == 0 for r in rows if not r["killed"])
    summary["ok"] = ok = ok and clean and not any(left.values())
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print_table(summary)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="testnet.py", description="Run a local multi-process gossipd testnet on 127.0.0.1.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="start N nodes, run S seconds, collect, stop, summarise")
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--task", default="digits-mlp")
    p.add_argument("--partition", default="iid", help="iid | dirichlet:ALPHA")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--local-only", action="store_true", help="averaging off (the baseline)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--kill", help="SIGKILL node I at S seconds, e.g. 2@20")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a node config key, e.g. averaging.interval_s=0.3")
    p.add_argument("--log-level", default="info")
    p.add_argument("--open-swarm", action="store_true",
                   help="no member allowlist (swarm.open = true); default: closed to the N nodes")
    p.add_argument("--report-every", type=float, default=10.0, help="progress line period (s)")
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error("--nodes must be >= 1")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
