"""Local training of any Task: jitted minibatch steps on one node's data.

The training step is a pure function in the optax style: all mutable things (params, optimizer
state, step counter, rng key) live in the immutable :class:`TrainState`, and
:meth:`Trainer.run_steps` maps a state to a new one. That makes gossip averaging trivial and
safe: the daemon replaces ``params`` via :meth:`Trainer.with_params` between chunks and keeps
everything else.

Rules and the reasons for them:

* On the wire and in the mixing rules the parameters are ONE flat float32 vector
  (``jax.flatten_util.ravel_pytree`` of the task's params pytree, leaves in tree order); the
  task sees its own pytree. ``spec`` names task, layout and dtype, and peers with different
  specs refuse to average.
* Init params depend only on the swarm seed, so every node starts at consensus.
* Minibatch sampling uses a key derived from the seed AND the data content, so nodes with
  different data draw independent batch streams.
* ``run_steps`` is one jitted ``fori_loop`` whose trip count is a traced argument, so calls
  with different ``n`` reuse the same compiled code; the data stays on the device.
* ``compute_dtype = "bfloat16"`` runs the loss and its gradient in bf16 while the master
  parameters and the optimizer stay float32 (mixed precision).
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from gossipd.data import Shard
from gossipd.tasks import Task, TaskContext, TaskError, layout_fingerprint, load_task
from gossipd.tasks_builtin.digits import (
    TrainHyper,
    check_hyper,
    learning_rate,
    make_optimizer,
    task_from_shard,
)

__all__ = ["TrainHyper", "TrainState", "Trainer", "check_hyper", "learning_rate",
           "make_optimizer", "make_trainer"]

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class TrainState(NamedTuple):
    params: jax.Array  # flat float32 vector (ravel_pytree of the task's params)
    opt_state: Any  # optax state over the params pytree; stays local, never averaged
    step: int  # number of steps this node has taken
    rng: jax.Array  # typed PRNG key for minibatch sampling


def _data_tag(data: Mapping[str, np.ndarray]) -> int:
    """Stable 31-bit fingerprint of the local data (selects the batch stream)."""
    crc = 0
    for key in sorted(data):
        crc = zlib.crc32(np.ascontiguousarray(data[key]).tobytes(), crc)
    return crc & 0x7FFFFFFF


def _cast(tree: Any, dtype: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def make_run_steps(task: Task, unravel: Any, compute: Any, n_examples: int) -> Any:
    """Pure function running ``n`` steps; returns new flat params, opt state, rng, loss sum."""
    tx = task.optimizer

    def loss_fn(params: Any, batch: Any) -> jax.Array:
        if compute is not jnp.float32:
            params, batch = _cast(params, compute), _cast(batch, compute)
        return jnp.asarray(task.loss(params, batch), jnp.float32)

    grad_fn = jax.value_and_grad(loss_fn)

    def run(flat: jax.Array, opt_state: Any, rng: jax.Array, n: jax.Array, data: Any
            ) -> tuple[jax.Array, Any, jax.Array, jax.Array]:
        def body(i: jax.Array, carry: Any) -> Any:
            params, opt_state, rng, loss_sum = carry
            rng, sub = jax.random.split(rng)
            # Sample with replacement: cheap, and correct for any data size.
            idx = jax.random.randint(sub, (task.batch_size,), 0, n_examples)
            batch = jax.tree_util.tree_map(lambda a: a[idx], data)
            loss, grads = grad_fn(params, batch)
            grads = _cast(grads, jnp.float32)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            return params, opt_state, rng, loss_sum + loss

        init = (unravel(flat), opt_state, rng, jnp.zeros((), jnp.float32))
        params, opt_state, rng, loss_sum = jax.lax.fori_loop(0, n, body, init)
        return ravel_pytree(params)[0].astype(jnp.float32), opt_state, rng, loss_sum

    return run


class Trainer:
    """Owns the jitted functions for one task and its local data; the state is passed in
    and out. The Trainer holds no mutable training state, so the daemon may keep a
    TrainState, swap its params after a gossip exchange, and continue. Calls are meant to
    come from a single worker thread (they block for the compute).

    ``Trainer(task, seed)`` takes a Task; ``Trainer("digits-mlp", shard, hyper, seed)``
    builds the digits task from a loaded shard (tests and simulations)."""

    def __init__(self, task: Task | str, shard: Shard | None = None,
                 hyper: TrainHyper | None = None, seed: int = 0, *,
                 compute_dtype: str = "float32") -> None:
        if isinstance(task, str):
            if task != "digits-mlp" or shard is None:
                raise ValueError(f"unknown task {task!r}; known tasks: digits-mlp "
                                 "(other tasks: make_trainer(name, ctx))")
            task = task_from_shard(shard, hyper or TrainHyper())
            if len(shard.y_train) == 0:
                raise ValueError("empty shard: nothing to train on")
        if compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}")
        self.definition = task
        self.task = task.name
        self.hyper = hyper if hyper is not None else None
        self.seed = seed
        self.metric = task.metric
        self.higher_is_better = task.higher_is_better
        self.compute_dtype = compute_dtype
        self.batch_size = task.batch_size
        root = jax.random.key(seed)
        params0 = task.init(jax.random.fold_in(root, 0))
        flat0, self._unravel = ravel_pytree(params0)
        for leaf in jax.tree_util.tree_leaves(params0):
            if jnp.asarray(leaf).dtype != jnp.float32:
                raise TaskError(f"task {task.name!r}: parameters must be float32, "
                                f"got a {jnp.asarray(leaf).dtype} leaf")
        self._params0 = params0
        self.num_params = int(flat0.size)
        self.layout = task.layout or layout_fingerprint(params0)
        self.spec = f"{task.name}/{self.layout}/f32"
        # Where the arrays live: JAX picks the accelerator when it sees one, else the CPU.
        self.device = str(jax.devices()[0])
        # Number of times run_steps has been traced (compiled); tests assert it stays 1.
        self.trace_count = 0
        self._data_tag = _data_tag(task.train_data)
        # What the provenance ledger records about the local data: its hash, never the data.
        digest = hashlib.blake2b(digest_size=32)
        for key in sorted(task.train_data):
            digest.update(np.ascontiguousarray(task.train_data[key]).tobytes())
        self.data_hash = digest.digest()
        self.data_samples = int(next(iter(task.train_data.values())).shape[0])
        self._data = {k: jnp.asarray(v) for k, v in task.train_data.items()}
        self._eval = {k: jnp.asarray(v) for k, v in task.eval_data.items()}
        run = make_run_steps(task, self._unravel, COMPUTE_DTYPES[compute_dtype],
                             self.data_samples)

        def counted(*args: Any) -> Any:
            self.trace_count += 1  # Python side effect: runs only while tracing
            return run(*args)

        self._run = jax.jit(counted)
        unravel, evaluate = self._unravel, task.evaluate
        self._metrics = jax.jit(lambda p, data: evaluate(unravel(p), data))

    def init(self) -> TrainState:
        root = jax.random.key(self.seed)
        flat = ravel_pytree(self._params0)[0].astype(jnp.float32)
        rng = jax.random.fold_in(jax.random.fold_in(root, 1), self._data_tag)
        opt_state = self.definition.optimizer.init(self._params0)
        return TrainState(params=flat, opt_state=opt_state, step=0, rng=rng)

    def warm_up(self, state: TrainState) -> None:
        """Compile the training loop and the evaluation now (zero steps run), so a node is
        ready to train when it says it is ready, not one compile (seconds) later."""
        *_, loss = self._run(state.params, state.opt_state, state.rng,
                             jnp.asarray(0, jnp.int32), self._data)
        float(loss)  # waits for the result
        for value in self._metrics(state.params, self._eval).values():
            float(value)

    def run_steps(self, state: TrainState, n: int) -> tuple[TrainState, float]:
        """``n`` steps on the local data; returns the new state and the mean loss.

        ``n == 0`` returns the state unchanged and a NaN loss.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if n == 0:
            return state, math.nan
        params, opt_state, rng, loss_sum = self._run(
            state.params, state.opt_state, state.rng, jnp.asarray(n, jnp.int32), self._data)
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

    def evaluate_all(self, flat: np.ndarray) -> dict[str, float]:
        """Every metric the task reports for ``flat`` on its held-out set."""
        out = self._metrics(jnp.asarray(self._check_flat(flat)), self._eval)
        return {k: float(v) for k, v in out.items()}

    def evaluate(self, flat: np.ndarray) -> float:
        """The task's score (``metric``) of ``flat`` on the held-out set (same on every node)."""
        metrics = self.evaluate_all(flat)
        if self.metric not in metrics:
            raise TaskError(f"task {self.task!r}: evaluate returned {sorted(metrics)}, "
                            f"not its metric {self.metric!r}")
        return metrics[self.metric]

    def get_params(self, state: TrainState) -> np.ndarray:
        """A float32 1-d numpy copy of the params (safe to mutate or send)."""
        return np.array(state.params, dtype=np.float32, copy=True)

    def with_params(self, state: TrainState, flat: np.ndarray) -> TrainState:
        """Replace the params (e.g. after averaging); opt_state, step and rng are kept."""
        # jnp.array copies, so later changes to the caller's buffer cannot leak in.
        return state._replace(params=jnp.array(self._check_flat(flat)))


def make_trainer(name: str, ctx: TaskContext, compute_dtype: str = "float32") -> Trainer:
    """Load task ``name`` (built-in or plugin) for this node and build its Trainer; a task
    whose functions do not trace (shape errors, wrong return types) fails here, at start,
    with TaskError naming the task, instead of in the first training chunk."""
    task = load_task(name, ctx)
    trainer = Trainer(task, seed=ctx.seed, compute_dtype=compute_dtype)
    state = trainer.init()
    try:
        jax.eval_shape(trainer._run, state.params, state.opt_state, state.rng,
                       jnp.asarray(1, jnp.int32), trainer._data)
        metrics = jax.eval_shape(trainer._metrics, state.params, trainer._eval)
    except TaskError:
        raise
    except Exception as exc:
        raise TaskError(f"task {name!r}: its loss, optimizer or evaluate does not run on its "
                        f"own data: {type(exc).__name__}: {str(exc)[:800]}") from exc
    if not isinstance(metrics, Mapping) or task.metric not in metrics:
        raise TaskError(f"task {name!r}: evaluate must return a mapping that holds its metric "
                        f"{task.metric!r}")
    return trainer
