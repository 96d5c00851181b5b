"""A swarm of virtual gossipd nodes in one process: the daemon's trainer step vmapped over nodes.

Used by scripts/bench_convergence.py (8 nodes) and scripts/scale_sim.py (64-1024 nodes). Not a
daemon model of time: the swarm advances in synchronous rounds.

One round:
  1. every online node takes ``local_steps`` SGD steps on its own shard with the daemon's step
     function (gossipd.trainer.make_run_steps on gossipd.model, vmapped with jax.vmap, one jit);
  2. the nodes exchange, with gossipd.mixing.mix (the rule gossipd.runner applies) or
     gossipd.mixing.mean_vector (the all-reduce reference):
       * ``initiate``: every online node, in a random order, starts one push-pull with a uniformly
         random other online node and both set ``mix(mine, theirs, weight)``; an exchange sees the
         result of the exchanges before it in the round. This is the daemon's rule (each node
         starts one exchange per averaging.interval_s); a node sends 2 vectors per round on
         average (one as initiator, one per time it is picked).
       * ``matching``: ``matchings`` random perfect matchings of the online nodes; in each, all
         pairs mix at once (one mix() call over the concatenated pair rows, element for element
         the same rule). Each node sends exactly ``matchings`` vectors per round.
       * ``allreduce``: every node gets the exact mean (a ring all-reduce sends 2(N-1)/N vectors
         per node).
       * ``local``: no exchange.
Only parameters are mixed; optimizer state, step and rng stay local, as in the daemon. Training
and exchanges do not overlap within a round, so the daemon's rule for an exchange that overlapped
training (current + w * (remote - sent)) reduces to mix(sent, remote, w), which is what runs here.

Shards come from gossipd.data.shard_indices, so they are the shards real nodes of a swarm of
that size would hold. vmap needs one array shape for all nodes: each shard is repeated cyclically
to a common length (``TILE`` times the largest shard), so sampling with replacement over the
padded array weights a node's samples equally to within 1/TILE (exactly for the largest shard).

Churn (optional): each round an online node goes offline with probability p_leave and an offline
node comes back with probability 1/mean_offline_rounds; p_leave is set so that ``offline_frac``
of the nodes are offline on average. An offline node neither trains nor exchanges (a paused or
partitioned node). A returning node was a crash with probability ``crash_frac``: like a
restarted daemon (which does not load a checkpoint) it comes back with the initial parameters,
step 0 and fresh optimizer state; otherwise it comes back with its stale state.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from gossipd.data import Partition, load_test_set, load_train_set, shard_indices  # noqa: E402
from gossipd.mixing import consensus_distance, mean_vector, mix  # noqa: E402
from gossipd.model import MLPSpec, accuracy, init_params  # noqa: E402
from gossipd.trainer import TrainHyper, make_optimizer, make_run_steps  # noqa: E402

TILE = 16
MODES = ("local", "initiate", "matching", "allreduce")


@dataclass(frozen=True)
class Churn:
    offline_frac: float = 0.0
    mean_offline_rounds: float = 10.0
    crash_frac: float = 0.5

    @property
    def p_return(self) -> float:
        return 1.0 / self.mean_offline_rounds

    @property
    def p_leave(self) -> float:
        f = self.offline_frac
        return 0.0 if f <= 0 else f / (1.0 - f) * self.p_return


@dataclass
class RoundLog:
    round: int
    avg_acc: float
    mean_acc: float
    min_acc: float
    p10_acc: float  # 10th percentile of the node accuracies
    consensus: float
    online: int


@dataclass
class SimResult:
    nodes: int
    mode: str
    rounds: list[RoundLog] = field(default_factory=list)
    vectors_sent_per_node: float = 0.0  # parameter vectors sent per node, whole run
    wall_s: float = 0.0

    def first_round(self, metric: str, target: float) -> int | None:
        for r in self.rounds:
            if getattr(r, metric) >= target:
                return r.round
        return None

    @property
    def final(self) -> RoundLog:
        return self.rounds[-1]


def padded_shards(task: str, nodes: int, partition: Partition, seed: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x [N, L, d], y [N, L], sizes [N]): every node's shard repeated cyclically to length L."""
    idx = shard_indices(task, num_shards=nodes, partition=partition, seed=seed)
    x_tr, y_tr = load_train_set(task)
    sizes = np.array([len(i) for i in idx])
    length = int(sizes.max()) * TILE
    rows = np.stack([np.resize(i, length) for i in idx])  # np.resize repeats cyclically
    return x_tr[rows], y_tr[rows], sizes


