"""Local training: minibatch SGD with momentum on one node's shard.

The training step is a pure function in the optax style: all mutable things
(params, optimizer state, step counter, rng key) live in the immutable
:class:`TrainState`, and :meth:`Trainer.run_steps` maps a state to a new one.
That makes gossip averaging trivial and safe: the daemon replaces ``params`` via
:meth:`Trainer.with_params` between chunks and keeps everything else.

Rules and the reasons for them:

* Init params depend only on the swarm seed, so every node starts at consensus.
* Minibatch sampling uses a key derived from the seed AND the shard content, so
  nodes with different data draw independent batch streams.
* The learning rate is a function of ``state.step`` only (cosine from ``lr`` to
  ``lr_min`` over ``decay_steps``, then flat).  A small final lr is what makes
  the nodes agree at the end of a run: the drift a node picks up on its skewed
  shard between two averagings scales with lr.
* ``run_steps`` is one jitted ``fori_loop`` whose trip count is a traced
  argument, so calls with different ``n`` reuse the same compiled code.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gossipd.data import TASKS, Shard
from gossipd.model import MLPSpec, accuracy, cross_entropy, init_params


class TrainHyper(NamedTuple):
    """Hyperparameters.  Defaults tuned with ``scripts/sim.py`` for the recommended
    daemon pacing of ``steps_per_second = 20`` and ``averaging.interval_s = 0.5``:

    * 4 nodes, Dirichlet(0.1), 90 s, seeds 0-2: averaged model 0.976-0.978, every
      node >= 0.973 (local-only: mean node accuracy 0.48-0.58);
    * still >= 0.95 per node when the daemon only manages 10 steps/s (lr not fully
      decayed), exchanges only every 1.0 s, or with 0.2 s exchange latency.

    ``decay_steps = 1500`` ends the cosine at 75 s of a 90 s run at 20 steps/s, so
    the last 15 s run at ``lr_min`` and the swarm settles into consensus.
    Momentum 0.9 with lr 0.1 (effective step ~1.0) trained faster than plain SGD
    at lr 0.5 in the simulation; batch 16/32/64 made no measurable difference.
    """

    hidden: int = 64
    lr: float = 0.1
    lr_min: float = 0.005
    decay_steps: int = 1500
    batch_size: int = 32
    l2: float = 1e-4
    momentum: float = 0.9


class TrainState(NamedTuple):
    params: jax.Array  # flat float32 vector, layout in gossipd.model
    opt_state: Any  # optax state (momentum trace); stays local, never averaged
    step: int  # number of SGD steps this node has taken
    rng: jax.Array  # typed PRNG key for minibatch sampling


def check_hyper(h: TrainHyper) -> None:
    if h.hidden < 1:
        raise ValueError(f"hidden must be >= 1, got {h.hidden}")
    if not (h.lr > 0 and 0 <= h.lr_min <= h.lr):
        raise ValueError(f"need 0 <= lr_min <= lr and lr > 0, got lr={h.lr} lr_min={h.lr_min}")
    if h.decay_steps < 1:
        raise ValueError(f"decay_steps must be >= 1, got {h.decay_steps}")
    if h.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {h.batch_size}")
    if h.l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {h.l2}")
    if not 0 <= h.momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {h.momentum}")


def learning_rate(h: TrainHyper, step: jax.Array | int) -> jax.Array:
    """Cosine decay from ``h.lr`` to ``h.lr_min`` over ``h.decay_steps``, then constant."""
    frac = jnp.minimum(jnp.asarray(step, jnp.float32) / h.decay_steps, 1.0)
    return h.lr_min + 0.5 * (h.lr - h.lr_min) * (1.0 + jnp.cos(jnp.pi * frac))


def make_optimizer(h: TrainHyper) -> optax.GradientTransformation:
    """L2 as decayed weights, then heavy-ball momentum.  The lr is applied outside
    (from ``state.step``) so the schedule does not live in the optimizer state."""
    return optax.chain(optax.add_decayed_weights(h.l2), optax.trace(decay=h.momentum))


def make_run_steps(spec: MLPSpec, h: TrainHyper, tx: optax.GradientTransformation) -> Any:
    """Pure function running ``n`` SGD steps; returns new pieces and the loss sum."""
    grad_fn = jax.value_and_grad(lambda p, x, y: cross_entropy(spec, p, x, y))

    def run(
        params: jax.Array, opt_state: Any, step: jax.Array, rng: jax.Array,
        n: jax.Array, x: jax.Array, y: jax.Array,
    ) -> tuple[jax.Array, Any, jax.Array, jax.Array]:
        def body(i: jax.Array, carry: Any) -> Any:
            params, opt_state, rng, loss_sum = carry
            rng, sub = jax.random.split(rng)
            # Sample with replacement: cheap, and correct for any shard size.
            idx = jax.random.randint(sub, (h.batch_size,), 0, x.shape[0])
            loss, grads = grad_fn(params, x[idx], y[idx])
            updates, opt_state = tx.update(grads, opt_state, params)
            params = params - learning_rate(h, step + i) * updates
            return params, opt_state, rng, loss_sum + loss

        init = (params, opt_state, rng, jnp.zeros((), jnp.float32))
        params, opt_state, rng, loss_sum = jax.lax.fori_loop(0, n, body, init)
        return params, opt_state, rng, loss_sum

    return run


def _shard_tag(shard: Shard) -> int:
    """Stable 31-bit fingerprint of the shard's content (selects the batch stream)."""
    crc = zlib.crc32(np.ascontiguousarray(shard.x_train).tobytes())
    crc = zlib.crc32(np.ascontiguousarray(shard.y_train).tobytes(), crc)
    return crc & 0x7FFFFFFF


