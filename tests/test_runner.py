"""ModelRunner: zero-copy read-only snapshots, the merge rule for exchanges that overlap
training (current + w * (remote - sent)), also when the result arrives mid-chunk, the join rules
(a pulling node adopts a trained peer's model; a trained node ignores a fresh one), consistent
captures for checkpoints and the averaging-state hooks."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import trio
import trio.testing

from gossipd import checkpoint
from gossipd.runner import JOIN_WAIT_S, ModelRunner


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


def runner(trainer: StepTrainer | None = None, weight: float = 0.5, join: str | None = None
           ) -> ModelRunner:
    return ModelRunner(trainer or StepTrainer(), 40, 1.0, weight,  # type: ignore[arg-type]
                       join=join)


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


async def train_one_chunk(r: ModelRunner) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(r.run_training)
        with trio.fail_after(5):
            while r.status.step == 0:
                await trio.sleep(0.001)
        nursery.cancel_scope.cancel()


def test_pulling_node_adopts_a_trained_peers_parameters() -> None:
    r = runner(join="pull")
    assert r.joining
    sent, _ = r.snapshot()
    remote = np.full(4, 4.0, np.float32)
    r.merge_remote(sent, remote, 50)
    np.testing.assert_array_equal(r.params, 4.0)  # taken outright, not the mean 2.0
    assert not r.joining and r.status.adopted_step == 50 and r.status.mixes == 1
    r.merge_remote(r.snapshot()[0], np.full(4, 8.0, np.float32), 60)  # later ones mix
    np.testing.assert_array_equal(r.params, 6.0)


def test_pulling_node_meeting_another_fresh_node_mixes() -> None:
    r = runner(join="pull")
    r.merge_remote(r.snapshot()[0], np.full(4, 4.0, np.float32), 0)
    np.testing.assert_array_equal(r.params, 2.0)
    assert not r.joining and r.status.adopted_step is None


def test_mix_mode_never_adopts() -> None:
    r = runner(join="mix")
    assert not r.joining
    r.merge_remote(r.snapshot()[0], np.full(4, 4.0, np.float32), 50)
    np.testing.assert_array_equal(r.params, 2.0)


async def test_trained_node_ignores_parameters_at_step_0() -> None:
    r = runner(join="mix")
    await train_one_chunk(r)
    assert r.status.step == 10
    before = r.params
    r.merge_remote(before, np.full(4, 9.0, np.float32), 0)
    r.apply_remote(np.full(4, 9.0, np.float32), 0)
    assert r.params is before and r.status.mixes == 0 and r.status.fresh_ignored == 2
    r.merge_remote(before, np.full(4, 3.0, np.float32), 1)  # any training at all: mixed
    np.testing.assert_array_equal(r.params, 2.0)


async def test_without_join_rules_every_exchange_mixes() -> None:
    r = runner(join=None)
    assert not r.joining
    await train_one_chunk(r)
    r.merge_remote(r.snapshot()[0], np.full(4, 3.0, np.float32), 0)
    np.testing.assert_array_equal(r.params, 2.0)


async def until_trained(r: ModelRunner) -> None:
    with trio.fail_after(60):
        while r.status.step == 0:
            await trio.sleep(0.01)


async def test_pulling_node_waits_for_its_first_exchange(
        mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0.02  # steps run in a worker thread: jump only when idle
    r = runner(join="pull")
    async with trio.open_nursery() as nursery:
        await nursery.start(r.run_training)
        await trio.sleep(JOIN_WAIT_S - 0.5)
        assert r.status.step == 0 and r.joining
        t0 = trio.current_time()
        r.merge_remote(r.snapshot()[0], np.full(4, 5.0, np.float32), 80)
        await until_trained(r)
        assert trio.current_time() - t0 < 0.5 and r.status.adopted_step == 80
        nursery.cancel_scope.cancel()
    np.testing.assert_array_equal(r.params, 5.0 + r.status.step / 10)


async def test_pulling_node_trains_alone_after_the_wait(
        mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0.02
    r = runner(join="pull")
    async with trio.open_nursery() as nursery:
        await nursery.start(r.run_training)
        await trio.sleep(JOIN_WAIT_S - 0.1)
        assert r.status.step == 0
        await until_trained(r)
        assert trio.current_time() >= JOIN_WAIT_S and not r.joining
        nursery.cancel_scope.cancel()


async def test_capture_waits_for_the_running_chunk_and_its_merges() -> None:
    trainer = StepTrainer()
    r = runner(trainer)
    trainer.gate.clear()
    async with trio.open_nursery() as nursery:
        await nursery.start(r.run_training)
        with trio.fail_after(5):
            while not trainer.entered.is_set():
                await trio.sleep(0.001)
        r.merge_remote(r.snapshot()[0], np.full(4, 4.0, np.float32), 3)  # queued
        captured: list[checkpoint.Checkpoint] = []

        async def take() -> None:
            captured.append(await r.capture())

        nursery.start_soon(take)
        await trio.sleep(0.05)
        assert not captured  # not while the chunk runs
        trainer.gate.set()
        with trio.fail_after(5):
            while not captured:
                await trio.sleep(0.001)
        nursery.cancel_scope.cancel()
    c = captured[0]
    assert c.step == 10 and c.spec == "fake/4"
    np.testing.assert_array_equal(c.params, 3.0)  # the chunk and the queued merge, both


class AnchoredRunner(ModelRunner):
    """An averaging that keeps an anchor: the hooks save it and take it back."""

    anchor = np.zeros(4, np.float32)

    def averaging_state(self) -> dict[str, np.ndarray]:
        return {"anchor": self.anchor}

    def restore_averaging_state(self, state: dict[str, np.ndarray]) -> None:
        if state["anchor"].shape != (4,):
            raise checkpoint.CheckpointError("anchor of another shape")
        self.anchor = state["anchor"]


async def test_averaging_state_hooks_round_trip(tmp_path: Path) -> None:
    r = AnchoredRunner(StepTrainer(), 40, 1.0, 0.5)  # type: ignore[arg-type]
    r.anchor = np.full(4, 7.0, np.float32)
    r.merge_remote(r.snapshot()[0], np.full(4, 2.0, np.float32), 3)
    c = await r.capture()
    r.anchor[:] = -1.0  # changed after the capture: not in the checkpoint
    checkpoint.save(tmp_path, c)
    fresh = AnchoredRunner(StepTrainer(), 40, 1.0, 0.5)  # type: ignore[arg-type]
    info = await trio.to_thread.run_sync(fresh.resume_from, tmp_path)
    assert info is not None and fresh.resumed_from is not None
    assert fresh.resumed_from["params_hash"] == c.params_hash and not fresh.joining
    np.testing.assert_array_equal(fresh.anchor, 7.0)
    np.testing.assert_array_equal(fresh.params, 1.0)


# -- averaging rules: diloco, staleness, the averaging state in checkpoints ----------------------

def diloco_runner(lr: float = 1.0, mu: float = 0.0, inner: int = 10) -> ModelRunner:
    from gossipd.compress import ErrorFeedback
    from gossipd.runner import AveragingRule

    return ModelRunner(StepTrainer(), 40, 1.0, 0.5,  # type: ignore[arg-type]
                       rule=AveragingRule("diloco", inner, lr, mu, 0),
                       error_feedback=ErrorFeedback("int8"))


def test_diloco_with_unit_lr_and_no_momentum_is_the_pair_average_plus_progress() -> None:
    r = diloco_runner()
    assert not r.outer_due
    sent, _ = r.snapshot()  # the anchor: the initial zeros
    r.status.step = 10
    assert r.outer_due
    r.merge_remote(sent, np.full(4, 4.0, np.float32), 10)
    np.testing.assert_allclose(r.params, 2.0)  # anchor - 1.0 * (anchor - mean)
    assert r.status.outer_steps == 1 and not r.outer_due  # a new cycle began at step 10


def test_diloco_momentum_carries_over_cycles() -> None:
    r = diloco_runner(lr=0.5, mu=0.9)
    sent, _ = r.snapshot()
    r.merge_remote(sent, np.full(4, 2.0, np.float32), 10)
    first = r.params.copy()  # delta = -1: m = -1, step = 0.5 * (-1 - 0.9) -> +0.95
    np.testing.assert_allclose(first, 0.95, rtol=1e-6)
    sent, _ = r.snapshot()
    r.merge_remote(sent, sent.copy(), 10)  # a peer equal to us: only momentum moves us on
    assert np.all(r.params > first)


def test_staleness_lowers_the_weight_of_a_peer_behind_us() -> None:
    from gossipd.runner import AveragingRule

    r = ModelRunner(StepTrainer(), 40, 1.0, 0.5,  # type: ignore[arg-type]
                    rule=AveragingRule(staleness_halflife=100))
    r.status.step = 200
    sent, _ = r.snapshot()
    r.merge_remote(sent, np.full(4, 8.0, np.float32), 100)  # 100 steps behind: weight 0.25
    np.testing.assert_allclose(r.params, 2.0)


def test_averaging_state_round_trips_outer_and_residual() -> None:
    r = diloco_runner(lr=0.5, mu=0.9)
    r.error_feedback(np.linspace(-1, 1, 4).astype(np.float32) * 1e-3 + 0.3)
    sent, _ = r.snapshot()
    r.merge_remote(sent, np.full(4, 2.0, np.float32), 10)
    saved = {k: np.array(v) for k, v in r.averaging_state().items()}
    assert {"outer_anchor", "outer_momentum", "ef_residual", "cycle_start"} <= set(saved)
    other = diloco_runner(lr=0.5, mu=0.9)
    other.restore_averaging_state(saved)
    assert other._outer is not None and r._outer is not None
    np.testing.assert_array_equal(other._outer.momentum, r._outer.momentum)
    assert other.error_feedback.state.residual is not None
    with pytest.raises(checkpoint.CheckpointError, match="shape"):
        other.restore_averaging_state({"outer_anchor": np.zeros(3, np.float32),
                                       "outer_momentum": np.zeros(3, np.float32)})


class NaNTrainer(StepTrainer):
    def run_steps(self, state: State, n: int) -> tuple[State, float]:
        return State(state.params + np.float32(np.nan), state.step + n), float("nan")


async def test_a_diverged_chunk_is_discarded_and_training_goes_on(
        autojump_clock: trio.testing.MockClock) -> None:
    r = runner(NaNTrainer())
    async with trio.open_nursery() as nursery:
        await nursery.start(r.run_training)
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    assert r.status.diverged >= 1 and r.status.step == 0
    np.testing.assert_array_equal(r.params, 0.0)  # the last finite state


def test_a_merge_that_would_overflow_is_skipped() -> None:
    r = runner()
    r._params = np.full(4, 3e38, np.float32)
    sent = np.full(4, -3e38, np.float32)
    r.merge_remote(sent, np.full(4, 3e38, np.float32), 7)  # C + w (R - S) overflows float32
    assert r.status.merges_refused == 1 and r.status.mixes == 0
    np.testing.assert_array_equal(r.params, np.float32(3e38))