@cache
def _compiled(hyper: TrainHyper) -> tuple[Any, Any, Any]:
    """The jitted vmapped step, accuracy and optimizer init; shared by every swarm of one hyper
    (XLA compiles once per array shape)."""
    spec = MLPSpec(hidden=hyper.hidden)
    tx = make_optimizer(hyper)
    run = make_run_steps(spec, hyper, tx)
    # params, opt_state, step, rng, x, y are per node; the trip count n is shared.
    vrun = jax.jit(jax.vmap(run, in_axes=(0, 0, 0, 0, None, 0, 0)))
    vacc = jax.jit(jax.vmap(lambda p, x, y: accuracy(spec, p, x, y), in_axes=(0, None, None)))
    return vrun, vacc, jax.jit(jax.vmap(tx.init))


class VirtualSwarm:
    def __init__(self, *, nodes: int, partition: Partition, seed: int,
                 hyper: TrainHyper | None = None, task: str = "digits-mlp") -> None:
        self.n = nodes
        self.hyper = hyper or TrainHyper()
        self.spec = MLPSpec(hidden=self.hyper.hidden)
        self._run, acc, self._init_opt = _compiled(self.hyper)
        x, y, self.shard_sizes = padded_shards(task, nodes, partition, seed)
        self._x = jnp.asarray(x, jnp.float32)
        self._y = jnp.asarray(y, jnp.int32)
        xt, yt = load_test_set(task)
        xt_j, yt_j = jnp.asarray(xt, jnp.float32), jnp.asarray(yt, jnp.int32)
        self._acc = lambda p: acc(p, xt_j, yt_j)
        root = jax.random.key(seed)
        # Same initial parameters on every node (the swarm seed), as Trainer.init does.
        self.init_params = np.asarray(init_params(self.spec, jax.random.fold_in(root, 0)),
                                      np.float32)
        self.params = np.tile(self.init_params, (nodes, 1))
        self.opt_state = self._init_opt(jnp.asarray(self.params))
        self.step = np.zeros(nodes, np.int32)
        self.rng = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(root, 1), i))(
            jnp.arange(nodes))

    # -- the two halves of a round --
    def train(self, local_steps: int, online: np.ndarray) -> None:
        p, o, r, _loss = self._run(jnp.asarray(self.params), self.opt_state,
                                   jnp.asarray(self.step), self.rng,
                                   jnp.int32(local_steps), self._x, self._y)
        if online.all():
            self.params, self.opt_state, self.rng = np.array(p), o, r
        else:
            keep = jnp.asarray(online)

            def pick(new: jax.Array, old: jax.Array) -> jax.Array:
                mask = keep.reshape((-1,) + (1,) * (new.ndim - 1))
                return jnp.where(mask, new, old)

            self.params = np.where(online[:, None], np.asarray(p), self.params)
            self.opt_state = jax.tree.map(pick, o, self.opt_state)
            self.rng = jax.random.wrap_key_data(
                pick(jax.random.key_data(r), jax.random.key_data(self.rng)))
        self.step = self.step + np.where(online, local_steps, 0).astype(np.int32)

    def exchange(self, mode: str, online: np.ndarray, rng: np.random.Generator, *,
                 weight: float = 0.5, matchings: int = 2) -> float:
        """Apply one round of `mode`; returns parameter vectors sent (all nodes together)."""
        live = np.flatnonzero(online)
        if mode == "local" or len(live) < 2:
            return 0.0
        p = self.params
        if mode == "allreduce":
            p[live] = mean_vector(list(p[live]))
            return 2.0 * (len(live) - 1)  # ring all-reduce: 2(N-1)/N vectors from each node
        if mode == "initiate":
            for i in rng.permutation(live):
                j = live[int(rng.integers(len(live) - 1))]
                if j == i:
                    j = live[-1]  # uniform over the other online nodes
                a, b = p[i], p[j]
                p[i], p[j] = mix(a, b, weight), mix(b, a, weight)
            return 2.0 * len(live)
        if mode == "matching":
            sent = 0.0
            for _ in range(matchings):
                perm = rng.permutation(live)
                half = len(perm) // 2
                ia, ib = perm[:half], perm[half:2 * half]
                a, b = p[ia].ravel(), p[ib].ravel()
                shape = (half, p.shape[1])
                p[ia], p[ib] = mix(a, b, weight).reshape(shape), mix(b, a, weight).reshape(shape)
                sent += 2.0 * half
            return sent
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")

    def restart(self, who: np.ndarray) -> None:
        """Crashed nodes come back as a fresh daemon: initial params, step 0, new momentum."""
        if not who.any():
            return
        self.params[who] = self.init_params
        self.step[who] = 0
        fresh = self._init_opt(jnp.asarray(self.params))
        mask = jnp.asarray(who)
        self.opt_state = jax.tree.map(
            lambda f, o: jnp.where(mask.reshape((-1,) + (1,) * (f.ndim - 1)), f, o),
            fresh, self.opt_state)

    def measure(self, round_no: int, online: np.ndarray) -> RoundLog:
        """Metrics of the online nodes (all of them without churn): the averaged model is the
        mean of their parameters, consensus their mean squared distance to it."""
        live = self.params[online]
        accs = np.asarray(self._acc(jnp.asarray(live)))
        avg = mean_vector(list(live))
        avg_acc = float(np.asarray(self._acc(jnp.asarray(avg[None])))[0])
        return RoundLog(round=round_no, avg_acc=avg_acc, mean_acc=float(accs.mean()),
                        min_acc=float(accs.min()), p10_acc=float(np.percentile(accs, 10)),
                        consensus=consensus_distance(list(live)), online=int(online.sum()))


