"""ModelRunner: zero-copy read-only snapshots and the merge rule for exchanges that overlap
training (current + w * (remote - sent)), also when the result arrives mid-chunk."""

from __future__ import annotations

import threading
from typing import NamedTuple

import numpy as np
import pytest
import trio

from gossipd.runner import ModelRunner


class State(NamedTuple):
    params: np.ndarray
    step: int


class StepTrainer:
    """Every chunk adds 1.0 to each parameter; a gate holds a chunk in its worker thread."""

    spec = "fake/4"
    num_params = 4

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def init(self) -> State:
        return State(np.zeros(4, np.float32), 0)

    def run_steps(self, state: State, n: int) -> tuple[State, float]:
        self.entered.set()
        self.gate.wait(10)
        return State(state.params + np.float32(1.0), state.step + n), 0.5

    def evaluate(self, flat: np.ndarray) -> float:
        return float(flat.mean())

    def get_params(self, state: State) -> np.ndarray:
        return np.array(state.params, dtype=np.float32, copy=True)

    def with_params(self, state: State, flat: np.ndarray) -> State:
        return state._replace(params=np.array(flat, dtype=np.float32))


def runner(trainer: StepTrainer | None = None, weight: float = 0.5) -> ModelRunner:
    return ModelRunner(trainer or StepTrainer(), 40, 1.0, weight)  # type: ignore[arg-type]


def test_snapshot_is_the_published_vector_and_read_only() -> None:
    r = runner()
    flat, step = r.snapshot()
    assert flat is r.params and step == 0
    with pytest.raises(ValueError):
        flat[0] = 1.0


def test_merge_when_idle() -> None:
    r = runner()
    sent, _ = r.snapshot()
    remote = np.full(4, 4.0, np.float32)
    r.merge_remote(sent, remote, 7)
    np.testing.assert_array_equal(r.params, 2.0)  # no progress since the snapshot: the mean
    assert r.status.mixes == 1 and not r.params.flags.writeable
    np.testing.assert_array_equal(sent, 0.0)  # the snapshot that was sent is untouched


def test_apply_remote_mixes_into_current() -> None:
    r = runner(weight=0.25)
    r.apply_remote(np.full(4, 8.0, np.float32), 1)
    np.testing.assert_array_equal(r.params, 2.0)


async def test_merge_arriving_mid_chunk_keeps_the_progress_made_meanwhile() -> None:
    trainer = StepTrainer()
    r = runner(trainer)
    trainer.gate.clear()
    async with trio.open_nursery() as nursery:
        await nursery.start(r.run_training)
        with trio.fail_after(5):
            while not trainer.entered.is_set():
                await trio.sleep(0.001)
        sent, _ = r.snapshot()  # 0.0; the running chunk will move the model to 1.0
        r.merge_remote(sent, np.full(4, 4.0, np.float32), 3)
        assert r.status.mixes == 0  # queued behind the running chunk
        trainer.gate.set()
        with trio.fail_after(5):
            while r.status.mixes == 0:
                await trio.sleep(0.001)
        # current 1.0 + 0.5 * (remote 4.0 - sent 0.0); mixing 4.0 into 1.0 would give 2.5.
        # (The next chunk is due a period, 0.25 s, later.)
        np.testing.assert_array_equal(r.params, 3.0)
        assert r.status.step == 10
        np.testing.assert_array_equal(sent, 0.0)
        nursery.cancel_scope.cancel()
