#!/usr/bin/env python3
"""Training overhead of averaging: a node's training speed with averaging on vs off, in one run.

    scripts/bench_overhead.py [--window 10] [--repeat 5] [--json]

Two measurements, each printed with its on/off ratio:

  in-process  one Trainer on a digits shard, chunks of 5 steps (the daemon's chunk at its
              default 20 steps/s); "on" also mixes one remote vector into the parameters after
              every chunk the way gossipd.runner does (mixing.mix + Trainer.with_params; the
              daemon applies about 4 mixes/s at 20 steps/s, i.e. one per 5 steps). Compute
              only, no network. Blocks of 1 s alternate off/on; medians.
  two nodes   two real gossipd processes on 127.0.0.1 (scripts/testnet.py's configs) whose
              averaging is switched off and on again --repeat times (averaging.enabled in the
              config file + `config.reload`, so the same warm processes are measured both ways);
              each window is --window seconds, 2 s after the switch. Two pairs:
                * paced:     train.steps_per_second = 20 (the default): CPU seconds per second
                             of each node (utime + stime from /proc/PID/stat) and its steps/s;
                * saturated: train.steps_per_second = 20000 (more than one core can do, so each
                             node trains flat out): steps per second of each node, and steps
                             per CPU second of its process (all threads: training, event loop,
                             exchanges), which does not depend on how much CPU the machine's
                             other load leaves the node.
              Medians over the windows; exchanges (both roles) counted in the same windows.

Other load on the machine shows in the raw steps/s of the saturated pair (the alternation
spreads it over both modes); steps per CPU second is the overhead figure to read there.
Exit 0 (a measurement); 1 if a node fails to start or stop cleanly.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import testnet

from gossipd.cli import request
from gossipd.data import Partition, load_shard
from gossipd.mixing import mix
from gossipd.trainer import Trainer, TrainHyper

CHUNK = 5
CLK_TCK = os.sysconf("SC_CLK_TCK")


def in_process(blocks: int) -> dict[str, float]:
    shard = load_shard("digits-mlp", num_shards=2, shard_index=0, partition=Partition("iid"),
                       seed=0)
    trainer = Trainer("digits-mlp", shard, TrainHyper(), 0)
    remote = trainer.get_params(trainer.init()) + np.float32(0.01)
    state = trainer.init()
    state, _ = trainer.run_steps(state, CHUNK)  # compiled before timing
    rates: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(blocks):
        for label in ("off", "on"):
            steps = 0
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 1.0:
                state, _ = trainer.run_steps(state, CHUNK)
                params = trainer.get_params(state)
                if label == "on":
                    state = trainer.with_params(state, mix(params, remote, 0.5))
                steps += CHUNK
            rates[label].append(steps / (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in rates.items()}


def _args(local_only: bool, steps_per_second: float) -> argparse.Namespace:
    return argparse.Namespace(
        nodes=2, task="digits-mlp", partition="iid", seed=0, local_only=local_only,
        set=[f"train.steps_per_second={steps_per_second}"], log_level="warning",
        open_swarm=False, bootstrap="first")


def _cpu_s(pid: int) -> float:
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _set_averaging(specs: list[testnet.NodeSpec], on: bool) -> None:
    for s in specs:
        path = Path(s.config)
        text = path.read_text()
        # write_config puts exactly one `enabled = ...` line, in [averaging]
        text = text.replace(f"enabled = {json.dumps(not on)}", f"enabled = {json.dumps(on)}")
        path.write_text(text)
        result = request(Path(s.socket), "config.reload", timeout=10)
        assert "averaging.enabled" in result["applied"], result


def pair(steps_per_second: float, window: float, repeat: int, base: Path) -> dict[str, Any]:
    """Two nodes; averaging off and on in alternating windows; per window and node: steps/s,
    CPU s/s, exchanges/s."""
    args = _args(False, steps_per_second)
    run_dir = Path(tempfile.mkdtemp(prefix="ovh-", dir=base))
    sockdir = Path(tempfile.mkdtemp(prefix="gbo-"))
    specs = testnet.plan_nodes(args, run_dir, sockdir)
    procs = {s.index: testnet.launch(s, own_session=False) for s in specs}
    clean = True
    windows: dict[str, list[list[dict[str, float]]]] = {"off": [], "on": []}

    def sample() -> list[dict[str, Any]]:
        rows = []
        for s in specs:
            st = request(Path(s.socket), "status", timeout=10)
            rows.append({"t": time.monotonic(), "step": st["step"],
                         "cpu": _cpu_s(procs[s.index].pid),
                         "ex": st["exchanges_ok"] + st["exchanges_served_ok"],
                         "fail": st["exchanges_failed"] + st["exchanges_served_failed"]})
        return rows

    def measure() -> list[dict[str, float]]:
        """One window. Steps advance a chunk at a time (5000 steps when saturated), so the
        rate is taken between the first and the last step change seen by 20 Hz polling."""
        a = sample()
        changes: list[list[tuple[float, int]]] = [[] for _ in specs]
        last = [r["step"] for r in a]
        end = time.monotonic() + window
        while time.monotonic() < end:
            for i, s in enumerate(specs):
                step = request(Path(s.socket), "status", timeout=10)["step"]
                if step != last[i]:
                    changes[i].append((time.monotonic(), step))
                    last[i] = step
            time.sleep(0.05)
        b = sample()
        rows = []
        for x, y, ch in zip(a, b, changes, strict=True):
            dt = y["t"] - x["t"]
            if len(ch) >= 2 and ch[-1][0] > ch[0][0]:
                rate = (ch[-1][1] - ch[0][1]) / (ch[-1][0] - ch[0][0])
            else:
                rate = (y["step"] - x["step"]) / dt
            cpu = (y["cpu"] - x["cpu"]) / dt
            rows.append({"steps_per_s": rate, "cpu_per_s": cpu,
                         "steps_per_cpu_s": rate / cpu if cpu > 0 else 0.0,
                         "exchanges_per_s": (y["ex"] - x["ex"]) / dt,
                         "failed": y["fail"] - x["fail"]})
        return rows

    try:
        testnet.wait_ready_specs(specs, procs, time.monotonic() + testnet.READY_TIMEOUT_S)
        time.sleep(3.0)  # past start-up: first exchanges, JIT of every path
        for _ in range(repeat):
            for mode in ("off", "on"):
                _set_averaging(specs, mode == "on")
                time.sleep(2.0)
                windows[mode].append(measure())
    finally:
        for s in specs:
            clean = testnet.stop_process(s, procs[s.index]) and clean
            clean = clean and procs[s.index].returncode == 0
        shutil.rmtree(sockdir, ignore_errors=True)
    med = {mode: [{k: statistics.median(w[i][k] for w in ws) for k in ws[0][i]}
                  for i in range(len(specs))] for mode, ws in windows.items()}
    return {"steps_per_second": steps_per_second, "windows": windows, "median": med,
            "clean": clean}


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def loadavg() -> str:
    """The 1-minute load average: other work on the machine shows in every number here."""
    return Path("/proc/loadavg").read_text().split()[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--window", type=float, default=10.0, help="measurement window (s)")
    ap.add_argument("--repeat", type=int, default=5, help="off/on window pairs per node pair")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    report: dict[str, Any] = {}
    report["load_start"] = loadavg()
    if not a.json:
        print(f"# bench_overhead: windows of {a.window:g} s, {a.repeat} off/on pairs, "
              f"{os.cpu_count()} cores, load average {report['load_start']}", flush=True)
    ip = in_process(max(3, int(a.window)))
    report["in_process"] = ip
    if not a.json:
        print(f"\nin-process, chunks of {CHUNK} steps (median of 1 s blocks): off "
              f"{ip['off']:.0f} steps/s, on (one mix per chunk) {ip['on']:.0f} steps/s; "
              f"ratio on/off {ip['on'] / ip['off']:.3f}", flush=True)
    base = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    report["pairs"] = {}
    ok = True
    try:
        for sps, label in ((20.0, "paced"), (20000.0, "saturated")):
            r = pair(sps, a.window, a.repeat, base)
            ok = ok and r["clean"]
            report["pairs"][label] = r
            if a.json:
                continue
            on, off = r["median"]["on"], r["median"]["off"]
            print(f"\ntwo nodes, {label} (train.steps_per_second = {sps:g}), medians of "
                  f"{a.repeat} windows:")
            print(f"{'averaging':<10} {'steps/s per node':>20} {'CPU s/s per node':>20} "
                  f"{'steps per CPU s':>20} {'exchanges/s per node':>21} {'failed':>6}")
            for name, nodes in (("off", off), ("on", on)):
                steps = " ".join(f"{n['steps_per_s']:9.1f}" for n in nodes)
                cpu = " ".join(f"{n['cpu_per_s']:9.3f}" for n in nodes)
                eff = " ".join(f"{n['steps_per_cpu_s']:9.0f}" for n in nodes)
                ex = " ".join(f"{n['exchanges_per_s']:10.2f}" for n in nodes)
                print(f"{name:<10} {steps:>20} {cpu:>20} {eff:>20} {ex:>21} "
                      f"{sum(n['failed'] for n in nodes):>6.0f}")
            ratios = {k: _mean(on, k) / _mean(off, k)
                      for k in ("steps_per_s", "cpu_per_s", "steps_per_cpu_s")}
            print(f"ratio on/off: steps/s {ratios['steps_per_s']:.3f}, CPU "
                  f"{ratios['cpu_per_s']:.3f}, steps per CPU second "
                  f"{ratios['steps_per_cpu_s']:.3f}", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    report["load_end"] = loadavg()
    if a.json:
        print(json.dumps(report))
    else:
        print(f"# load average at the end {report['load_end']}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