def simulate(*, nodes: int, mode: str, partition: Partition, seed: int, rounds: int,
             local_steps: int, weight: float = 0.5, matchings: int = 2,
             churn: Churn | None = None, eval_every: int = 1,
             hyper: TrainHyper | None = None, verbose: bool = False) -> SimResult:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    churn = churn or Churn()
    swarm = VirtualSwarm(nodes=nodes, partition=partition, seed=seed, hyper=hyper)
    rng = np.random.default_rng([seed, 7919])  # pairing and churn; independent of the data
    online = np.ones(nodes, bool)
    result = SimResult(nodes=nodes, mode=mode)
    sent = 0.0
    # Compile before the clock starts: the wall time is the rounds' cost, not XLA's.
    jax.block_until_ready(swarm._run(jnp.asarray(swarm.params), swarm.opt_state,
                                     jnp.asarray(swarm.step), swarm.rng, jnp.int32(1),
                                     swarm._x, swarm._y))
    t0 = time.perf_counter()
    for r in range(1, rounds + 1):
        if churn.offline_frac > 0:
            u = rng.random(nodes)
            back = ~online & (u < churn.p_return)
            leave = online & (u < churn.p_leave)
            swarm.restart(back & (rng.random(nodes) < churn.crash_frac))
            online = (online & ~leave) | back
        swarm.train(local_steps, online)
        sent += swarm.exchange(mode, online, rng, weight=weight, matchings=matchings)
        if r % eval_every == 0 or r == rounds:
            log = swarm.measure(r, online)
            result.rounds.append(log)
            if verbose:
                print(f"  round {r:4d} avg {log.avg_acc:.4f} mean {log.mean_acc:.4f} "
                      f"min {log.min_acc:.4f} consensus {log.consensus:.3g} "
                      f"online {log.online}", flush=True)
    result.wall_s = time.perf_counter() - t0
    result.vectors_sent_per_node = sent / nodes
    return result


def as_dict(res: SimResult) -> dict[str, Any]:
    return {"nodes": res.nodes, "mode": res.mode, "wall_s": res.wall_s,
            "vectors_sent_per_node": res.vectors_sent_per_node,
            "rounds": [vars(r) for r in res.rounds]}
