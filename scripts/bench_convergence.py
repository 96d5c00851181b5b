#!/usr/bin/env python3
"""Convergence: gossip vs local-only vs exact all-reduce, 8 virtual nodes, digits, in one run.

    scripts/bench_convergence.py [--nodes 8] [--seeds 0 1 2] [--local-steps 5 10]
                                 [--partitions iid dirichlet:0.1] [--target 0.95] [--json]

Every mode runs the same JAX task in one process (scripts/swarm_sim.py): gossipd's trainer step
vmapped over the nodes, the swarm's shards from gossipd.data, the default TrainHyper.

  round       every node takes k local SGD steps, then the swarm exchanges once:
  gossip      every node starts one push-pull with a uniformly random other node (in a random
              order) and both set mix(mine, theirs, 0.5), gossipd.mixing.mix as the daemon does;
  all-reduce  every node gets the exact mean (gossipd.mixing.mean_vector);
  local-only  no exchange.
  bytes       gossip sends 2 parameter vectors per node per round on average (one as initiator,
              one as responder); a ring all-reduce sends 2(N-1)/N = 1.75 for N = 8. So the
              reference gets at most the bytes gossip gets.
  rounds      1500/k, i.e. the whole cosine schedule (decay_steps = 1500).
  seconds     daemon time: a round is k steps at train.steps_per_second = 20, i.e. k = 10 is the
              daemon's default averaging.interval_s = 0.5 s, k = 5 is interval_s = 0.25 s.
  to target   first round at which the accuracy (shared 450-image test set) is >= target: of the
              averaged model (mean of all nodes' parameters), of the mean node and of the worst
              node. A run that never gets there counts as its total rounds, shown as ">R".
              "s to target" is the averaged model's, in daemon seconds, mean over the seeds.
  final       accuracy after the last round, mean over the seeds.

The ratio lines compare gossip with all-reduce in the same run, summed over the seeds. Exit 0
(this is a measurement).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from swarm_sim import SimResult, simulate

from gossipd.data import Partition
from gossipd.trainer import TrainHyper

MODES = {"local-only": "local", "gossip": "initiate", "all-reduce": "allreduce"}
METRICS = (("avg_acc", "averaged model"), ("mean_acc", "mean node"), ("min_acc", "worst node"))
STEPS_PER_SECOND = 20.0


def rounds_to(res: SimResult, metric: str, target: float) -> int | None:
    return res.first_round(metric, target)


def _cell(values: list[int | None], total: int) -> str:
    return " ".join(str(v) if v is not None else f">{total}" for v in values)


def _sum(values: list[int | None], total: int) -> int:
    return sum(total if v is None else v for v in values)


def bench(nodes: int, seeds: list[int], local_steps: list[int], partitions: list[str],
          target: float, verbose: bool = True) -> dict[str, Any]:
    hyper = TrainHyper()
    out: dict[str, Any] = {"nodes": nodes, "seeds": seeds, "target": target, "cases": []}
    for part in partitions:
        for k in local_steps:
            rounds = hyper.decay_steps // k
            case: dict[str, Any] = {"partition": part, "local_steps": k, "rounds": rounds,
                                    "round_s": k / STEPS_PER_SECOND, "modes": {}}
            for label, mode in MODES.items():
                runs = [simulate(nodes=nodes, mode=mode, partition=Partition.parse(part),
                                 seed=s, rounds=rounds, local_steps=k, hyper=hyper)
                        for s in seeds]
                case["modes"][label] = {
                    "to_target": {m: [rounds_to(r, m, target) for r in runs] for m, _ in METRICS},
                    "final_avg_acc": [r.final.avg_acc for r in runs],
                    "final_min_acc": [r.final.min_acc for r in runs],
                    "final_consensus": [r.final.consensus for r in runs],
                    "vectors_per_node_per_round": runs[0].vectors_sent_per_node / rounds,
                    "wall_s": [r.wall_s for r in runs],
                }
            g, a = case["modes"]["gossip"], case["modes"]["all-reduce"]
            case["ratio_gossip_allreduce"] = {
                m: _sum(g["to_target"][m], rounds) / _sum(a["to_target"][m], rounds)
                for m, _ in METRICS}
            out["cases"].append(case)
            if verbose:
                print_case(case, target, seeds)
    return out


def print_case(case: dict[str, Any], target: float, seeds: list[int]) -> None:
    r, k = case["rounds"], case["local_steps"]
    print(f"\n## {case['partition']}, k = {k} local steps per round ({case['round_s']:g} s of "
          f"daemon time), {r} rounds; rounds to {target:g} per seed {seeds}")
    print(f"{'mode':<11} {'avg model':>15} {'mean node':>15} {'worst node':>15} "
          f"{'s to target':>11} {'final avg':>9} {'final worst':>11} {'vec/node/rnd':>12} "
          f"{'wall s':>6}")
    for label, m in case["modes"].items():
        tt = m["to_target"]
        n = len(seeds)
        # daemon seconds for the averaged model, mean over seeds; ">" when a seed never got there
        secs = _sum(tt["avg_acc"], r) / n * case["round_s"]
        never = ">" if None in tt["avg_acc"] else ""
        print(f"{label:<11} {_cell(tt['avg_acc'], r):>15} {_cell(tt['mean_acc'], r):>15} "
              f"{_cell(tt['min_acc'], r):>15} {never + f'{secs:.1f}':>11} "
              f"{sum(m['final_avg_acc']) / n:>9.4f} {sum(m['final_min_acc']) / n:>11.4f} "
              f"{m['vectors_per_node_per_round']:>12.2f} {sum(m['wall_s']) / n:>6.2f}")
    ratio = case["ratio_gossip_allreduce"]
    print("ratio gossip/all-reduce, rounds to target (sum over seeds): "
          + ", ".join(f"{name} {ratio[m]:.2f}x" for m, name in METRICS))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--local-steps", type=int, nargs="+", default=[5, 10])
    ap.add_argument("--partitions", nargs="+", default=["iid", "dirichlet:0.1"])
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--json", action="store_true", help="one JSON object instead of tables")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    if not a.json:
        print(f"# bench_convergence: {a.nodes} nodes, digits-mlp, {TrainHyper()}")
    out = bench(a.nodes, a.seeds, a.local_steps, a.partitions, a.target, verbose=not a.json)
    out["total_wall_s"] = time.perf_counter() - t0
    if a.json:
        print(json.dumps(out))
        return 0
    print(f"\n# summary: gossip/all-reduce rounds to {a.target:g} "
          f"(bytes per node per round: gossip 2.00, all-reduce {2 * (a.nodes - 1) / a.nodes:.2f})")
    print(f"{'split':<15} {'k':>3} " + " ".join(f"{name:>15}" for _, name in METRICS))
    for c in out["cases"]:
        ratio = c["ratio_gossip_allreduce"]
        print(f"{c['partition']:<15} {c['local_steps']:>3} "
              + " ".join(f"{ratio[m]:>14.2f}x" for m, _ in METRICS))
    print(f"# total wall time {out['total_wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
