"""Tasks: what a node trains, built-in or brought by the user as a plugin.

A task is named in the config as ``train.task``: either a built-in name (``digits-mlp``,
``wine-mlp``, ``charlm``) or ``package.module:factory`` for a plugin. The factory is called once
at start with a :class:`TaskContext` and returns a :class:`Task`. gossipd then owns the training
loop (jitted, in a worker thread), the exchanges and the checkpoints; the task only says what the
model is, how it is scored and what its local data is.

Rules and the reasons for them:
- The data in ``train_data`` never leaves the node: only parameters are exchanged. A plugin reads
  it from ``TaskContext.data_path`` (``train.data_path`` in the config).
- ``init`` must depend only on the key it is given (derived from the swarm seed), so every node
  of a swarm starts from the same parameters; the exchange refuses peers whose parameter layout
  (tree structure, shapes, dtypes: :func:`layout_fingerprint`) differs.
- ``train_data`` is a mapping of equal-length arrays (axis 0 = example). gossipd samples
  minibatches of ``batch_size`` examples from it with replacement, on the device, and passes
  them to ``loss`` as a mapping with the same keys. That is the task's local data iterator: it
  keeps the whole loop inside one compiled function instead of a host round trip per step.
- ``evaluate`` gets the parameters and the whole ``eval_data`` mapping and returns a mapping of
  named scalars; ``metric`` names the one that is the task's score, ``higher_is_better`` its
  direction (accuracy: up, perplexity: down). Every node should evaluate on the same held-out
  set so the scores of different nodes are comparable.
- ``optimizer`` is the complete inner optimizer including its learning-rate schedule (an optax
  GradientTransformation whose updates are added to the parameters). Its state is checkpointed
  with the parameters.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

# params -> a pytree of arrays (float32 leaves); batch / data: str -> array
Params = Any
Batch = Mapping[str, Any]


class TaskError(Exception):
    """A task that cannot be used; the message names the task and the fix."""


@dataclass(frozen=True)
class TaskContext:
    """What the daemon tells a task factory about this node (from the [train] config)."""

    shard_index: int  # this node's shard, 0 <= shard_index < num_shards
    num_shards: int
    partition: str  # "iid", "dirichlet:ALPHA" or a task-defined split such as "topic"
    seed: int  # the swarm seed
    data_path: Path | None = None  # train.data_path: the local data, never sent
    options: Mapping[str, Any] = field(default_factory=dict)  # [train.options]
    hyper: Mapping[str, Any] = field(default_factory=dict)  # train.lr etc. that were set


@dataclass(frozen=True)
class Task:
    """What a factory returns (module docstring for the rules)."""

    name: str
    init: Callable[[jax.Array], Params]  # PRNG key -> params
    loss: Callable[[Params, Batch], jax.Array]  # params, minibatch -> scalar loss
    optimizer: optax.GradientTransformation
    train_data: Mapping[str, np.ndarray]
    eval_data: Mapping[str, np.ndarray]
    evaluate: Callable[[Params, Batch], Mapping[str, jax.Array]]
    metric: str = "accuracy"
    higher_is_better: bool = True
    batch_size: int = 32
    layout: str = ""  # a readable name of the parameter layout; "" = layout_fingerprint


Factory = Callable[[TaskContext], Task]


def builtin_tasks() -> dict[str, Factory]:
    """Built-in task names -> factories (imported lazily: each pulls its own data)."""
    from gossipd.tasks_builtin import BUILTIN

    return dict(BUILTIN)


def resolve_factory(name: str) -> Factory:
    """The factory for a built-in name or a ``package.module:factory`` reference."""
    builtin = builtin_tasks()
    if name in builtin:
        return builtin[name]
    module_name, sep, attr = name.partition(":")
    if not sep:
        raise TaskError(f"unknown task {name!r}: built-in tasks are {', '.join(builtin)}; "
                        "a plugin is named as \"package.module:factory\"")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any error while importing user code is that plugin's fault
        raise TaskError(f"task {name!r}: cannot import module {module_name!r}: "
                        f"{type(exc).__name__}: {exc} (is it installed, or on PYTHONPATH?)"
                        ) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise TaskError(f"task {name!r}: module {module_name!r} has no callable {attr!r}")
    return factory  # type: ignore[no-any-return]


def load_task(name: str, ctx: TaskContext) -> Task:
    """Build and check the task; TaskError names what is wrong."""
    factory = resolve_factory(name)
    try:
        task = factory(ctx)
    except TaskError:
        raise
    except Exception as exc:
        raise TaskError(f"task {name!r}: the factory failed: {type(exc).__name__}: {exc}"
                        ) from exc
    check_task(name, task)
    return task


def _check_arrays(name: str, what: str, data: Any) -> int:
    if not isinstance(data, Mapping) or not data:
        raise TaskError(f"task {name!r}: {what} must be a non-empty mapping of name -> array, "
                        f"got {type(data).__name__}")
    lengths = set()
    for key, value in data.items():
        if not isinstance(key, str) or not isinstance(value, np.ndarray | jax.Array):
            raise TaskError(f"task {name!r}: {what}[{key!r}] must be a numpy array, "
                            f"got {type(value).__name__}")
        if value.ndim < 1:
            raise TaskError(f"task {name!r}: {what}[{key!r}] needs an example axis (ndim >= 1)")
        lengths.add(int(value.shape[0]))
    if len(lengths) != 1:
        raise TaskError(f"task {name!r}: the arrays of {what} differ in length: {sorted(lengths)}")
    (n,) = lengths
    if n == 0:
        raise TaskError(f"task {name!r}: {what} holds no examples")
    return n


def check_task(name: str, task: Any) -> None:
    """TaskError unless ``task`` is a usable Task (types and data shapes; the functions are
    checked when the trainer first traces them)."""
    if not isinstance(task, Task):
        raise TaskError(f"task {name!r}: the factory must return gossipd.tasks.Task, "
                        f"got {type(task).__name__}")
    for attr in ("init", "loss", "evaluate"):
        if not callable(getattr(task, attr)):
            raise TaskError(f"task {name!r}: Task.{attr} must be callable")
    if not hasattr(task.optimizer, "init") or not hasattr(task.optimizer, "update"):
        raise TaskError(f"task {name!r}: Task.optimizer must be an optax GradientTransformation")
    if not isinstance(task.batch_size, int) or task.batch_size < 1:
        raise TaskError(f"task {name!r}: batch_size must be an integer >= 1")
    _check_arrays(name, "train_data", task.train_data)
    _check_arrays(name, "eval_data", task.eval_data)


def layout_fingerprint(params: Params) -> str:
    """Short stable name of a parameter layout: tree structure, shapes and dtypes. Peers whose
    fingerprints differ train different models and cannot average."""
    import hashlib

    leaves, treedef = jax.tree_util.tree_flatten(params)
    text = repr(treedef) + ";" + ";".join(f"{tuple(x.shape)}:{x.dtype}" for x in leaves)
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()
