"""Checkpoint files: the whole state round trips, newest-first listing and pruning, the fallback
past a damaged newest file, format 1 files, and refusal of what does not fit."""

from __future__ import annotations

import logging
import time
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gossipd import checkpoint
from gossipd.checkpoint import Checkpoint, CheckpointError


class State(NamedTuple):
    params: jax.Array
    opt_state: Any
    step: int
    rng: jax.Array


class TinyTrainer:
    """Just what checkpoint.capture/restore use of a trainer."""

    spec = "tiny/6"
    num_params = 6

    def __init__(self, tx: optax.GradientTransformation | None = None) -> None:
        self.tx = tx or optax.chain(optax.add_decayed_weights(1e-4), optax.trace(decay=0.9))

    def init(self) -> State:
        params = jnp.zeros(6, jnp.float32)
        return State(params, self.tx.init(params), 0, jax.random.key(3))

    def get_params(self, state: State) -> np.ndarray:
        return np.array(state.params, dtype=np.float32)

    def with_params(self, state: State, flat: np.ndarray) -> State:
        return state._replace(params=jnp.array(flat, jnp.float32))


def ckpt(step: int, spec: str = "tiny/6", value: float = 1.0) -> Checkpoint:
    return Checkpoint(np.full(6, value * step, np.float32), step, spec)


def trained_state(trainer: TinyTrainer) -> State:
    s = trainer.init()
    grads = jnp.arange(6, dtype=jnp.float32)
    updates, opt = trainer.tx.update(grads, s.opt_state, s.params)
    rng, _ = jax.random.split(s.rng)
    return State(s.params - updates, opt, 17, rng)


