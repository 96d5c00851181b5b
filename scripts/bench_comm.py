#!/usr/bin/env python3
"""Communication benchmark: bytes per node to reach a target, for the averaging algorithms.

    scripts/bench_comm.py [--seeds 0 1 2] [--nodes 8] [--configs NAME ...] [--target 0.95|auto]
                          [--lm] [--quick] [--json]

An in-process simulation like scripts/sim.py (no daemons, no network): the real per-node
Trainer (gossipd.trainer.make_trainer, 8 shards of digits-mlp under Dirichlet(0.1) label skew;
with --lm also charlm under its "topic" split), the real mixing rules (gossipd.mixing.merge,
staleness_weight), the real outer optimizer (gossipd.outer) and the real codecs
(gossipd.compress: encode/decode, ef_compress). Nothing is modelled except time.

Time model: synchronous rounds. In a round every node takes ``k`` inner steps, then the swarm
is paired by one uniformly random perfect matching and every pair exchanges:
each side sends one payload (its current params, encoded in the configuration's mode) and gets
one back. A node's bytes are the sizes of the buffers it actually encoded (what
gossipd.compress.encoded_size(n, mode) gives). So a node takes part in exactly one exchange per
round; the daemon's rule (every node starts one exchange per interval) gives two per interval on
average, so k = 10 here sends as many bytes per step as the daemon at interval 1.0 s with 20
steps/s, half its default rate: a deliberately frugal reference. The matching schedule depends
only on the seed, so all configurations of one seed see the same pairings (common random
numbers: the differences are the algorithms').

Merge rule (gossipd.compress, gossipd.mixing): both sides use the DEQUANTIZED vectors, a node's
new params are ``C + w * (R_hat - S_hat)`` with S_hat what it sent and R_hat what it got;
training does not overlap the exchange here, so C is the vector it encoded. ``w`` is 0.5, or
``staleness_weight(0.5, my_step, peer_step, halflife)`` for the staleness-aware rule. DiLoCo
configurations then apply gossipd.outer.outer_update to that pair average (pseudo-gradient
``anchor - averaged``, outer Nesterov); the inner optimizer state stays local and keeps running.

Configurations (``--configs`` picks a subset; the reference is always run):
  gossip-fp32-k10        reference: plain gossip SGD, float32 payloads, one exchange per node
                         every 10 steps
  gossip-bf16-k10        bfloat16 payloads (2 bytes a value)
  gossip-int8ef-k10      int8 blocks of 256 with one float32 scale, with error feedback
  gossip-int8ef-k40      the same, exchanging every 40 steps
  diloco-H{20,50}-fp32   DiLoCo/NoLoCo: H inner steps, pair average, outer Nesterov
  diloco-H{20,50}-int8ef the same with int8 + error-feedback payloads
  gossip-fp32-k10-restart       reference for the next row: 2 of the 8 nodes crash at step 600
                                and restart from scratch (initial params, step 0, fresh optimizer:
                                a daemon restarted without a checkpoint)
  stale-hl100-fp32-k10-restart  the same with staleness-aware weights (halflife 100 steps): the
                                others take the restarted nodes' vectors at 2^(-lag/100) of 0.5

Metrics, on the task's fixed held-out set, after every round whose step count crosses a
multiple of ``--eval-every``: the averaged model (mean of all nodes' params, the consensus the
swarm would converge to) and every node (the worst node is reported).

Target (digits): accuracy >= 0.95 on the averaged model AND on the worst node (the convention
of scripts/bench_convergence.py). ``--target auto`` uses instead, per metric, the reference's
final value (mean over seeds) minus 1 point. For charlm (perplexity, lower is better) the
target is always "auto": the reference's final perplexity times 1.05, on both.
  bytes to target  mean over seeds of the bytes a node had sent when the target was first met
                   (">B" when a seed never met it: B is its total bytes).
  x vs ref         the reference's bytes to target divided by this configuration's.
  lost             reference's final metric minus this one's, mean over seeds, in points of
                   accuracy (perplexity: this one minus the reference's), for the averaged model
                   and the worst node.
  meets            the project's acceptance target on digits: >= 4x fewer bytes to target than
                   the reference AND at most 0.5 points lost on both the averaged model and the
                   worst node.

Exit 0 (a measurement). ``--quick`` (1 seed, 600 steps with the cosine over 500, target "auto",
about a minute) is a smoke run; tests/test_bench_comm.py runs it with 4 nodes and 100 steps.
The default run (3 seeds, all configurations) takes about 4 minutes on 2 shared cores.
``--lm`` adds charlm (116 K params, one seed, 600 steps, three configurations): it is off by
default because a charlm step costs ~20-50 ms on 2 cores, i.e. minutes per configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from gossipd.compress import EFState, decode, ef_compress, ef_init, encode, encoded_size
from gossipd.mixing import mean_vector, merge, staleness_weight
from gossipd.outer import OuterState, outer_init, outer_update
from gossipd.tasks import TaskContext
from gossipd.trainer import Trainer, TrainState, make_trainer

REFERENCE = "gossip-fp32-k10"
RESTART_REFERENCE = "gossip-fp32-k10-restart"
# Outer optimizer of the DiLoCo rows (module docstring of gossipd.outer). Tuned on digits with
# this script (H = 20, int8 + error feedback, seeds 0-2; bytes to 0.95 vs the reference, final
# averaged / worst-node accuracy): lr 0.5 mu 0.9 10.3x 0.967/0.962; lr 0.4 mu 0.9 10.0x;
# lr 0.3 mu 0.9 8.7x; lr 0.2-0.3 mu 0.95 8.3x, all within 0.1 point of the reference or better.
# DiLoCo's lr 0.7 mu 0.9 lost 0.3-0.7 points, lr 1.0 mu 0.9 diverged, and without momentum
# (lr 1.0 mu 0, plain periodic averaging) H = 20 lost 1-2 points: the outer momentum is what
# makes the long interval work. H = 50 lost 1-2 points on the worst node at every setting tried.
OUTER_LR = 0.5
OUTER_MU = 0.9
# Restart scenario of the staleness rows: 2 of 8 nodes restart from scratch after a third of
# the run (step 600 of 1800), so their step count lags the others' by 600 from then on.
RESTART = 1 / 3
HALFLIFE = 100
TARGET_RATIO = 4.0  # acceptance: at least this many times fewer bytes than the reference
MAX_LOSS_POINTS = 0.5  # acceptance: at most this many accuracy points lost


@dataclass(frozen=True)
class Config:
    name: str
    k: int  # inner steps between two exchanges of a node
    mode: str = "none"  # gossipd.compress mode of the payload
    ef: bool = False  # error feedback (int8/bf16 only)
    outer_lr: float | None = None  # None: plain gossip; else DiLoCo outer Nesterov
    outer_mu: float = 0.0
    halflife: int = 0  # staleness-aware weight halflife in steps (0: off)
    restart: float = 0.0  # >0: the last quarter of the nodes restart from scratch at this
    # fraction of the run (rounded to a round)
    reference: str = REFERENCE


def _configs() -> dict[str, Config]:
    out = [
        Config(REFERENCE, 10),
        Config("gossip-bf16-k10", 10, "bf16"),
        Config("gossip-int8ef-k10", 10, "int8", ef=True),
        Config("gossip-int8ef-k40", 40, "int8", ef=True),
    ]
    for h in (20, 50):
        for mode in ("none", "int8"):
            tag = "fp32" if mode == "none" else "int8ef"
            out.append(Config(f"diloco-H{h}-{tag}", h, mode, ef=mode != "none",
                              outer_lr=OUTER_LR, outer_mu=OUTER_MU))
    out.append(Config(RESTART_REFERENCE, 10, restart=RESTART, reference=RESTART_REFERENCE))
    out.append(Config(f"stale-hl{HALFLIFE}-fp32-k10-restart", 10, halflife=HALFLIFE,
                      restart=RESTART, reference=RESTART_REFERENCE))
    return {c.name: c for c in out}


CONFIGS = _configs()


@dataclass(frozen=True)
class TaskSetup:
    task: str
    partition: str
    steps: int  # inner steps of every node over the run
    eval_every: int  # steps between evaluations
    hyper: Mapping[str, Any] = field(default_factory=dict)  # TaskContext.hyper overrides
    options: Mapping[str, Any] = field(default_factory=dict)
    target: float | None = None  # fixed target on both metrics; None: "auto"
    margin: float = 0.01  # auto target: reference final -margin (higher better) / *(1+margin)


def build_swarm(setup: TaskSetup, nodes: int, seed: int) -> list[Trainer]:
    """One real Trainer per node (jitted once; reused by every configuration of this seed)."""
    return [
        make_trainer(setup.task, TaskContext(shard_index=i, num_shards=nodes,
                                             partition=setup.partition, seed=seed,
                                             options=dict(setup.options),
                                             hyper=dict(setup.hyper)),
                     compute_dtype="float32")
        for i in range(nodes)
    ]


def _encode(cfg: Config, ef: EFState, x: np.ndarray) -> tuple[int, np.ndarray, EFState]:
    """(payload bytes, dequantized vector as sent, new error-feedback state)."""
    if cfg.ef and cfg.mode != "none":
        buf, x_hat, ef = ef_compress(ef, x, cfg.mode)
    else:
        buf = encode(x, cfg.mode)
        x_hat = decode(buf, int(x.size), cfg.mode)
    nbytes = int(np.asarray(buf).nbytes)
    assert nbytes == encoded_size(int(x.size), cfg.mode), "payload size is not encoded_size"
    return nbytes, np.asarray(x_hat, np.float32), ef


def run_config(trainers: Sequence[Trainer], cfg: Config, setup: TaskSetup,
               seed: int) -> dict[str, Any]:
    """Run one configuration on one seed; returns its history and totals."""
    n = len(trainers)
    if n < 2:
        raise ValueError("need at least 2 nodes")
    states: list[TrainState] = [t.init() for t in trainers]
    efs = [ef_init() for _ in range(n)]
    outer: list[OuterState] = [outer_init(t.get_params(s)) for t, s in zip(trainers, states,
                                                                            strict=True)]
    restarting = range(n - max(1, n // 4), n) if cfg.restart > 0 else range(0)
    restart_round = round(cfg.restart * setup.steps / cfg.k) if cfg.restart > 0 else -1
    sent = np.zeros(n, np.int64)
    rng = np.random.default_rng([seed, 104729])  # the pairing schedule: seed only
    better_max = trainers[0].higher_is_better
    history: list[dict[str, float]] = []

    def evaluate(step: int) -> None:
        flats = [t.get_params(s) for t, s in zip(trainers, states, strict=True)]
        scores = [t.evaluate(f) for t, f in zip(trainers, flats, strict=True)]
        history.append({
            "step": step,
            "bytes_per_node": float(sent.mean()),
            "avg": trainers[0].evaluate(mean_vector(flats)),
            "worst": min(scores) if better_max else max(scores),
            "mean": float(np.mean(scores)),
        })

    rounds = setup.steps // cfg.k
    next_eval = setup.eval_every
    t0 = time.perf_counter()
    for r in range(1, rounds + 1):
        if r == restart_round + 1:
            # A crashed daemon restarted without a checkpoint: initial params, step 0, fresh
            # optimizer, error-feedback and outer state. Its step count lags from now on.
            for i in restarting:
                states[i] = trainers[i].init()
                efs[i] = ef_init()
                outer[i] = outer_init(trainers[i].get_params(states[i]))
        for i in range(n):
            states[i], _ = trainers[i].run_steps(states[i], cfg.k)
        perm = rng.permutation(n)
        for a, b in zip(perm[0::2], perm[1::2], strict=False):
            xa = trainers[a].get_params(states[a])
            xb = trainers[b].get_params(states[b])
            na, xa_hat, efs[a] = _encode(cfg, efs[a], xa)
            nb, xb_hat, efs[b] = _encode(cfg, efs[b], xb)
            sent[a] += na
            sent[b] += nb
            for me, peer, cur, s_hat, r_hat in ((a, b, xa, xa_hat, xb_hat),
                                               (b, a, xb, xb_hat, xa_hat)):
                w = staleness_weight(0.5, states[me].step, states[peer].step, cfg.halflife)
                new = merge(cur, s_hat, r_hat, w)
                if cfg.outer_lr is not None:
                    new, outer[me] = outer_update(outer[me], new, cfg.outer_lr, cfg.outer_mu)
                states[me] = trainers[me].with_params(states[me], new)
        step = r * cfg.k
        if step >= next_eval or r == rounds:
            evaluate(step)
            while next_eval <= step:
                next_eval += setup.eval_every
    return {"config": cfg.name, "seed": seed, "rounds": rounds,
            "payload_bytes": encoded_size(trainers[0].num_params, cfg.mode),
            "total_bytes_per_node": float(sent.mean()), "history": history,
            "final": history[-1], "wall_s": time.perf_counter() - t0}


def _reached(h: Mapping[str, float], target: Mapping[str, float], better_max: bool) -> bool:
    if better_max:
        return h["avg"] >= target["avg"] and h["worst"] >= target["worst"]
    return h["avg"] <= target["avg"] and h["worst"] <= target["worst"]


def bytes_to_target(run: Mapping[str, Any], target: Mapping[str, float],
                    better_max: bool) -> float | None:
    for h in run["history"]:
        if _reached(h, target, better_max):
            return float(h["bytes_per_node"])
    return None


def summarize(runs: Mapping[str, list[dict[str, Any]]], setup: TaskSetup,
              better_max: bool) -> dict[str, Any]:
    """Targets, bytes to target, ratios and losses per configuration (mean over seeds)."""
    def final(name: str, metric: str) -> float:
        return float(np.mean([r["final"][metric] for r in runs[name]]))

    rows: dict[str, Any] = {}
    targets: dict[str, dict[str, float]] = {}
    for name in runs:
        ref = CONFIGS[name].reference if name in CONFIGS else REFERENCE
        if ref not in targets:
            if setup.target is not None:
                targets[ref] = {"avg": setup.target, "worst": setup.target}
            elif better_max:
                targets[ref] = {m: final(ref, m) - setup.margin for m in ("avg", "worst")}
            else:
                targets[ref] = {m: final(ref, m) * (1 + setup.margin) for m in ("avg", "worst")}
    for name, seed_runs in runs.items():
        ref = CONFIGS[name].reference if name in CONFIGS else REFERENCE
        target = targets[ref]
        reach = [bytes_to_target(r, target, better_max) for r in seed_runs]
        ref_reach = [bytes_to_target(r, target, better_max) for r in runs[ref]]
        b = float(np.mean([x if x is not None else r["total_bytes_per_node"]
                           for x, r in zip(reach, seed_runs, strict=True)]))
        rb = float(np.mean([x if x is not None else r["total_bytes_per_node"]
                            for x, r in zip(ref_reach, runs[ref], strict=True)]))
        all_reached = None not in reach
        ratio = rb / b if all_reached and None not in ref_reach and b > 0 else None
        sign = 100.0 if better_max else -1.0  # accuracy points; perplexity: plain difference
        lost = {m: sign * (final(ref, m) - final(name, m)) for m in ("avg", "worst")}
        rows[name] = {
            "reference": ref,
            "payload_bytes": seed_runs[0]["payload_bytes"],
            "bytes_to_target": b if all_reached else None,
            "bytes_to_target_lower_bound": None if all_reached else b,
            "seeds_reached": sum(x is not None for x in reach),
            "total_bytes_per_node": float(np.mean([r["total_bytes_per_node"]
                                                    for r in seed_runs])),
            "ratio_vs_reference": ratio,
            "final_avg": final(name, "avg"),
            "final_worst": final(name, "worst"),
            "lost_avg": lost["avg"],
            "lost_worst": lost["worst"],
            "wall_s": float(np.sum([r["wall_s"] for r in seed_runs])),
        }
        rows[name]["meets_target"] = bool(
            better_max and ref == REFERENCE and name != REFERENCE and ratio is not None
            and ratio >= TARGET_RATIO
            and lost["avg"] <= MAX_LOSS_POINTS and lost["worst"] <= MAX_LOSS_POINTS)
    return {"targets": targets, "rows": rows}


def bench_task(setup: TaskSetup, names: Sequence[str], nodes: int, seeds: Sequence[int],
               log: bool = True) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {}
    wanted = list(dict.fromkeys(names))
    for name in list(wanted):  # every configuration needs its reference
        ref = CONFIGS[name].reference
        if ref not in wanted:
            wanted.insert(0, ref)
    better_max = True
    for seed in seeds:
        t0 = time.perf_counter()
        trainers = build_swarm(setup, nodes, seed)
        better_max = trainers[0].higher_is_better
        if log:
            print(f"# {setup.task} seed {seed}: {nodes} trainers built "
                  f"({trainers[0].num_params} params) in {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr, flush=True)
        for name in wanted:
            run = run_config(trainers, CONFIGS[name], setup, seed)
            runs.setdefault(name, []).append(run)
            if log:
                f = run["final"]
                print(f"#   {name:<30} final avg {f['avg']:.4f} worst {f['worst']:.4f} "
                      f"bytes/node {run['total_bytes_per_node']:.3g} "
                      f"({run['wall_s']:.1f} s)", file=sys.stderr, flush=True)
    summary = summarize(runs, setup, better_max)
    return {"task": setup.task, "partition": setup.partition, "nodes": nodes,
            "seeds": list(seeds), "steps": setup.steps, "eval_every": setup.eval_every,
            "hyper": dict(setup.hyper), "options": dict(setup.options),
            "metric_higher_is_better": better_max,
            "configs": {n: asdict(CONFIGS[n]) for n in wanted},
            **summary, "runs": runs}


def _fmt_bytes(b: float) -> str:
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if b >= scale:
            return f"{b / scale:.3g} {unit}"
    return f"{b:.0f} B"


def print_table(res: Mapping[str, Any]) -> None:
    acc = res["metric_higher_is_better"]
    unit = "pt" if acc else "ppl"
    print(f"\n## {res['task']} ({res['partition']}), {res['nodes']} nodes, {res['steps']} steps, "
          f"seeds {res['seeds']}")
    for ref, t in res["targets"].items():
        print(f"target for rows vs {ref}: averaged model {t['avg']:.4f} and worst node "
              f"{t['worst']:.4f}")
    head = (f"{'config':<30} {'payload':>9} {'to target':>11} {'x vs ref':>8} "
            f"{'total':>9} {'final avg':>9} {'final worst':>11} {'lost avg':>9} "
            f"{'lost worst':>10} {'meets':>5}")
    print(head)
    for name, r in res["rows"].items():
        if r["bytes_to_target"] is not None:
            tt = _fmt_bytes(r["bytes_to_target"])
        else:
            tt = ">" + _fmt_bytes(r["bytes_to_target_lower_bound"])
        ratio = f"{r['ratio_vs_reference']:.2f}x" if r["ratio_vs_reference"] else "-"
        ref_mark = "" if r["reference"] == REFERENCE else " *"
        meets = ("yes" if r["meets_target"] else "no") if acc and not ref_mark else "-"
        print(f"{name + ref_mark:<30} {_fmt_bytes(r['payload_bytes']):>9} {tt:>11} {ratio:>8} "
              f"{_fmt_bytes(r['total_bytes_per_node']):>9} {r['final_avg']:>9.4f} "
              f"{r['final_worst']:>11.4f} {r['lost_avg']:>6.2f} {unit} {r['lost_worst']:>7.2f} "
              f"{unit} {meets:>5}")
    if any(r["reference"] != REFERENCE for r in res["rows"].values()):
        print(f"* compared with {RESTART_REFERENCE} (the same restarts)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="swarm seeds (default 0 1 2; --quick: 0)")
    ap.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=None,
                    help="configurations to run (default: all); the reference always runs")
    ap.add_argument("--steps", type=int, default=None,
                    help="inner steps per node (default 1800 = 90 s at 20 steps/s; --quick 600)")
    ap.add_argument("--decay-steps", type=int, default=None,
                    help="digits cosine length (default 1500, the tuned TrainHyper; --quick 500)")
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--target", default=None,
                    help="digits accuracy target on the averaged model and the worst node, or "
                         "'auto' (the reference's final value minus 1 point); default 0.95, "
                         "with --quick 'auto' (a 600-step run does not reach 0.95)")
    ap.add_argument("--lm", action="store_true",
                    help="also run the char-level LM (charlm, topic split): slow on 2 cores")
    ap.add_argument("--lm-steps", type=int, default=600)
    ap.add_argument("--lm-configs", nargs="+", choices=sorted(CONFIGS),
                    default=[REFERENCE, "gossip-int8ef-k10", "diloco-H20-int8ef"])
    ap.add_argument("--quick", action="store_true", help="1 seed, 600 steps (smoke run)")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ap.add_argument("--json-out", type=Path, default=None,
                    help="also write the JSON object to this file (the table still prints)")
    a = ap.parse_args(argv)
    seeds = a.seeds if a.seeds is not None else ([0] if a.quick else [0, 1, 2])
    steps = a.steps if a.steps is not None else (600 if a.quick else 1800)
    decay = a.decay_steps if a.decay_steps is not None else (500 if a.quick else None)
    names = a.configs if a.configs is not None else list(CONFIGS)
    target_arg = a.target if a.target is not None else ("auto" if a.quick else "0.95")
    target = None if target_arg == "auto" else float(target_arg)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"tasks": []}
    digits = TaskSetup("digits-mlp", "dirichlet:0.1", steps=steps, eval_every=a.eval_every,
                       hyper={} if decay is None else {"decay_steps": decay}, target=target)
    out["tasks"].append(bench_task(digits, names, a.nodes, seeds))
    if a.lm:
        lm = TaskSetup("charlm", "topic", steps=a.lm_steps, eval_every=max(a.eval_every, 50),
                       hyper={"decay_steps": a.lm_steps}, target=None, margin=0.05)
        out["tasks"].append(bench_task(lm, a.lm_configs, a.nodes, seeds[:1]))
    out["total_wall_s"] = time.perf_counter() - t0
    if a.json_out is not None:
        a.json_out.write_text(json.dumps(out))
    if a.json:
        print(json.dumps(out))
        return 0
    for res in out["tasks"]:
        print_table(res)
    rows = out["tasks"][0]["rows"]
    winners = [n for n, r in rows.items() if r["meets_target"]]
    print(f"\nacceptance (digits: >= {TARGET_RATIO:g}x fewer bytes to target than {REFERENCE}, "
          f"<= {MAX_LOSS_POINTS} points lost): "
          + (", ".join(winners) if winners else "no configuration meets it"))
    print(f"# total wall time {out['total_wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
