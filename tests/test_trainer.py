"""Tests for gossipd.trainer (and the flat-vector model in gossipd.model)."""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gossipd.data import Partition, Shard, load_shard
from gossipd.model import MLPSpec, flatten, layout, unflatten
from gossipd.trainer import Trainer, TrainHyper, check_hyper, learning_rate

TASK = "digits-mlp"
DIR01 = Partition("dirichlet", 0.1)


def shard(i: int, partition: Partition = DIR01, n: int = 4) -> Shard:
    return load_shard(TASK, num_shards=n, shard_index=i, partition=partition, seed=0)


@pytest.fixture(scope="module")
def trainer() -> Trainer:
    return Trainer(TASK, shard(0, Partition("iid")), TrainHyper(), seed=0)


def test_spec_and_size(trainer: Trainer) -> None:
    assert trainer.spec == "digits-mlp/mlp-64-64-10/f32"
    assert trainer.num_params == 64 * 64 + 64 + 64 * 10 + 10
    other = Trainer(TASK, shard(1), TrainHyper(hidden=32), seed=0)
    assert other.spec == "digits-mlp/mlp-64-32-10/f32"


def test_layout_matches_size() -> None:
    spec = MLPSpec(hidden=16)
    lay = layout(spec)
    assert list(lay) == ["w1", "b1", "w2", "b2"]
    off, shape = lay["b2"]
    assert off + shape[0] == spec.num_params
    flat = jnp.arange(spec.num_params, dtype=jnp.float32)
    p = unflatten(spec, flat)
    assert float(p.w2[0, 0]) == lay["w2"][0]
    np.testing.assert_array_equal(np.asarray(flatten(p)), np.asarray(flat))


def test_init_depends_only_on_seed(trainer: Trainer) -> None:
    s0 = trainer.init()
    s1 = Trainer(TASK, shard(3), TrainHyper(), seed=0).init()
    s2 = Trainer(TASK, shard(0, Partition("iid")), TrainHyper(), seed=1).init()
    np.testing.assert_array_equal(trainer.get_params(s0), trainer.get_params(s1))
    assert not np.array_equal(trainer.get_params(s0), trainer.get_params(s2))
    assert s0.step == 0
    # ... while the minibatch stream differs between shards.
    assert not np.array_equal(jax.random.key_data(s0.rng), jax.random.key_data(s1.rng))


def test_loss_decreases_and_accuracy_rises(trainer: Trainer) -> None:
    s = trainer.init()
    acc0 = trainer.evaluate(trainer.get_params(s))
    s, first = trainer.run_steps(s, 20)
    for _ in range(8):
        s, last = trainer.run_steps(s, 25)
    assert s.step == 220
    assert np.isfinite(first) and last < 0.5 * first
    acc = trainer.evaluate(trainer.get_params(s))
    assert acc > 0.85 > acc0


def test_run_steps_compiles_once() -> None:
    t = Trainer(TASK, shard(2), TrainHyper(), seed=0)
    s = t.init()
    for n in (1, 5, 17, 50, 3, 1):
        s, loss = t.run_steps(s, n)
        assert np.isfinite(loss)
    assert t.trace_count == 1
    assert s.step == 77


def test_chunking_does_not_change_result(trainer: Trainer) -> None:
    s = trainer.init()
    whole, _ = trainer.run_steps(s, 12)
    part, _ = trainer.run_steps(s, 5)
    part, _ = trainer.run_steps(part, 7)
    np.testing.assert_allclose(trainer.get_params(whole), trainer.get_params(part),
                               rtol=1e-6, atol=1e-7)
    assert whole.step == part.step == 12


def test_run_steps_zero_and_negative(trainer: Trainer) -> None:
    s = trainer.init()
    same, loss = trainer.run_steps(s, 0)
    assert same is s and np.isnan(loss)
    with pytest.raises(ValueError):
        trainer.run_steps(s, -1)


def test_params_round_trip(trainer: Trainer) -> None:
    s, _ = trainer.run_steps(trainer.init(), 3)
    flat = trainer.get_params(s)
    assert flat.dtype == np.float32 and flat.shape == (trainer.num_params,)
    flat[:] = 0.0  # a copy: mutating it leaves the state alone
    assert np.any(trainer.get_params(s) != 0.0)
    new_flat = np.linspace(-1, 1, trainer.num_params).astype(np.float32)
    s2 = trainer.with_params(s, new_flat)
    new_flat[:] = 7.0  # with_params copied too
    np.testing.assert_allclose(trainer.get_params(s2), np.linspace(-1, 1, trainer.num_params),
                               rtol=1e-6)
    assert s2.step == s.step and s2.rng is s.rng and s2.opt_state is s.opt_state


@pytest.mark.parametrize("bad", [np.zeros(10, np.float32), np.zeros((4874, 1), np.float32)])
def test_with_params_rejects_shape(trainer: Trainer, bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="params"):
        trainer.with_params(trainer.init(), bad)
    with pytest.raises(ValueError):
        trainer.evaluate(bad)


def test_with_params_rejects_nonfinite(trainer: Trainer) -> None:
    flat = trainer.get_params(trainer.init())
    flat[5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        trainer.with_params(trainer.init(), flat)


def test_evaluate_range(trainer: Trainer) -> None:
    acc = trainer.evaluate(trainer.get_params(trainer.init()))
    assert 0.0 <= acc <= 0.3  # untrained: about chance


def test_learning_rate_schedule() -> None:
    h = TrainHyper(lr=0.1, lr_min=0.01, decay_steps=100)
    assert float(learning_rate(h, 0)) == pytest.approx(0.1)
    assert float(learning_rate(h, 50)) == pytest.approx(0.055)
    assert float(learning_rate(h, 100)) == pytest.approx(0.01)
    assert float(learning_rate(h, 10_000)) == pytest.approx(0.01)
    lrs = [float(learning_rate(h, k)) for k in range(0, 120, 5)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))


def test_default_decay_fits_daemon_run() -> None:
    # Recommended daemon pacing is 20 steps/s; the schedule must end within 90 s.
    assert TrainHyper().decay_steps <= 90 * 20


@pytest.mark.parametrize(
    "bad",
    [
        {"lr": 0.0}, {"lr_min": 0.5}, {"lr_min": -0.1}, {"decay_steps": 0},
        {"batch_size": 0}, {"l2": -1.0}, {"momentum": 1.0}, {"hidden": 0},
    ],
)
def test_bad_hyper(bad: dict[str, Any]) -> None:
    h = TrainHyper()._replace(**bad)
    with pytest.raises(ValueError):
        check_hyper(h)
    with pytest.raises(ValueError):
        Trainer(TASK, shard(0), h, seed=0)


def test_unknown_task() -> None:
    with pytest.raises(ValueError, match="unknown task"):
        Trainer("nope", shard(0), TrainHyper(), seed=0)
