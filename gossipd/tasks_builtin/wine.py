"""Built-in task ``wine-mlp``: scikit-learn's bundled wine data (178 samples, 13 features,
3 cultivars), a one-hidden-layer MLP trained with SGD + momentum.

Rules and the reasons for them:
- The train/test split is fixed (stratified, ``_SPLIT_SEED``, not the swarm seed), so every
  node of every swarm evaluates on the same 45 held-out samples.
- Features are standardised with the mean and standard deviation of the WHOLE fixed train
  part. That part is the same on every node (the split is deterministic), so every node applies
  the identical transform without exchanging anything, and no statistic sees the test part.
  A node's private shard is a subset of that train part, so this leaks nothing off the node.
- Partitions ``iid`` and ``dirichlet:ALPHA`` come from gossipd.data (``split_labels``): the same
  rules and random streams as the digits task.
- Parameters are a dict pytree ``{w1, b1, w2, b2}``; ``init`` uses only the key it is given.
- Hyperparameters train.lr, lr_min, decay_steps, batch_size, momentum, l2 and hidden override
  the defaults when the config sets them.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_wine
from sklearn.model_selection import train_test_split

from gossipd.data import Partition, split_labels
from gossipd.tasks import Batch, Params, Task, TaskContext, TaskError

NAME = "wine-mlp"
NUM_FEATURES = 13
NUM_CLASSES = 3
_SPLIT_SEED = 0
_TEST_FRACTION = 0.25


class WineHyper(NamedTuple):
    """Defaults: the data set is tiny and easy; a single node reaches >= 0.95 held-out
    accuracy within a few hundred steps, and the cosine ends at ``lr_min`` so gossiping
    nodes settle into consensus."""

    hidden: int = 32
    lr: float = 0.05
    lr_min: float = 0.002
    decay_steps: int = 1000
    batch_size: int = 16
    l2: float = 1e-4
    momentum: float = 0.9


def check_hyper(h: WineHyper) -> None:
    if h.hidden < 1 or h.batch_size < 1 or h.decay_steps < 1:
        raise TaskError(f"task {NAME!r}: hidden, batch_size and decay_steps must be >= 1, "
                        f"got {h.hidden}, {h.batch_size}, {h.decay_steps}")
    if not (h.lr > 0 and 0 <= h.lr_min <= h.lr):
        raise TaskError(f"task {NAME!r}: need 0 <= lr_min <= lr and lr > 0, "
                        f"got lr={h.lr} lr_min={h.lr_min}")
    if h.l2 < 0 or not 0 <= h.momentum < 1:
        raise TaskError(f"task {NAME!r}: need l2 >= 0 and 0 <= momentum < 1, "
                        f"got l2={h.l2} momentum={h.momentum}")


@cache
def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed split ``(x_train, y_train, x_test, y_test)``, standardised (module docstring);
    float32 features, int32 labels, read-only (cached and shared)."""
    wine = load_wine()
    x = np.asarray(wine.data, dtype=np.float64)
    y = np.asarray(wine.target, dtype=np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=_TEST_FRACTION, stratify=y, random_state=_SPLIT_SEED)
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # a constant feature would divide by zero
    arrays = (((x_tr - mean) / std).astype(np.float32), y_tr,
              ((x_te - mean) / std).astype(np.float32), y_te)
    out = tuple(np.ascontiguousarray(a) for a in arrays)
    for a in out:
        a.setflags(write=False)
    return out[0], out[1], out[2], out[3]


def shard_indices(ctx: TaskContext) -> list[np.ndarray]:
    """Indices into the train part of every shard under ``ctx.partition``."""
    try:
        partition = Partition.parse(ctx.partition)
        _, y_tr, _, _ = split()
        return split_labels(y_tr, num_shards=ctx.num_shards, partition=partition,
                            seed=ctx.seed)
    except ValueError as exc:
        raise TaskError(f"task {NAME!r}: {exc}") from exc


def init_params(h: WineHyper, key: jax.Array) -> Params:
    """He-normal first layer (ReLU), Glorot-normal output layer, zero biases."""
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (NUM_FEATURES, h.hidden), jnp.float32)
        * jnp.sqrt(2.0 / NUM_FEATURES),
        "b1": jnp.zeros((h.hidden,), jnp.float32),
        "w2": jax.random.normal(k2, (h.hidden, NUM_CLASSES), jnp.float32)
        * jnp.sqrt(2.0 / (h.hidden + NUM_CLASSES)),
        "b2": jnp.zeros((NUM_CLASSES,), jnp.float32),
    }


def logits(params: Params, x: jax.Array) -> jax.Array:
    hidden = jax.nn.relu(x @ params["w1"] + params["b1"])
    out: jax.Array = hidden @ params["w2"] + params["b2"]
    return out


def cross_entropy(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    ce: jax.Array = optax.softmax_cross_entropy_with_integer_labels(
        logits(params, x).astype(jnp.float32), y)
    return ce.mean()


def make_optimizer(h: WineHyper) -> optax.GradientTransformation:
    """L2 as decayed weights, heavy-ball momentum, cosine lr from ``lr`` to ``lr_min`` over
    ``decay_steps`` then flat. The schedule counts the optimizer's own updates, so it lives
    in (and resumes with) the checkpointed optimizer state."""
    schedule = optax.cosine_decay_schedule(h.lr, h.decay_steps, alpha=h.lr_min / h.lr)
    return optax.chain(optax.add_decayed_weights(h.l2), optax.sgd(schedule, momentum=h.momentum))


def hyper_from(overrides: Mapping[str, Any]) -> WineHyper:
    """WineHyper with the keys the config set replacing the defaults (others are ignored:
    they belong to other tasks)."""
    h = WineHyper()._replace(**{k: v for k, v in overrides.items() if k in WineHyper._fields})
    check_hyper(h)
    return h


def factory(ctx: TaskContext) -> Task:
    h = hyper_from(ctx.hyper)
    if ctx.options:
        raise TaskError(f"task {NAME!r} takes no [train.options], got {', '.join(ctx.options)}")
    if not 0 <= ctx.shard_index < ctx.num_shards:
        raise TaskError(f"task {NAME!r}: shard_index must be in 0..{ctx.num_shards - 1}, "
                        f"got {ctx.shard_index}")
    idx = shard_indices(ctx)[ctx.shard_index]
    x_tr, y_tr, x_te, y_te = split()

    def loss(params: Params, batch: Batch) -> jax.Array:
        return cross_entropy(params, batch["x"], batch["y"])

    def evaluate(params: Params, data: Batch) -> Mapping[str, jax.Array]:
        hit = jnp.argmax(logits(params, data["x"]), axis=-1) == data["y"]
        return {"accuracy": hit.mean(), "loss": cross_entropy(params, data["x"], data["y"])}

    return Task(
        name=NAME,
        init=lambda key: init_params(h, key),
        loss=loss,
        optimizer=make_optimizer(h),
        train_data={"x": x_tr[idx], "y": y_tr[idx]},
        eval_data={"x": x_te, "y": y_te},
        evaluate=evaluate,
        metric="accuracy",
        higher_is_better=True,
        batch_size=h.batch_size,
        layout=f"wine-mlp-{NUM_FEATURES}-{h.hidden}-{NUM_CLASSES}",
    )
