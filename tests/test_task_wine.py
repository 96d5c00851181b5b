"""The built-in ``wine-mlp`` task: fixed split and scaling, partitions, init, training."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gossipd.data import Partition, split_labels
from gossipd.tasks import Task, TaskContext, TaskError, check_task, layout_fingerprint
from gossipd.tasks_builtin import wine


def ctx(index: int = 0, shards: int = 4, partition: str = "iid", seed: int = 0,
        **kw: Any) -> TaskContext:
    return TaskContext(shard_index=index, num_shards=shards, partition=partition, seed=seed,
                       **kw)


def train(task: Task, steps: int, seed: int = 0) -> Any:
    """A minimal trainer: minibatches with replacement, the task's own optimizer."""
    data = {k: jnp.asarray(v) for k, v in task.train_data.items()}
    n = len(task.train_data["y"])
    tx = task.optimizer

    @jax.jit
    def run(params: Any, state: Any, key: jax.Array) -> Any:
        def body(_: jax.Array, carry: Any) -> Any:
            params, state, key = carry
            key, sub = jax.random.split(key)
            idx = jax.random.randint(sub, (task.batch_size,), 0, n)
            grads = jax.grad(task.loss)(params, {k: v[idx] for k, v in data.items()})
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state, key

        return jax.lax.fori_loop(0, steps, body, (params, state, key))[0]

    params = task.init(jax.random.key(seed))
    return run(params, tx.init(params), jax.random.key(seed + 1))


def accuracy(task: Task, params: Any) -> float:
    return float(jax.jit(task.evaluate)(params, task.eval_data)["accuracy"])


def test_fixed_split_is_stratified_and_standardised_on_train() -> None:
    x_tr, y_tr, x_te, y_te = wine.split()
    assert (len(y_tr), len(y_te)) == (133, 45) and x_tr.shape[1] == wine.NUM_FEATURES
    np.testing.assert_allclose(x_tr.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(x_tr.std(0), 1, atol=1e-4)
    assert not np.allclose(x_te.mean(0), 0, atol=1e-3)  # test statistics were not used
    share_tr, share_te = np.bincount(y_tr) / len(y_tr), np.bincount(y_te) / len(y_te)
    np.testing.assert_allclose(share_tr, share_te, atol=0.03)


@pytest.mark.parametrize("partition", ["iid", "dirichlet:0.3"])
def test_shards_are_valid_disjoint_and_covering(partition: str) -> None:
    tasks = [wine.factory(ctx(i, 4, partition, seed=2)) for i in range(4)]
    for task in tasks:
        check_task("wine-mlp", task)
        assert task.metric == "accuracy" and task.higher_is_better
        np.testing.assert_array_equal(task.eval_data["x"], tasks[0].eval_data["x"])
    idx = wine.shard_indices(ctx(0, 4, partition, seed=2))
    joined = np.concatenate(idx)
    assert sorted(joined.tolist()) == list(range(133))
    _, y_tr, _, _ = wine.split()
    for i, task in enumerate(tasks):
        np.testing.assert_array_equal(task.train_data["y"], y_tr[idx[i]])


def test_dirichlet_skews_the_labels() -> None:
    _, y_tr, _, _ = wine.split()
    parts = split_labels(y_tr, num_shards=4, partition=Partition.parse("dirichlet:0.1"),
                         seed=0)
    shares = [np.bincount(y_tr[p], minlength=3).max() / len(p) for p in parts]
    assert max(shares) > 0.8  # some shard is dominated by one class
    assert min(len(p) for p in parts) >= 10  # gossipd.data's floor


def test_init_depends_only_on_the_key() -> None:
    a = wine.factory(ctx(0)).init(jax.random.key(1))
    b = wine.factory(ctx(3, seed=7, partition="dirichlet:0.5")).init(jax.random.key(1))
    c = wine.factory(ctx(0)).init(jax.random.key(2))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert layout_fingerprint(a) == layout_fingerprint(c)
    assert not np.array_equal(a["w1"], c["w1"])


def test_bad_config_is_refused() -> None:
    with pytest.raises(TaskError, match="partition"):
        wine.factory(ctx(partition="topic"))
    with pytest.raises(TaskError, match="lr"):
        wine.factory(ctx(hyper={"lr": 0.0}))
    with pytest.raises(TaskError, match="options"):
        wine.factory(ctx(options={"hidden": 8}))
    with pytest.raises(TaskError, match="num_shards"):
        wine.factory(ctx(0, 500))


def test_hyper_overrides_apply() -> None:
    task = wine.factory(ctx(hyper={"hidden": 8, "batch_size": 4, "momentum": 0.5}))
    assert task.batch_size == 4 and task.layout == "wine-mlp-13-8-3"
    assert task.init(jax.random.key(0))["w1"].shape == (13, 8)


def test_training_beats_chance() -> None:
    task = wine.factory(ctx(0, 1, hyper={"decay_steps": 300}))
    chance = np.bincount(task.eval_data["y"]).max() / len(task.eval_data["y"])
    assert accuracy(task, train(task, 300)) >= 0.9 > chance + 0.4


def test_a_skewed_shard_alone_still_learns_its_classes() -> None:
    task = wine.factory(ctx(0, 2, "dirichlet:0.5", hyper={"decay_steps": 200}))
    assert accuracy(task, train(task, 200)) > 0.7  # 0.96 for this (fixed) shard


def test_gossipd_trainer_runs_the_task() -> None:
    trainer_mod = pytest.importorskip("gossipd.trainer")
    if not hasattr(trainer_mod, "make_trainer"):
        pytest.skip("gossipd.trainer.make_trainer not available")
    trainer = trainer_mod.make_trainer("wine-mlp", ctx(0, 2))
    state, loss = trainer.run_steps(trainer.init(), 200)
    assert np.isfinite(loss)
    assert trainer.evaluate(trainer.get_params(state)) > 0.8


@pytest.mark.parametrize("partition", ["iid", "dirichlet:0.1"])
def test_split_labels_matches_shard_indices_of_digits(partition: str) -> None:
    from gossipd.data import load_train_set, shard_indices

    p = Partition.parse(partition)
    _, y = load_train_set("digits-mlp")
    ours = split_labels(y, num_shards=5, partition=p, seed=3)
    theirs = shard_indices("digits-mlp", num_shards=5, partition=p, seed=3)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)
