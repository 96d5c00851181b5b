"""The built-in ``charlm`` task: vocabulary, topic and iid splits, held-out set, init, training."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gossipd.tasks import Task, TaskContext, TaskError, check_task, layout_fingerprint
from gossipd.tasks_builtin import charlm

TINY = {"seq_len": 32, "d_model": 32, "layers": 1, "heads": 2, "stride": 16}


def ctx(index: int = 0, shards: int = 4, partition: str = "topic", seed: int = 0,
        **kw: Any) -> TaskContext:
    return TaskContext(shard_index=index, num_shards=shards, partition=partition, seed=seed,
                       **kw)


def train(task: Task, steps: int, seed: int = 0) -> Any:
    """A minimal trainer: minibatches with replacement, the task's own optimizer."""
    data = jnp.asarray(task.train_data["tokens"])
    tx = task.optimizer

    @jax.jit
    def run(params: Any, state: Any, key: jax.Array) -> Any:
        def body(_: jax.Array, carry: Any) -> Any:
            params, state, key = carry
            key, sub = jax.random.split(key)
            idx = jax.random.randint(sub, (task.batch_size,), 0, data.shape[0])
            grads = jax.grad(task.loss)(params, {"tokens": data[idx]})
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state, key

        return jax.lax.fori_loop(0, steps, body, (params, state, key))[0]

    params = task.init(jax.random.key(seed))
    return run(params, tx.init(params), jax.random.key(seed + 1))


def as_bytes(ids: np.ndarray) -> bytes:
    # Every id is < 97, so one byte per character: substring tests are exact.
    return np.asarray(ids, np.uint8).tobytes()


def test_vocabulary_is_fixed_and_encoding_round_trips() -> None:
    assert charlm.VOCAB_SIZE == 97
    text = "def f(x):\n    return x ~ 1"
    ids = charlm.encode(text)
    assert ids.dtype == np.int32 and ids.max() < charlm.VOCAB_SIZE
    assert charlm.decode(ids) == text
    assert charlm.encode("\u201cq\u2019")[[0, 2]].tolist() == [charlm.UNK, charlm.UNK]


@pytest.mark.parametrize(("partition", "shards"), [("topic", 4), ("topic", 1), ("iid", 3)])
def test_factory_builds_a_valid_task(partition: str, shards: int) -> None:
    for i in range(shards):
        task = charlm.factory(ctx(i, shards, partition))
        check_task("charlm", task)
        assert task.metric == "perplexity" and not task.higher_is_better
        assert task.train_data["tokens"].shape[1] == 65
        assert task.eval_data["tokens"].shape == (charlm.EVAL_WINDOWS, 65)


@pytest.mark.parametrize("shards", [1, 2, 4, 7, 79])
def test_topic_shards_are_disjoint_covering_and_balanced(shards: int) -> None:
    parts = charlm.topic_shards(shards)
    names = [n for part in parts for n in part]
    assert sorted(names) == sorted(n for n, _ in charlm._topics())
    assert len(names) == len(set(names)) and all(parts)
    assert parts == charlm.topic_shards(shards)  # a pure function of num_shards
    if shards == 4:
        loads = [len(charlm.train_text(p)) for p in parts]
        assert max(loads) < 1.1 * min(loads)


def test_topic_split_rejects_more_shards_than_topics() -> None:
    with pytest.raises(TaskError, match="num_shards"):
        charlm.factory(ctx(0, 80))


def test_held_out_is_the_tail_of_every_topic() -> None:
    for _, text in charlm._topics():
        head, tail = charlm.split_topic(text)
        assert head + tail == text
        assert 0 < len(tail) <= 0.1 * len(text) + 1


def test_held_out_identical_on_every_node_and_never_trained_on() -> None:
    ref = charlm.factory(ctx(0, 4)).eval_data["tokens"]
    held = as_bytes(charlm.encode(charlm.held_out_text()))
    assert all(as_bytes(row) in held for row in ref)
    for partition, shards in (("topic", 4), ("iid", 4), ("iid", 1)):
        for i in range(shards):
            task = charlm.factory(ctx(i, shards, partition, seed=5))
            np.testing.assert_array_equal(task.eval_data["tokens"], ref)
    # Training windows come from the train parts only (the part of each topic before the cut).
    for i, names in enumerate(charlm.topic_shards(4)):
        text = as_bytes(charlm.encode(charlm.train_text(names)))
        rows = charlm.factory(ctx(i, 4)).train_data["tokens"]
        assert all(as_bytes(row) in text for row in rows[::7])