def test_whole_state_round_trips_bit_exact(tmp_path: Path) -> None:
    trainer = TinyTrainer(optax.adam(1e-3))  # adam: float moments and an int32 count leaf
    state = trained_state(trainer)
    avg = {"anchor": np.linspace(0, 1, 6, dtype=np.float32), "residual": np.ones(3, np.float32)}
    info = checkpoint.save(tmp_path, checkpoint.capture(trainer, state, avg))
    loaded, info2 = checkpoint.load(info.path, "tiny/6", 6)
    assert info2.params_hash == info.params_hash == loaded.params_hash and info2.step == 17
    back = checkpoint.restore(trainer, trainer.init(), loaded)
    assert back.step == 17
    np.testing.assert_array_equal(np.asarray(back.params), np.asarray(state.params))
    for a, b in zip(jax.tree_util.tree_leaves(back.opt_state),
                    jax.tree_util.tree_leaves(state.opt_state), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert jax.tree_util.tree_structure(back.opt_state) == jax.tree_util.tree_structure(
        state.opt_state)
    np.testing.assert_array_equal(jax.random.key_data(back.rng), jax.random.key_data(state.rng))
    assert jax.random.key_impl(back.rng) == jax.random.key_impl(state.rng)
    assert sorted(loaded.averaging) == ["anchor", "residual"]
    np.testing.assert_array_equal(loaded.averaging["anchor"], avg["anchor"])
    with zipfile.ZipFile(info.path) as z:  # plain .npy members only: nothing to unpickle
        assert all(n.endswith(".npy") for n in z.namelist())
    assert not list(tmp_path.glob(".*.tmp"))


def test_another_optimizer_is_refused(tmp_path: Path) -> None:
    saved = TinyTrainer()  # decayed weights + momentum
    info = checkpoint.save(tmp_path, checkpoint.capture(saved, trained_state(saved), {}))
    loaded, _ = checkpoint.load(info.path, "tiny/6", 6)
    other = TinyTrainer(optax.adam(1e-3))
    with pytest.raises(CheckpointError, match="optimizer state does not fit"):
        checkpoint.restore(other, other.init(), loaded, info.path)


def test_list_newest_saved_first_and_prune_per_spec(tmp_path: Path) -> None:
    for step in (10, 30, 20):
        checkpoint.save(tmp_path, ckpt(step), keep=2)
        time.sleep(0.002)  # distinct saved_at
    checkpoint.save(tmp_path, ckpt(5, spec="other/6"), keep=2)
    infos = checkpoint.list_checkpoints(tmp_path)
    # most recently saved first, whatever the step; step 10 pruned; another model kept
    assert [(c.step, c.spec) for c in infos] == [(5, "other/6"), (20, "tiny/6"), (30, "tiny/6")]
    loaded, info = checkpoint.load(infos[1].path, "tiny/6", 6)
    np.testing.assert_array_equal(loaded.params, 20.0)
    assert info.size_bytes > 0 and info.format == checkpoint.FORMAT


def test_load_refuses_another_model_garbage_nan_and_tampering(tmp_path: Path) -> None:
    info = checkpoint.save(tmp_path, ckpt(1))
    with pytest.raises(CheckpointError, match="this node trains"):
        checkpoint.load(info.path, "b/6", 6)
    with pytest.raises(CheckpointError, match="this node trains"):
        checkpoint.load(info.path, "tiny/6", 5)
    bad = tmp_path / "step-000000000002-0000000000000.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match="unreadable"):
        checkpoint.load(bad, "tiny/6", 6)
    assert [c.step for c in checkpoint.list_checkpoints(tmp_path)] == [1]  # garbage skipped
    nan = checkpoint.save(tmp_path, Checkpoint(np.full(6, np.nan, np.float32), 3, "tiny/6"))
    with pytest.raises(CheckpointError, match="NaN"):
        checkpoint.load(nan.path, "tiny/6", 6)
    forged = tmp_path / "step-000000000004-0000000000000.npz"
    np.savez(forged, format=np.int64(2), params=np.zeros(6, "<f4"), params_hash=np.str_("00"),
             step=np.int64(4), spec=np.str_("tiny/6"), saved_at=np.float64(0), opt_count=0,
             opt_structure=np.str_(""), rng_impl=np.str_(""))
    with pytest.raises(CheckpointError, match="do not match the hash"):
        checkpoint.load(forged, "tiny/6", 6)


def fit(ckpt: Checkpoint, path: Path) -> int:
    return ckpt.step


def test_newest_damaged_falls_back_to_the_previous(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    checkpoint.save(tmp_path, ckpt(10))
    time.sleep(0.002)
    newest = checkpoint.save(tmp_path, ckpt(20))
    data = bytearray(newest.path.read_bytes())
    at = data.find(np.full(6, 20.0, "<f4").tobytes())
    data[at + 5] ^= 0xFF  # a flipped bit in the parameters: the zip CRC catches it
    newest.path.write_bytes(bytes(data))
    (tmp_path / ".step-000000000030-0000000000000.npz.1.tmp").write_bytes(b"half")
    with caplog.at_level(logging.WARNING, "gossipd.checkpoint"):
        found = checkpoint.load_newest(tmp_path, "tiny/6", 6, fit)
    assert found is not None and found[0] == 10
    assert str(newest.path) in caplog.text
    assert not list(tmp_path.glob(".*.tmp"))  # the interrupted save's leftover is removed
    # a truncated newest file (no zip directory) is skipped the same way
    newest.path.write_bytes(newest.path.read_bytes()[:100])
    found = checkpoint.load_newest(tmp_path, "tiny/6", 6, fit)
    assert found is not None and found[0] == 10
    assert checkpoint.load_newest(tmp_path, "other/6", 6, fit) is None
    assert checkpoint.load_newest(tmp_path / "missing", "tiny/6", 6, fit) is None


def test_refused_by_fit_tries_older(tmp_path: Path) -> None:
    checkpoint.save(tmp_path, ckpt(10))
    time.sleep(0.002)
    checkpoint.save(tmp_path, ckpt(20))

    def picky(c: Checkpoint, path: Path) -> int:
        if c.step == 20:
            raise CheckpointError(f"{path}: optimizer state does not fit")
        return c.step

    found = checkpoint.load_newest(tmp_path, "tiny/6", 6, picky)
    assert found is not None and found[0] == 10


def test_format_1_file_loads_params_and_step(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    old = tmp_path / "step-000000000042.npz"
    np.savez(old, params=np.full(6, 0.5, "<f4"), step=np.int64(42), spec=np.str_("tiny/6"),
             saved_at=np.float64(time.time()))
    trainer = TinyTrainer()
    with caplog.at_level(logging.WARNING, "gossipd.checkpoint"):
        found = checkpoint.load_newest(
            tmp_path, "tiny/6", 6, lambda c, p: checkpoint.restore(trainer, trainer.init(), c, p))
    assert found is not None
    state, _, info = found
    assert info.format == 1 and info.params_hash is None and state.step == 42
    np.testing.assert_array_equal(np.asarray(state.params), 0.5)
    assert "format 1" in caplog.text and "start fresh" in caplog.text