class Trainer:
    """Owns the jitted functions for one task/shard/hyper; the state is passed in and out.

    The Trainer holds no mutable training state, so the daemon may keep a
    TrainState, swap its params after a gossip exchange, and continue.  Calls are
    meant to come from a single worker thread (they block for the compute).
    """

    def __init__(self, task: str, shard: Shard, hyper: TrainHyper, seed: int) -> None:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
        check_hyper(hyper)
        if len(shard.y_train) == 0:
            raise ValueError("empty shard: nothing to train on")
        self.task = task
        self.hyper = hyper
        self.seed = seed
        self.model = MLPSpec(hidden=hyper.hidden)
        self.spec = f"{task}/{self.model.fingerprint}/f32"
        self.num_params = self.model.num_params
        # Where the arrays live: JAX picks the accelerator when it sees one, else the CPU.
        self.device = str(jax.devices()[0])
        # Number of times run_steps has been traced (compiled); tests assert it stays 1.
        self.trace_count = 0
        self._shard_tag = _shard_tag(shard)
        # What the provenance ledger records about the local data: its hash, never the data.
        digest = hashlib.blake2b(digest_size=32)
        for part in (shard.x_train, shard.y_train):
            digest.update(np.ascontiguousarray(part).tobytes())
        self.data_hash = digest.digest()
        self.data_samples = len(shard.y_train)
        self._x = jnp.asarray(shard.x_train, jnp.float32)
        self._y = jnp.asarray(shard.y_train, jnp.int32)
        self._x_test = jnp.asarray(shard.x_test, jnp.float32)
        self._y_test = jnp.asarray(shard.y_test, jnp.int32)
        self._tx = make_optimizer(hyper)
        run = make_run_steps(self.model, hyper, self._tx)

        def counted(*args: Any) -> Any:
            self.trace_count += 1  # Python side effect: runs only while tracing
            return run(*args)

        self._run = jax.jit(counted)
        model = self.model
        self._acc = jax.jit(lambda p, x, y: accuracy(model, p, x, y))

    def init(self) -> TrainState:
        root = jax.random.key(self.seed)
        params = init_params(self.model, jax.random.fold_in(root, 0))
        rng = jax.random.fold_in(jax.random.fold_in(root, 1), self._shard_tag)
        return TrainState(params=params, opt_state=self._tx.init(params), step=0, rng=rng)

    def run_steps(self, state: TrainState, n: int) -> tuple[TrainState, float]:
        """``n`` SGD steps on the local shard; returns the new state and the mean loss.

        ``n == 0`` returns the state unchanged and a NaN loss.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if n == 0:
            return state, math.nan
        params, opt_state, rng, loss_sum = self._run(
            state.params, state.opt_state, jnp.asarray(state.step, jnp.int32), state.rng,
            jnp.asarray(n, jnp.int32), self._x, self._y,
        )
        new = TrainState(params=params, opt_state=opt_state, step=state.step + n, rng=rng)
        return new, float(loss_sum) / n

    def _check_flat(self, flat: np.ndarray) -> np.ndarray:
        a = np.asarray(flat)
        if a.shape != (self.num_params,):
            raise ValueError(f"expected a flat vector of {self.num_params} params "
                             f"({self.spec}), got shape {a.shape}")
        a = a.astype(np.float32, copy=False)
        if not np.all(np.isfinite(a)):
            raise ValueError("params contain NaN or inf")
        return a

    def evaluate(self, flat: np.ndarray) -> float:
        """Accuracy of ``flat`` on the fixed test set (same set on every node)."""
        p = jnp.asarray(self._check_flat(flat))
        return float(self._acc(p, self._x_test, self._y_test))

    def get_params(self, state: TrainState) -> np.ndarray:
        """A float32 1-d numpy copy of the params (safe to mutate or send)."""
        return np.array(state.params, dtype=np.float32, copy=True)

    def with_params(self, state: TrainState, flat: np.ndarray) -> TrainState:
        """Replace the params (e.g. after averaging); opt_state, step and rng are kept."""
        # jnp.array copies, so later changes to the caller's buffer cannot leak in.
        return state._replace(params=jnp.array(self._check_flat(flat)))
