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
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import trio

if TYPE_CHECKING:
    # libp2p pulls in trio-typing, whose stale trio stubs shadow trio's own types and lack
    # trio.TaskStatus; trio_typing.TaskStatus is the same protocol.
    from trio_typing import TaskStatus

from gossipd.mixing import merge, mix
from gossipd.trainer import Trainer, TrainState

log = logging.getLogger("gossipd.runner")

CHUNK_PERIOD_S = 0.25  # run steps in chunks of about this much wall time


@dataclass
class TrainStatus:
    step: int = 0
    loss: float | None = None
    accuracy: float | None = None
    accuracy_step: int | None = None
    mixes: int = 0


class ModelRunner:
    def __init__(
        self,
        trainer: Trainer,
        steps_per_second: float,
        eval_interval_s: float,
        weight: float,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.trainer = trainer
        self.steps_per_second = steps_per_second
        self.eval_interval_s = eval_interval_s
        self.weight = weight
        self.status = TrainStatus()
        self._limiter = trio.CapacityLimiter(1)
        self._state: TrainState = trainer.init()
        self._params: np.ndarray = _frozen(trainer.get_params(self._state))
        # (sent snapshot or None for a plain mix, remote) waiting for the running chunk
        self._pending: list[tuple[np.ndarray | None, np.ndarray]] = []
        self._busy = False
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

    # -- used by exchanges (trio thread) --
    @property
    def params(self) -> np.ndarray:
        """The last completed parameters (read-only, not copied)."""
        return self._params

    def snapshot(self) -> tuple[np.ndarray, int]:
        """The last completed parameters (read-only, not copied) and their step."""
        return self._params, self.status.step

    def merge_remote(self, sent: np.ndarray, remote: np.ndarray, remote_step: int) -> None:
        """Merge a peer's parameters R from an exchange that sent our snapshot S: the current
        parameters C become C + weight * (R - S). ``remote`` is taken over (the merge is
        written into it)."""
        if self._busy:
            self._pending.append((sent, remote))
        else:
            self._merge_now(sent, remote)

    def apply_remote(self, remote: np.ndarray, remote_step: int) -> None:
        """Mix R into the current parameters C directly: (1 - weight) * C + weight * R. For
        callers that do not know what they sent; exchanges use merge_remote."""
        if self._busy:
            self._pending.append((None, remote))
        else:
            self._merge_now(None, remote)

    def _merge_now(self, sent: np.ndarray | None, remote: np.ndarray) -> None:
        if sent is None:
            mixed = mix(self._params, remote, self.weight)
        else:
            target = remote if _writable_float32(remote) else None
            mixed = merge(self._params, sent, remote, self.weight, out=target)
        self._state = self.trainer.with_params(self._state, mixed)
        self._params = _frozen(mixed)
        self.status.mixes += 1

    # -- tasks --
    async def run_training(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED
                           ) -> None:
        chunk = max(1, math.ceil(self.steps_per_second * CHUNK_PERIOD_S))
        period = chunk / self.steps_per_second
        task_status.started()
        next_at = self._clock()
        while True:
            if self.paused:
                await self._running.wait()
                next_at = self._clock()  # a pause is not a backlog to catch up on
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
            pending, self._pending = self._pending, []
            for sent, remote in pending:
                self._merge_now(sent, remote)
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
