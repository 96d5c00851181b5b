"""Drives the trainer from trio: paced training steps and evaluation in one worker thread.

Rules:
- JAX never runs on the trio thread: every trainer call goes through `trio.to_thread.run_sync`
  with one CapacityLimiter, so the event loop keeps serving peers (yamux window updates and
  pings stall otherwise) and only one JAX call runs at a time.
- Training is paced to `steps_per_second` so nodes sharing a machine progress alike and leave
  CPU for networking; a slow machine simply runs behind the pace.
- Training goes on while exchanges are in flight. Remote parameters that arrive while a chunk of
  steps is running are queued and merged right after the chunk returns, so no exchange result is
  overwritten and none is applied twice.
- Merge rule (`merge_remote`, gossipd.mixing.merge): an exchange sends the snapshot S taken at its
  start; when the peer's R arrives, the current parameters C (which kept training) become
  C + w * (R - S), the pair's mix of what was exchanged plus our own progress since.
- Published parameter vectors are read-only and never modified: new parameters are new arrays. So
  `snapshot()` hands out the current vector without copying, and an exchange may stream it
  while training replaces it.
- Checkpoints (`capture`) see a consistent state: a lock is held around each chunk and the
  merges queued behind it, so a capture happens between chunks, never while one runs or a merge
  is pending. The state is immutable; it is copied to host memory in the worker thread.
- Joining (`join = "pull"`): a node that did not resume from a checkpoint takes no step until
  its first completed exchange, or until JOIN_WAIT_S pass without one (then it trains alone).
  In that first exchange it adopts a trained peer's parameters (remote step > 0) outright:
  mixing a fresh model in would only pull the swarm's model halfway back to the start.
- The other side of that rule: a node that has trained (step > 0) does not mix in parameters
  of a peer at step 0; they carry no training. The exchange still counts as done. Both rules
  hold in either join mode; a runner built with join=None has neither.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import trio

if TYPE_CHECKING:
    # libp2p pulls in trio-typing, whose stale trio stubs shadow trio's own types and lack
    # trio.TaskStatus; trio_typing.TaskStatus is the same protocol.
    from trio_typing import TaskStatus

from gossipd import checkpoint
from gossipd.mixing import merge, mix
from gossipd.trainer import Trainer, TrainState

log = logging.getLogger("gossipd.runner")

CHUNK_PERIOD_S = 0.25  # run steps in chunks of about this much wall time
JOIN_WAIT_S = 10.0  # a pulling node trains alone after this long without an exchange
JOIN_MODES = ("pull", "mix")


@dataclass
class TrainStatus:
    step: int = 0
    loss: float | None = None
    accuracy: float | None = None
    accuracy_step: int | None = None
    mixes: int = 0
    adopted_step: int | None = None  # the peer's step whose parameters a pulling node took
    fresh_ignored: int = 0  # remote parameters at step 0 not mixed in (they carry no training)


class ModelRunner:
    def __init__(
        self,
        trainer: Trainer,
        steps_per_second: float,
        eval_interval_s: float,
        weight: float,
        clock: Callable[[], float] = trio.current_time,
        join: str | None = None,
    ) -> None:
        # join: "pull" or "mix" (averaging.join) turn the join rules on; None leaves them off,
        # so every exchange mixes (simulations and tests that start nodes from different models).
        if join is not None and join not in JOIN_MODES:
            raise ValueError(f"join must be one of {', '.join(JOIN_MODES)}, got {join!r}")
        self.trainer = trainer
        self.steps_per_second = steps_per_second
        self.eval_interval_s = eval_interval_s
        self.weight = weight
        self.status = TrainStatus()
        self._limiter = trio.CapacityLimiter(1)
        self._state: TrainState = trainer.init()
        self._params: np.ndarray = _frozen(trainer.get_params(self._state))
        # (sent snapshot or None for a plain mix, remote, remote step) waiting for the chunk
        self._pending: list[tuple[np.ndarray | None, np.ndarray, int]] = []
        self._busy = False
        self._hold = trio.Lock()  # held around a chunk and its queued merges; see capture()
        self.join = join
        self._joined = trio.Event()  # set once a pulling node may train
        if join != "pull":
            self._joined.set()
        # {step, path, params_hash} of the checkpoint this runner resumed from, or None
        self.resumed_from: dict[str, object] | None = None
        self._clock = clock
        self._running = trio.Event()  # set while training runs; cleared by pause()
        self._running.set()

    # -- control (trio thread) --
    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def pause(self) -> None:
        """Stop taking steps after the current chunk; exchanges and mixing go on."""
        if self._running.is_set():
            self._running = trio.Event()

    def resume(self) -> None:
        self._running.set()

    @property
    def joining(self) -> bool:
        """Waiting for the first exchange before training (join = "pull", no checkpoint)."""
        return not self._joined.is_set()

    # -- used by exchanges (trio thread) --
    @property
    def params(self) -> np.ndarray:
        """The last completed parameters (read-only, not copied)."""
        return self._params

    @property
    def state(self) -> TrainState:
        """The last completed training state (immutable)."""
        return self._state

    def snapshot(self) -> tuple[np.ndarray, int]:
        """The last completed parameters (read-only, not copied) and their step."""
        return self._params, self.status.step

    def merge_remote(self, sent: np.ndarray, remote: np.ndarray, remote_step: int) -> None:
        """Merge a peer's parameters R from an exchange that sent our snapshot S: the current
        parameters C become C + weight * (R - S), except for the join rules in the module
        docstring. ``remote`` is taken over (the merge is written into it)."""
        if self._busy:
            self._pending.append((sent, remote, remote_step))
        else:
            self._merge_now(sent, remote, remote_step)

    def apply_remote(self, remote: np.ndarray, remote_step: int) -> None:
        """Mix R into the current parameters C directly: (1 - weight) * C + weight * R. For
        callers that do not know what they sent; exchanges use merge_remote."""
        if self._busy:
            self._pending.append((None, remote, remote_step))
        else:
            self._merge_now(None, remote, remote_step)

    def _merge_now(self, sent: np.ndarray | None, remote: np.ndarray, remote_step: int) -> None:
        # The join rules look at the steps as they are now, not when the exchange started.
        joining, self_step = self.joining, self.status.step
        self._joined.set()  # a completed exchange ends the wait, whatever it brought
        if self.join is not None and self_step > 0 and remote_step == 0:
            self.status.fresh_ignored += 1
            return
        if joining and remote_step > 0:
            mixed = remote if _writable_float32(remote) else np.array(remote, np.float32)
            self.status.adopted_step = remote_step
            log.info("joined: adopted the parameters of a peer at step %d", remote_step)
        elif sent is None:
            mixed = mix(self._params, remote, self.weight)
        else:
            target = remote if _writable_float32(remote) else None
            mixed = merge(self._params, sent, remote, self.weight, out=target)
        self._state = self.trainer.with_params(self._state, mixed)
        self._params = _frozen(mixed)
        self.status.mixes += 1

    def _merge_pending(self) -> None:
        pending, self._pending = self._pending, []
        for sent, remote, remote_step in pending:
            self._merge_now(sent, remote, remote_step)

    # -- checkpoints --
    def averaging_state(self) -> dict[str, np.ndarray]:
        """Named float32 arrays the averaging keeps besides the parameters (an outer-optimizer
        anchor and momentum, a compression residual...), saved in every checkpoint. Called on
        the trio thread between chunks; the arrays are copied before anything else runs.
        Nothing by default."""
        return {}

    def restore_averaging_state(self, state: dict[str, np.ndarray]) -> None:
        """Take back what averaging_state() returned when the checkpoint was saved. Raise
        checkpoint.CheckpointError to refuse it (an older checkpoint is tried instead)."""
        if state:
            log.info("checkpoint averaging state %s not used by this runner", sorted(state))

    async def capture(self) -> checkpoint.Checkpoint:
        """The whole training state, consistent (between chunks, no merge pending), as host
        arrays. The copy runs in the trainer's worker thread, so no chunk runs meanwhile."""
        async with self._hold:
            if not self._busy:  # merges queued behind a chunk that was cancelled
                self._merge_pending()
            state = self._state
            averaging = {k: np.array(v, dtype=np.float32)
                         for k, v in self.averaging_state().items()}
            return await trio.to_thread.run_sync(
                checkpoint.capture, self.trainer, state, averaging, limiter=self._limiter)

    def resume_from(self, directory: Path) -> checkpoint.CheckpointInfo | None:
        """Before training starts: restore the newest checkpoint in `directory` that fits this
        model, exactly (parameters, optimizer state, PRNG key, step, averaging state). Blocking
        file I/O: call it from a worker thread. None (and nothing changed) if there is none."""
        template = self._state

        def fit(ckpt: checkpoint.Checkpoint, path: Path) -> TrainState:
            state: TrainState = checkpoint.restore(self.trainer, template, ckpt, path)
            self.restore_averaging_state(ckpt.averaging)
            return state

        found = checkpoint.load_newest(directory, self.trainer.spec, self.trainer.num_params,
                                       fit)
        if found is None:
            return None
        state, ckpt, info = found
        self._state = state
        self._params = _frozen(self.trainer.get_params(state))
        self.status.step = int(state.step)
        self.resumed_from = {"step": info.step, "path": str(info.path),
                             "params_hash": ckpt.params_hash}
        self._joined.set()  # a node with a checkpoint resumes instead of pulling
        return info

    # -- tasks --
    async def run_training(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED
                           ) -> None:
        chunk = max(1, math.ceil(self.steps_per_second * CHUNK_PERIOD_S))
        period = chunk / self.steps_per_second
        task_status.started()
        if self.joining:
            with trio.move_on_after(JOIN_WAIT_S):
                await self._joined.wait()
            if self.joining:
                log.info("join: no exchange within %.0f s; training alone", JOIN_WAIT_S)
                self._joined.set()
        next_at = self._clock()
        while True:
            if self.paused:
                await self._running.wait()
                next_at = self._clock()  # a pause is not a backlog to catch up on
            async with self._hold:
                self._busy = True
                try:
                    state, loss = await trio.to_thread.run_sync(
                        self.trainer.run_steps, self._state, chunk, limiter=self._limiter
                    )
                    params = self.trainer.get_params(state)
                finally:
                    self._busy = False
                self._state, self._params = state, _frozen(params)
                self.status.step = int(state.step)
                self.status.loss = float(loss)
                self._merge_pending()
            next_at += period
            now = self._clock()
            if next_at < now - period:  # far behind: do not try to catch up in a burst
                next_at = now
            await trio.sleep_until(next_at)

    async def evaluate_now(self) -> float:
        params, step = self.snapshot()
        accuracy = await trio.to_thread.run_sync(
            self.trainer.evaluate, params, limiter=self._limiter
        )
        self.status.accuracy = float(accuracy)
        self.status.accuracy_step = step
        return self.status.accuracy

    async def run_evaluation(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED
                             ) -> None:
        task_status.started()
        while True:
            await self.evaluate_now()
            await trio.sleep(self.eval_interval_s)


def _frozen(params: np.ndarray) -> np.ndarray:
    params.flags.writeable = False
    return params


def _writable_float32(a: np.ndarray) -> bool:
    """Whether the merge can be written into ``a`` (merge_remote takes the remote vector over,
    so a received buffer is reused instead of allocating another model-sized array)."""
    return a.dtype == np.float32 and a.ndim == 1 and a.flags.writeable and a.flags.c_contiguous