def test_iid_shards_partition_all_windows() -> None:
    everything = charlm.factory(ctx(0, 1, "iid")).train_data["tokens"]
    parts = [charlm.factory(ctx(i, 3, "iid", seed=1)).train_data["tokens"] for i in range(3)]
    joined = np.concatenate(parts)
    assert len(joined) == len(everything)
    key = np.dtype((np.void, joined.shape[1] * 4))
    assert np.array_equal(np.sort(joined.view(key).ravel()),
                          np.sort(everything.view(key).ravel()))
    other = charlm.factory(ctx(0, 3, "iid", seed=2)).train_data["tokens"]
    assert not np.array_equal(other, parts[0])  # the swarm seed picks the deal


def test_init_depends_only_on_the_key() -> None:
    # Jitted only to keep the test fast (eager dispatch of ~40 small ops per call).
    init = jax.jit(charlm.factory(ctx(0, 4)).init)
    a, c = init(jax.random.key(3)), init(jax.random.key(4))
    b = jax.jit(charlm.factory(ctx(2, 4, seed=9)).init)(jax.random.key(3))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert layout_fingerprint(a) == layout_fingerprint(c)
    assert not np.array_equal(a["embed"], c["embed"])
    n = sum(x.size for x in jax.tree_util.tree_leaves(a))
    assert 100_000 < n < 130_000  # the default model: ~117 K parameters


def test_bad_options_and_partitions_are_refused() -> None:
    with pytest.raises(TaskError, match="unknown option"):
        charlm.factory(ctx(options={"seqlen": 32}))
    with pytest.raises(TaskError, match="multiple of"):
        charlm.factory(ctx(options={"d_model": 30, "heads": 4}))
    with pytest.raises(TaskError, match="integer"):
        charlm.factory(ctx(options={"layers": 0}))
    with pytest.raises(TaskError, match="partition"):
        charlm.factory(ctx(partition="dirichlet:0.1"))
    with pytest.raises(TaskError, match="lr"):
        charlm.factory(ctx(hyper={"lr": -1.0}))


def test_the_model_is_causal() -> None:
    cfg = charlm.LMConfig(**{k: v for k, v in TINY.items() if k != "stride"})
    params = charlm.init_params(cfg, jax.random.key(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 97, (2, 32)), jnp.int32)
    changed = tokens.at[:, 20].set((tokens[:, 20] + 1) % 97)
    forward = jax.jit(lambda t: charlm.forward(cfg, params, t))
    a, b = forward(tokens), forward(changed)
    np.testing.assert_allclose(a[:, :20], b[:, :20], atol=1e-6)
    assert not np.allclose(a[:, 20:], b[:, 20:])


def test_short_training_run_lowers_held_out_perplexity() -> None:
    task = charlm.factory(ctx(1, 4, options=TINY, hyper={"decay_steps": 300}))
    evaluate = jax.jit(task.evaluate)
    before = float(evaluate(jax.jit(task.init)(jax.random.key(0)),
                            task.eval_data)["perplexity"])
    assert before == pytest.approx(charlm.VOCAB_SIZE, rel=0.1)  # starts near uniform
    scores = evaluate(train(task, 300), task.eval_data)
    assert float(scores["perplexity"]) < 0.25 * charlm.VOCAB_SIZE
    assert float(scores["loss"]) == pytest.approx(np.log(float(scores["perplexity"])), rel=1e-4)


def test_gossipd_trainer_runs_the_task() -> None:
    trainer_mod = pytest.importorskip("gossipd.trainer")
    if not hasattr(trainer_mod, "make_trainer"):
        pytest.skip("gossipd.trainer.make_trainer not available")
    trainer = trainer_mod.make_trainer("charlm", ctx(2, 4, options=TINY))
    state = trainer.init()
    start = trainer.evaluate(trainer.get_params(state))
    state, loss = trainer.run_steps(state, 60)
    assert np.isfinite(loss)
    assert trainer.evaluate(trainer.get_params(state)) < start
