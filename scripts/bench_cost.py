#!/usr/bin/env python3
"""Cost per node: resident memory and time from process start to ready, next to references.

    scripts/bench_cost.py [--nodes 4] [--settle 20] [--repeat 3] [--json]

Measured in one run, each a fresh process on this machine:

  python      `python -c` that only reads its own /proc/self/status (the interpreter alone);
  jax         `python -c` that imports jax, runs one jnp op and reads /proc/self/status: the
              floor under any JAX process;
  gossipd x1  one gossipd (scripts/testnet.py's config, closed swarm of one) alone;
  gossipd xN  N gossipd started at the same moment (a testnet): start-up contention on the
              cores, and memory once they gossip.

  ready       seconds from Popen to the first answered `status` on the control socket (the
              daemon opens it last: trainer built, host listening); for python/jax the time to
              exit.
  RSS         VmRSS at ready and after --settle seconds of training (and gossip for xN);
              VmHWM (peak) at the end. MiB.

Medians over --repeat rounds (python and jax) or per node over all rounds (gossipd). Ratios:
gossipd against the jax floor, and xN against x1. Exit 0 (a measurement); 1 if a node fails to
start or stop cleanly.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import testnet

READ_STATUS = ("import json, pathlib; print(json.dumps({k: int(v.split()[0]) for k, v in "
               "(l.split(':', 1) for l in pathlib.Path('/proc/self/status').read_text()"
               ".splitlines()) if k in ('VmRSS', 'VmHWM')}))")
JAX_FLOOR = "import jax.numpy as jnp; jnp.zeros(1).block_until_ready(); " + READ_STATUS


def mib_of(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def reference(code: str) -> dict[str, float]:
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=testnet.node_env(), timeout=120, check=True)
    dt = time.monotonic() - t0
    kib = json.loads(r.stdout.strip().splitlines()[-1])
    return {"ready_s": dt, "rss_mib": kib["VmRSS"] / 1024, "hwm_mib": kib["VmHWM"] / 1024}


def swarm(n: int, settle: float, base: Path) -> list[dict[str, float]]:
    args = argparse.Namespace(nodes=n, task="digits-mlp", partition="iid", seed=0,
                              local_only=False, set=[], log_level="warning", open_swarm=False,
                              bootstrap="first")
    run_dir = Path(tempfile.mkdtemp(prefix=f"cost{n}-", dir=base))
    sockdir = Path(tempfile.mkdtemp(prefix="gbc-"))
    specs = testnet.plan_nodes(args, run_dir, sockdir)
    t0 = time.monotonic()
    procs = {s.index: testnet.launch(s, own_session=False) for s in specs}
    rows: dict[int, dict[str, float]] = {}
    clean = True
    try:
        deadline = t0 + testnet.READY_TIMEOUT_S
        while len(rows) < n:
            for s in specs:
                if s.index in rows:
                    continue
                if procs[s.index].poll() is not None:
                    raise RuntimeError(f"node {s.index} exited:\n{testnet.log_tail(s)}")
                if testnet.ready_status(s) is not None:
                    mem = mib_of(procs[s.index].pid)
                    rows[s.index] = {"ready_s": time.monotonic() - t0,
                                     "rss_ready_mib": mem["VmRSS"]}
            if time.monotonic() > deadline:
                raise RuntimeError("nodes not ready in time")
            time.sleep(0.02)
        time.sleep(settle)
        for s in specs:
            mem = mib_of(procs[s.index].pid)
            rows[s.index].update(rss_mib=mem["VmRSS"], hwm_mib=mem["VmHWM"])
    finally:
        for s in specs:
            clean = testnet.stop_process(s, procs[s.index]) and clean
            clean = clean and procs[s.index].returncode == 0
        shutil.rmtree(sockdir, ignore_errors=True)
    if not clean:
        raise RuntimeError("a node did not stop cleanly")
    return [rows[i] for i in sorted(rows)]


def med(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def loadavg() -> str:
    """The 1-minute load average: other work on the machine shows in every number here."""
    return Path("/proc/loadavg").read_text().split()[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=4, help="N of the simultaneous start")
    ap.add_argument("--settle", type=float, default=20.0, help="seconds of running before RSS")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="bench-cost-"))
    res: dict[str, Any] = {"python": [], "jax": [], "x1": [], "xN": [], "load_start": loadavg()}
    try:
        for _ in range(a.repeat):
            res["python"].append(reference(READ_STATUS))
            res["jax"].append(reference(JAX_FLOOR))
            res["x1"] += swarm(1, a.settle, base)
            res["xN"] += swarm(a.nodes, a.settle, base)
    except (RuntimeError, subprocess.SubprocessError) as exc:
        print(f"bench_cost: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(base, ignore_errors=True)
    res["load_end"] = loadavg()
    if a.json:
        print(json.dumps(res))
        return 0
    print(f"# bench_cost: {os.cpu_count()} cores, {a.repeat} rounds, settle {a.settle:g} s; "
          f"medians (gossipd: over every node of every round); load average "
          f"{res['load_start']} at the start, {res['load_end']} at the end")
    print(f"{'process':<14} {'ready s':>8} {'RSS at ready':>13} {'RSS settled':>12} "
          f"{'peak (HWM)':>11}   MiB")
    for key, label in (("python", "python"), ("jax", "jax floor")):
        rows = res[key]
        print(f"{label:<14} {med(rows, 'ready_s'):>8.2f} {'':>13} {med(rows, 'rss_mib'):>12.1f} "
              f"{med(rows, 'hwm_mib'):>11.1f}")
    for key, label in (("x1", "gossipd x1"), ("xN", f"gossipd x{a.nodes}")):
        rows = res[key]
        print(f"{label:<14} {med(rows, 'ready_s'):>8.2f} {med(rows, 'rss_ready_mib'):>13.1f} "
              f"{med(rows, 'rss_mib'):>12.1f} {med(rows, 'hwm_mib'):>11.1f}")
    jax, x1, xn = res["jax"], res["x1"], res["xN"]
    print(f"ratio gossipd x1 / jax floor: ready {med(x1, 'ready_s') / med(jax, 'ready_s'):.2f}x,"
          f" RSS {med(x1, 'rss_mib') / med(jax, 'rss_mib'):.2f}x")
    print(f"ratio gossipd x{a.nodes} / x1: ready {med(xn, 'ready_s') / med(x1, 'ready_s'):.2f}x, "
          f"RSS {med(xn, 'rss_mib') / med(x1, 'rss_mib'):.2f}x; slowest of {a.nodes} ready in "
          f"{max(r['ready_s'] for r in xn):.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
