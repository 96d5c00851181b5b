"""In-process simulation of gossipd's timing model, using the real Trainer and mixing.

Timing model (the one the daemon implements):

* every node trains at ``steps_per_second`` SGD steps per (simulated) second;
* every node starts a push-pull exchange every ``interval`` seconds, jittered by
  ``+- jitter * interval``, with a uniformly random other node; BOTH nodes then
  set ``params := (mine + theirs) / 2``;
* ``--local-only`` disables exchanges (the baseline every node would get alone).

Exchanges are instantaneous here (no network latency) and a node's training
position at time t is ``floor(t * steps_per_second)`` steps.  Training is
deterministic under re-chunking (the rng lives in the TrainState), so advancing a
node lazily only when it takes part in an exchange gives exactly the result of
stepping it continuously.

Reported: accuracy of the averaged model (mean of all nodes' params), mean and
min node accuracy, and the consensus distance, at every ``--report`` seconds and
at the end.  Example (the tuning target)::

    .venv/bin/python scripts/sim.py --nodes 4 --seconds 90 --partition dirichlet:0.1
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gossipd.data import Partition, load_shard  # noqa: E402
from gossipd.mixing import consensus_distance, mean_vector, mix  # noqa: E402
from gossipd.trainer import Trainer, TrainHyper, TrainState  # noqa: E402


def simulate(
    *, nodes: int, seconds: float, partition: Partition, seed: int,
    steps_per_second: float, interval: float, jitter: float = 0.2,
    local_only: bool = False, hyper: TrainHyper | None = None,
    task: str = "digits-mlp", report: float = 0.0, verbose: bool = False,
) -> dict[str, float]:
    if nodes < 2 and not local_only:
        raise ValueError("gossip needs at least 2 nodes")
    hyper = hyper or TrainHyper()
    trainers = [
        Trainer(task, load_shard(task, num_shards=nodes, shard_index=i,
                                 partition=partition, seed=seed), hyper, seed)
        for i in range(nodes)
    ]
    states: list[TrainState] = [t.init() for t in trainers]
    rng = np.random.default_rng([seed, 7919])  # exchange schedule; independent of data

    def advance(i: int, t: float) -> None:
        target = int(t * steps_per_second + 1e-9)
        n = target - states[i].step
        if n > 0:
            states[i], _ = trainers[i].run_steps(states[i], n)

    def metrics(t: float) -> dict[str, float]:
        for i in range(nodes):
            advance(i, t)
        flats = [trainers[i].get_params(s) for i, s in enumerate(states)]
        accs = [trainers[i].evaluate(f) for i, f in enumerate(flats)]
        return {
            "t": t,
            "avg_acc": trainers[0].evaluate(mean_vector(flats)),
            "mean_acc": float(np.mean(accs)),
            "min_acc": float(np.min(accs)),
            "consensus": consensus_distance(flats),
        }

    def show(m: dict[str, float]) -> None:
        print(f"t={m['t']:6.1f}s  avg-model acc={m['avg_acc']:.4f}  "
              f"node acc mean={m['mean_acc']:.4f} min={m['min_acc']:.4f}  "
              f"consensus={m['consensus']:.4g}", flush=True)

    # Event queue: (time, kind, node).  kind 0 = exchange started by node, 1 = report.
    events: list[tuple[float, int, int]] = []
    if not local_only:
        for i in range(nodes):
            heapq.heappush(events, (float(rng.uniform(0, interval)), 0, i))
    if report > 0:
        k = 1
        while k * report < seconds:
            heapq.heappush(events, (k * report, 1, -1))
            k += 1

    exchanges = 0
    wall0 = time.perf_counter()
    while events and events[0][0] < seconds:
        t, kind, i = heapq.heappop(events)
        if kind == 1:
            if verbose:
                show(metrics(t))
            continue
        j = int(rng.integers(nodes - 1))
        j += j >= i  # uniform over the other nodes
        advance(i, t)
        advance(j, t)
        avg = mix(trainers[i].get_params(states[i]), trainers[j].get_params(states[j]))
        states[i] = trainers[i].with_params(states[i], avg)
        states[j] = trainers[j].with_params(states[j], avg)
        exchanges += 1
        step = interval * (1.0 + float(rng.uniform(-jitter, jitter)))
        heapq.heappush(events, (t + step, 0, i))

    final = metrics(seconds)
    final["exchanges"] = exchanges
    final["steps"] = states[0].step
    final["wall_s"] = time.perf_counter() - wall0
    if verbose:
        show(final)
    return final


def main(argv: list[str] | None = None) -> int:
    d = TrainHyper()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=90.0)
    ap.add_argument("--partition", type=Partition.parse, default=Partition("dirichlet", 0.1))
    ap.add_argument("--seed", type=int, nargs="+", default=[0],
                    help="one or more swarm seeds; each is a separate run")
    ap.add_argument("--steps-per-second", type=float, default=20.0)
    ap.add_argument("--interval", type=float, default=0.5, help="exchange interval_s per node")
    ap.add_argument("--jitter", type=float, default=0.2, help="interval jitter as a fraction")
    ap.add_argument("--local-only", action="store_true", help="no exchanges")
    ap.add_argument("--report", type=float, default=0.0, help="print metrics every N seconds")
    ap.add_argument("--json", action="store_true", help="print one JSON line per run")
    for name, val in d._asdict().items():
        ap.add_argument("--" + name.replace("_", "-"), type=type(val), default=val)
    a = ap.parse_args(argv)
    hyper = TrainHyper(**{k: getattr(a, k) for k in d._fields})
    print(f"# nodes={a.nodes} seconds={a.seconds} partition={a.partition} "
          f"steps/s={a.steps_per_second} interval={a.interval}+-{a.jitter * 100:.0f}% "
          f"local_only={a.local_only} {hyper}", flush=True)
    for seed in a.seed:
        m = simulate(nodes=a.nodes, seconds=a.seconds, partition=a.partition, seed=seed,
                     steps_per_second=a.steps_per_second, interval=a.interval,
                     jitter=a.jitter, local_only=a.local_only, hyper=hyper,
                     report=a.report, verbose=not a.json)
        if a.json:
            print(json.dumps({"seed": seed, **m}), flush=True)
        else:
            print(f"# seed={seed} exchanges={m['exchanges']:.0f} steps/node={m['steps']:.0f} "
                  f"wall={m['wall_s']:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
