"""Task plugins: loading by "module:factory", the checks that name what is wrong, the generic
trainer on the built-in digits task and on the example CSV plugin, bf16 compute."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from gossipd.data import Partition, load_shard
from gossipd.tasks import TaskContext, TaskError, load_task, resolve_factory
from gossipd.trainer import Trainer, TrainHyper, make_trainer

ROOT = Path(__file__).resolve().parent.parent
CTX = TaskContext(shard_index=0, num_shards=2, partition="iid", seed=0)

GOOD = """
import jax, jax.numpy as jnp, numpy as np, optax
from gossipd.tasks import Task

def factory(ctx):
    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    y = (x.sum(axis=1) > 0).astype(np.int32)
    def init(key):
        return {"w": jax.random.normal(key, (3, 2)) * 0.1, "b": jnp.zeros(2)}
    def loss(p, batch):
        logp = jax.nn.log_softmax(batch["x"] @ p["w"] + p["b"])
        return -jnp.mean(jnp.take_along_axis(logp, batch["y"][:, None], axis=1))
    def evaluate(p, data):
        hit = jnp.argmax(data["x"] @ p["w"] + p["b"], axis=1) == data["y"]
        return {"accuracy": jnp.mean(hit.astype(jnp.float32))}
    return Task(name="toy", init=init, loss=loss, optimizer=optax.sgd(0.5),
                train_data={"x": x, "y": y}, eval_data={"x": x, "y": y}, evaluate=evaluate,
                batch_size=16)

def wrong_type(ctx):
    return {"init": None}

def shape_bug(ctx):
    import dataclasses
    task = factory(ctx)
    return dataclasses.replace(task, init=lambda key: {"w": jnp.zeros((4, 2)), "b": jnp.zeros(2)})

def ragged(ctx):
    import dataclasses
    task = factory(ctx)
    return dataclasses.replace(task, train_data={"x": task.train_data["x"],
                                                 "y": task.train_data["y"][:10]})

def no_metric(ctx):
    import dataclasses
    task = factory(ctx)
    return dataclasses.replace(task, metric="f1")

def boom(ctx):
    raise RuntimeError("no data here")
"""


@pytest.fixture()
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "toy_task.py").write_text(textwrap.dedent(GOOD))
    (tmp_path / "broken_task.py").write_text("import no_such_module_here\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "toy_task"


def test_plugin_trains(plugin: str) -> None:
    t = make_trainer(f"{plugin}:factory", CTX)
    assert t.spec.startswith("toy/") and t.num_params == 8 and t.metric == "accuracy"
    s = t.init()
    before = t.evaluate(t.get_params(s))
    s, _ = t.run_steps(s, 100)
    assert t.evaluate(t.get_params(s)) > max(before, 0.9)
    assert t.trace_count == 1


@pytest.mark.parametrize(("factory", "needle"), [
    ("broken_task:factory", "cannot import module 'broken_task'"),
    ("toy_task:missing", "has no callable 'missing'"),
    ("toy_task:wrong_type", "must return gossipd.tasks.Task, got dict"),
    ("toy_task:shape_bug", "does not run on its own data"),
    ("toy_task:ragged", "differ in length"),
    ("toy_task:no_metric", "holds its metric 'f1'"),
    ("toy_task:boom", "the factory failed: RuntimeError: no data here"),
    ("nonsense", "built-in tasks are digits-mlp"),
])
def test_bad_plugins_are_named(plugin: str, factory: str, needle: str) -> None:
    with pytest.raises(TaskError) as info:
        make_trainer(factory, CTX)
    assert needle in str(info.value) and factory.split(":")[0] in str(info.value)


def test_different_layouts_have_different_specs(plugin: str) -> None:
    # Peers compare specs in the handshake: a plugin whose shapes differ never averages.
    a = make_trainer(f"{plugin}:factory", CTX)
    h = {"hidden": 32}
    d1 = make_trainer("digits-mlp", TaskContext(0, 2, "iid", 0, hyper=h))
    d2 = make_trainer("digits-mlp", TaskContext(0, 2, "iid", 0))
    assert d1.spec != d2.spec and a.spec not in (d1.spec, d2.spec)


def test_builtin_names_resolve() -> None:
    for name in ("digits-mlp", "wine-mlp", "charlm"):
        assert callable(resolve_factory(name))


def test_digits_through_make_trainer_matches_legacy_constructor() -> None:
    shard = load_shard("digits-mlp", num_shards=2, shard_index=1,
                       partition=Partition.parse("dirichlet:0.1"), seed=3)
    legacy = Trainer("digits-mlp", shard, TrainHyper(), 3)
    new = make_trainer("digits-mlp", TaskContext(1, 2, "dirichlet:0.1", 3))
    assert legacy.spec == new.spec == "digits-mlp/mlp-64-64-10/f32"
    a, b = legacy.init(), new.init()
    a, _ = legacy.run_steps(a, 50)
    b, _ = new.run_steps(b, 50)
    np.testing.assert_array_equal(legacy.get_params(a), new.get_params(b))


def test_bfloat16_compute_trains() -> None:
    t = make_trainer("digits-mlp", TaskContext(0, 1, "iid", 0), compute_dtype="bfloat16")
    s = t.init()
    s, _ = t.run_steps(s, 300)
    assert t.get_params(s).dtype == np.float32  # master weights stay float32
    assert t.evaluate(t.get_params(s)) > 0.85


def test_example_csv_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    import csv_task

    data = tmp_path / "bc.csv"
    csv_task.write_example_csv(data)
    ctx = TaskContext(0, 2, "iid", 0, data_path=data, options={"hidden": 16})
    t = make_trainer("csv_task:factory", ctx)
    s, _ = t.run_steps(t.init(), 200)
    assert t.evaluate(t.get_params(s)) > 0.9
    with pytest.raises(TaskError, match=r"set train\.data_path"):
        load_task("csv_task:factory", TaskContext(0, 2, "iid", 0))
