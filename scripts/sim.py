"""In-process simulation of gossipd's timing model, using the real Trainer and mixing.

Timing model (the one the daemon implements):

* every node trains at ``steps_per_second`` SGD steps per (simulated) second;
* every node starts a push-pull exchange every ``interval`` seconds, jittered by
  ``+- jitter * interval``, with a uniformly random other node; BOTH nodes then
  set ``params := (mine + theirs) / 2``;
* ``--local-only`` disables exchanges (the baseline every node would get alone).

An exchange may take ``--latency`` seconds round trip; both nodes keep training
meanwhile and mix their current params with the (stale) vector they received,
like a daemon whose training thread runs on during the network I/O.  A node's training
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

from gossipd.data import Partition, load_shard
from gossipd.mixing import consensus_distance, mean_vector, mix
from gossipd.trainer import Trainer, TrainHyper, TrainState


def simulate(
    *, nodes: int, seconds: float, partition: Partition, seed: int,
    steps_per_second: float, interval: float, jitter: float = 0.2, latency: float = 0.0,
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

    # Event queue of (time, seq, kind, data); seq breaks ties in push order and keeps
    # heapq from ever comparing the data.  An exchange i -> j is three events:
    #   START   i snapshots its params and sends them (arrives latency/2 later);
    #   AT_PEER j mixes its CURRENT params with i's snapshot and replies with its own
    #           pre-mix params;
    #   BACK    i mixes its CURRENT params (it kept training) with j's reply.
    # With latency 0 this is exactly the symmetric push-pull average.
    start, at_peer, back, rep = 0, 1, 2, 3
    events: list[tuple[float, int, int, tuple[int, int, np.ndarray | None]]] = []
    seq = 0

    def push(t: float, kind: int, data: tuple[int, int, np.ndarray | None]) -> None:
        nonlocal seq
        heapq.heappush(events, (t, seq, kind, data))
        seq += 1

    if not local_only:
        for i in range(nodes):
            push(float(rng.uniform(0, interval)), start, (i, -1, None))
    if report > 0:
        k = 1
        while k * report < seconds:
            push(k * report, rep, (-1, -1, None))
            k += 1

    exchanges = 0
    wall0 = time.perf_counter()
    while events and events[0][0] < seconds:
        t, _, kind, (i, j, payload) = heapq.heappop(events)
        if kind == rep:
            if verbose:
                show(metrics(t))
        elif kind == start:
            j = int(rng.integers(nodes - 1))
            j += j >= i  # uniform over the other nodes
            advance(i, t)
            push(t + latency / 2, at_peer, (i, j, trainers[i].get_params(states[i])))
            step = interval * (1.0 + float(rng.uniform(-jitter, jitter)))
            push(t + step, start, (i, -1, None))
        elif kind == at_peer:
            assert payload is not None
            advance(j, t)
            mine = trainers[j].get_params(states[j])
            states[j] = trainers[j].with_params(states[j], mix(mine, payload))
            push(t + latency / 2, back, (i, j, mine))
        else:
            assert payload is not None
            advance(i, t)
            mine = trainers[i].get_params(states[i])
            states[i] = trainers[i].with_params(states[i], mix(mine, payload))
            exchanges += 1

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
    ap.add_argument("--latency", type=float, default=0.0,
                    help="round-trip time of an exchange in seconds (nodes keep training)")
    ap.add_argument("--local-only", action="store_true", help="no exchanges")
    ap.add_argument("--report", type=float, default=0.0, help="print metrics every N seconds")
    ap.add_argument("--json", action="store_true", help="print one JSON line per run")
    for name, val in d._asdict().items():
        ap.add_argument("--" + name.replace("_", "-"), type=type(val), default=val)
    a = ap.parse_args(argv)
    hyper = TrainHyper(**{k: getattr(a, k) for k in d._fields})
    print(f"# nodes={a.nodes} seconds={a.seconds} partition={a.partition} "
          f"steps/s={a.steps_per_second} interval={a.interval}+-{a.jitter * 100:.0f}% "
          f"latency={a.latency}s "
          f"local_only={a.local_only} {hyper}", flush=True)
    for seed in a.seed:
        m = simulate(nodes=a.nodes, seconds=a.seconds, partition=a.partition, seed=seed,
                     steps_per_second=a.steps_per_second, interval=a.interval,
                     jitter=a.jitter, latency=a.latency, local_only=a.local_only, hyper=hyper,
                     report=a.report, verbose=not a.json)
        if a.json:
            print(json.dumps({"seed": seed, **m}), flush=True)
        else:
            print(f"# seed={seed} exchanges={m['exchanges']:.0f} steps/node={m['steps']:.0f} "
                  f"wall={m['wall_s']:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
