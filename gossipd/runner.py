"""Drives the trainer from trio: paced training steps and evaluation in one worker thread.

Rules:
- JAX never runs on the trio thread: every trainer call goes through `trio.to_thread.run_sync`
  with one CapacityLimiter, so the event loop keeps serving peers (yamux window updates and
  pings stall otherwise) and only one JAX call runs at a time.
- Training is paced to `steps_per_second` so nodes sharing a machine progress alike and leave
  CPU for networking; a slow machine simply runs behind the pace.
- Remote parameters that arrive while a chunk of steps is running are queued and mixed in right
  after the chunk returns, so no exchange result is overwritten and none is applied twice.
- `snapshot()` returns the last completed parameters (a private copy), safe to send.
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

from gossipd.mixing import mix
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
        self._params: np.ndarray = trainer.get_params(self._state)
        self._pending: list[np.ndarray] = []
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
        """The last completed parameters, not copied: read, never modify."""
        return self._params

    def snapshot(self) -> tuple[np.ndarray, int]:
        return self._params.copy(), self.status.step

    def apply_remote(self, remote: np.ndarray, remote_step: int) -> None:
        if self._busy:
            self._pending.append(remote)
        else:
            self._mix_now(remote)

    def _mix_now(self, remote: np.ndarray) -> None:
        mixed = mix(self._params, remote, self.weight)
        self._state = self.trainer.with_params(self._state, mixed)
        self._params = mixed
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
            self._state, self._params = state, params
            self.status.step = int(state.step)
            self.status.loss = float(loss)
            pending, self._pending = self._pending, []
            for remote in pending:
                self._mix_now(remote)
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
