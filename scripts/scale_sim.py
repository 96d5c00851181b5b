#!/usr/bin/env python3
"""Scale simulation: 64 to 1024 virtual gossipd nodes in one process, random pairwise gossip with
churn, to see how consensus distance and accuracy behave as the swarm grows.

    scripts/scale_sim.py [--sizes 64 256 1024] [--partition dirichlet:0.1]
                         [--settings "interval 0.5 s" ...] [--plot docs/results/scale_sim.png]

The nodes are scripts/swarm_sim.py's: gossipd's trainer step (gossipd.trainer.make_run_steps
on gossipd.model, default TrainHyper) vmapped over all nodes with jax.vmap, parameters mixed with
gossipd.mixing.mix, shards from gossipd.data for a swarm of that size. The total train set is
fixed (1347 digits), so a bigger swarm means smaller shards: at 1024 nodes a node holds 1 or 2
images.

Each round every online node takes k local steps, then `matching` pairing: 2 random perfect
matchings of the online nodes, each pair averaging (weight 0.5). Two exchanges per node per
round is what a daemon sees per averaging.interval_s (it starts one and is picked for about
one); so at train.steps_per_second = 20, k = 10 stands for interval_s = 0.5 s (the default),
k = 20 for 1 s, k = 40 for 2 s. Every run covers the same 1500 local steps (the whole cosine
schedule), i.e. 75 s of daemon time.

Churn (all settings but "no churn"): on average 10% of the nodes are offline, for 100 steps
(5 s) on average; an offline node neither trains nor exchanges, and half of the returning nodes
come back as a restarted daemon does (initial parameters, step 0). Metrics are over the online
nodes: accuracy of their averaged model, the mean, 10th percentile and minimum of their own
accuracies, and their consensus distance (mean squared L2 distance to their mean).

Prints one line per (size, setting) with the wall time of the run, writes the plot (consensus
distance and accuracy over the steps, one column per size) and, with --json, the series.
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

from swarm_sim import ROOT, Churn, SimResult, as_dict, simulate

from gossipd.data import Partition

TOTAL_STEPS = 1500
STEPS_PER_SECOND = 20.0
SETTINGS: dict[str, dict[str, Any]] = {
    "interval 0.5 s": {"local_steps": 10, "churn": True},
    "interval 0.5 s, no churn": {"local_steps": 10, "churn": False},
    "interval 1 s": {"local_steps": 20, "churn": True},
    "interval 2 s": {"local_steps": 40, "churn": True},
}
COLOURS = ("black", "tab:gray", "tab:blue", "tab:orange", "tab:green", "tab:red")


def run_one(nodes: int, setting: str, partition: Partition, seed: int, churn: Churn
            ) -> SimResult:
    cfg = SETTINGS[setting]
    k = int(cfg["local_steps"])
    c = Churn(churn.offline_frac, churn.mean_offline_rounds / k, churn.crash_frac) \
        if cfg["churn"] else Churn()
    return simulate(nodes=nodes, mode="matching", partition=partition, seed=seed,
                    rounds=TOTAL_STEPS // k, local_steps=k, matchings=2, churn=c,
                    eval_every=max(1, 50 // k))


def steps_to(res: SimResult, k: int, target: float) -> int | None:
    r = res.first_round("avg_acc", target)
    return None if r is None else r * k


def plot(path: Path, results: dict[tuple[int, str], SimResult], sizes: list[int],
         settings: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(sizes), figsize=(4.2 * len(sizes), 6.4), squeeze=False,
                             sharey="row")
    for col, n in enumerate(sizes):
        top, bottom = axes[0][col], axes[1][col]
        for j, setting in enumerate(settings):
            res = results.get((n, setting))
            if res is None:
                continue
            k = SETTINGS[setting]["local_steps"]
            steps = [r.round * k for r in res.rounds]
            colour = COLOURS[j % len(COLOURS)]
            top.plot(steps, [max(r.consensus, 1e-12) for r in res.rounds], color=colour,
                     lw=1.3, label=setting)
            bottom.plot(steps, [r.avg_acc for r in res.rounds], color=colour, lw=1.5,
                        label=f"{setting}: averaged model")
            bottom.plot(steps, [r.p10_acc for r in res.rounds], color=colour, lw=1, ls="--",
                        label=f"{setting}: 10th pct node")
        top.set_yscale("log")
        top.set_title(f"{n} nodes", fontsize=10)
        bottom.set_xlabel("local steps per node (75 s of daemon time at 1500)")
        bottom.set_ylim(0, 1)
        for ax in (top, bottom):
            ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("consensus distance (online nodes)")
    axes[1][0].set_ylabel("test accuracy")
    axes[0][-1].legend(fontsize=7)
    axes[1][-1].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--partition", type=Partition.parse, default=Partition("dirichlet", 0.1))
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--offline", type=float, default=0.1, help="mean offline fraction (churn)")
    ap.add_argument("--offline-steps", type=float, default=100.0,
                    help="mean length of an offline spell, in local steps")
    ap.add_argument("--crash-frac", type=float, default=0.5,
                    help="share of returning nodes that restart from the initial parameters")
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "results" / "scale_sim.png")
    ap.add_argument("--json", type=Path, help="write every run's series to this file")
    a = ap.parse_args(argv)
    churn = Churn(a.offline, a.offline_steps, a.crash_frac)
    print(f"# scale_sim: partition {a.partition}, {TOTAL_STEPS} local steps per node, "
          f"2 matchings per round, churn {a.offline:.0%} offline x {a.offline_steps:g} steps "
          f"({a.crash_frac:.0%} of returns restart), seed {a.seed}", flush=True)
    print(f"{'nodes':>5} {'setting':<25} {'rounds':>6} {'shard':>5} {'avg model':>9} "
          f"{'mean node':>9} {'p10 node':>8} {'min node':>8} {'consensus':>9} "
          f"{'steps to 0.9':>12} {'online':>6} {'wall s':>7}", flush=True)
    results: dict[tuple[int, str], SimResult] = {}
    t0 = time.perf_counter()
    for n in a.sizes:
        for setting in a.settings:
            t1 = time.perf_counter()
            res = run_one(n, setting, a.partition, a.seed, churn)
            wall = time.perf_counter() - t1  # set-up and compile included
            results[(n, setting)] = res
            k = SETTINGS[setting]["local_steps"]
            f = res.final
            reach = steps_to(res, k, 0.9)
            shard = 1347 / n
            print(f"{n:>5} {setting:<25} {TOTAL_STEPS // k:>6} {shard:>5.1f} {f.avg_acc:>9.4f} "
                  f"{f.mean_acc:>9.4f} {f.p10_acc:>8.4f} {f.min_acc:>8.4f} {f.consensus:>9.3g} "
                  f"{'never' if reach is None else reach:>12} {f.online:>6} {wall:>7.1f}",
                  flush=True)
    print(f"# total wall time {time.perf_counter() - t0:.0f} s")
    try:
        plot(a.plot, results, a.sizes, a.settings)
        print(f"# plot: {a.plot}")
    except ImportError:
        print("# no plot: matplotlib is not installed (pip install -e '.[report]')")
    if a.json:
        a.json.write_text(json.dumps({f"{n}/{s}": as_dict(r) for (n, s), r in results.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
