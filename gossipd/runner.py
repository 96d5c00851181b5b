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
- Averaging rule (`AveragingRule`): "gossip" merges as above; "diloco" treats each exchange as
  the end of a cycle of inner steps: the pair average A of the two exchanged vectors is the
  outer optimizer's target (gossipd/outer.py: Nesterov step on the pseudo-gradient anchor - A),
  and the current parameters become new_anchor + (C - S), so steps taken while the exchange was
  in flight carry over into the next cycle. `outer_due` tells the daemon when a cycle of
  `inner_steps` is complete. Staleness (`staleness_halflife` > 0) lowers the weight of a peer
  that is behind us (gossipd/mixing.py staleness_weight), in either algorithm.
- Robust (`AveragingRule.robust`): the remote update R - S is clipped around our own point
  with a radius learned from recent exchanges (gossipd/robust.py, ClippedGossip), so one lying
  peer moves us by at most w * tau per exchange; `on_clip` reports each outcome for the peer's
  reputation.
- Averaging state that must survive a restart (the outer anchor and momentum, the compression
  residual) is part of every checkpoint (`averaging_state`).
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
from gossipd.compress import EFState, ErrorFeedback
from gossipd.mixing import merge, mix, staleness_weight
from gossipd.outer import OuterState, outer_init, outer_update
from gossipd.robust import ClipInfo, ClipState, clip_init, clipped_merge
from gossipd.trainer import Trainer, TrainState

log = logging.getLogger("gossipd.runner")

CHUNK_PERIOD_S = 0.25  # run steps in chunks of about this much wall time
JOIN_WAIT_S = 10.0  # a pulling node trains alone after this long without an exchange
JOIN_MODES = ("pull", "mix")


@dataclass(frozen=True)
class AveragingRule:
    """How remote parameters are merged (the averaging.* config keys of the same names)."""

    algorithm: str = "gossip"  # or "diloco"
    inner_steps: int = 20
    outer_lr: float = 0.5
    outer_momentum: float = 0.9
    staleness_halflife: int = 0
    robust: bool = False  # self-centred clipping of every remote update (gossipd/robust.py)


@dataclass
class TrainStatus:
    step: int = 0
    loss: float | None = None
    accuracy: float | None = None
    accuracy_step: int | None = None
    mixes: int = 0
    adopted_step: int | None = None  # the peer's step whose parameters a pulling node took
    fresh_ignored: int = 0  # remote parameters at step 0 not mixed in (they carry no training)
    outer_steps: int = 0  # diloco: outer optimizer steps taken
    clipped: int = 0  # robust: remote updates scaled down by the clipping
    diverged: int = 0  # chunks whose result was not finite (discarded)
    merges_refused: int = 0  # merges whose result would not be finite (skipped)


class ModelRunner:
    def __init__(
        self,
        trainer: Trainer,
        steps_per_second: float,
        eval_interval_s: float,
        weight: float,
        clock: Callable[[], float] = trio.current_time,
        join: str | None = None,
        rule: AveragingRule | None = None,
        error_feedback: ErrorFeedback | None = None,
    ) -> None:
        # join: "pull" or "mix" (averaging.join) turn the join rules on; None leaves them off,
        # so every exchange mixes (simulations and tests that start nodes from different models).
        if join is not None and join not in JOIN_MODES:
            raise ValueError(f"join must be one of {', '.join(JOIN_MODES)}, got {join!r}")
        self.trainer = trainer
        self.rule = rule or AveragingRule()
        if self.rule.algorithm not in ("gossip", "diloco"):
            raise ValueError(f"unknown averaging algorithm {self.rule.algorithm!r}")
        # The node's compression residual lives here so checkpoints carry it.
        self.error_feedback = error_feedback or ErrorFeedback("none")
        self.steps_per_second = steps_per_second
        self.eval_interval_s = eval_interval_s
        self.weight = weight
        self.status = TrainStatus()
        self._limiter = trio.CapacityLimiter(1)
        self._state: TrainState = trainer.init()
        self._params: np.ndarray = _frozen(trainer.get_params(self._state))
        # diloco: the anchor is the model at the start of the current cycle of inner steps
        self._outer: OuterState | None = (
            outer_init(self._params) if self.rule.algorithm == "diloco" else None)
        self._cycle_start = 0  # diloco: step at which the current cycle of inner steps began
        self._clip: ClipState = clip_init()  # robust: recent honest-looking distances
        # robust: told (peer id or None, what the clipping did) after every clipped merge
        self.on_clip: Callable[[str | None, ClipInfo], None] | None = None
        # (sent snapshot or None for a plain mix, remote, remote step, peer) waiting for the chunk
        self._pending: list[tuple[np.ndarray | None, np.ndarray, int, str | None]] = []
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

    def merge_remote(self, sent: np.ndarray, remote: np.ndarray, remote_step: int,
                     peer: str | None = None) -> None:
        """Merge a peer's parameters R from an exchange that sent our snapshot S: the current
        parameters C become C + weight * (R - S), except for the join rules in the module
        docstring. ``remote`` is taken over (the merge is written into it)."""
        if self._busy:
            self._pending.append((sent, remote, remote_step, peer))
        else:
            self._merge_now(sent, remote, remote_step, peer)

    def apply_remote(self, remote: np.ndarray, remote_step: int) -> None:
        """Mix R into the current parameters C directly: (1 - weight) * C + weight * R. For
        callers that do not know what they sent; exchanges use merge_remote."""
        if self._busy:
            self._pending.append((None, remote, remote_step, None))
        else:
            self._merge_now(None, remote, remote_step, None)

    def _merge_now(self, sent: np.ndarray | None, remote: np.ndarray, remote_step: int,
                   peer: str | None) -> None:
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
            if self.rule.algorithm == "diloco":  # a new cycle starts from the adopted model
                self._outer = outer_init(mixed)
            self._cycle_start = self_step
        else:
            try:
                mixed = self._mixed(sent, remote, remote_step, self_step, peer)
                if not np.all(np.isfinite(mixed)):
                    raise ValueError("non-finite result")
            except ValueError as exc:  # the result overflowed: our model stays as it is
                self.status.merges_refused += 1
                log.warning("merge with %s skipped: its result is not finite (%s)", peer, exc)
                return
        self._state = self.trainer.with_params(self._state, mixed)
        self._params = _frozen(mixed)
        self.status.mixes += 1

    def _mixed(self, sent: np.ndarray | None, remote: np.ndarray, remote_step: int,
               self_step: int, peer: str | None) -> np.ndarray:
        """The merge of one exchange under the averaging rule (module docstring)."""
        w = staleness_weight(self.weight, self_step, remote_step, self.rule.staleness_halflife)
        if sent is None:
            return mix(self._params, remote, w)
        if self.rule.robust:
            # diloco clips the pair average around what we sent, gossip the merge itself
            base = sent if self.rule.algorithm == "diloco" else self._params
            mixed, self._clip, info = clipped_merge(self._clip, base, sent, remote, w)
            self.status.clipped += info.scale < 1.0
            if self.on_clip is not None:
                self.on_clip(peer, info)
            return self._outer_step(sent, mixed) if self.rule.algorithm == "diloco" else mixed
        if self.rule.algorithm == "diloco":
            return self._outer_step(sent, mix(sent, remote, w))
        target = remote if _writable_float32(remote) else None
        return merge(self._params, sent, remote, w, out=target)

    def _outer_step(self, sent: np.ndarray, averaged: np.ndarray) -> np.ndarray:
        """diloco: outer Nesterov step towards the pair average; in-flight progress kept."""
        outer = self._outer if self._outer is not None else outer_init(sent)
        anchor, self._outer = outer_update(outer, averaged, self.rule.outer_lr,
                                           self.rule.outer_momentum)
        self._cycle_start = self.status.step
        self.status.outer_steps += 1
        progress = self._params.astype(np.float64) - sent.astype(np.float64)
        return (anchor.astype(np.float64) + progress).astype(np.float32)

    @property
    def outer_due(self) -> bool:
        """diloco: a cycle of inner_steps is complete, so this node should start an exchange.
        Always True for gossip (its pace is averaging.interval_s alone)."""
        if self.rule.algorithm != "diloco":
            return True
        return self.status.step - self._cycle_start >= self.rule.inner_steps

    def _diverged(self) -> None:
        """A chunk ended with non-finite parameters (a too-large lr, or a vector merged in
        from a peer that was far off): keep the last finite state and go on. Nothing
        non-finite is ever published, sent or checkpointed."""
        self.status.diverged += 1
        if self.status.diverged in (1, 10) or self.status.diverged % 100 == 0:
            log.warning("training diverged (non-finite parameters) %d time(s); kept the last "
                        "finite state at step %d (is train.lr too large?)",
                        self.status.diverged, self.status.step)

    def _merge_pending(self) -> None:
        pending, self._pending = self._pending, []
        for sent, remote, remote_step, peer in pending:
            self._merge_now(sent, remote, remote_step, peer)

    # -- checkpoints --
    def averaging_state(self) -> dict[str, np.ndarray]:
        """Named float32 arrays the averaging keeps besides the parameters, saved in every
        checkpoint: the diloco anchor and momentum, the compression residual, the cycle start.
        Called on the trio thread between chunks; copied before anything else runs."""
        out: dict[str, np.ndarray] = {
            "cycle_start": np.asarray([self._cycle_start], np.float32)}
        if self._outer is not None:
            out["outer_anchor"], out["outer_momentum"] = self._outer.anchor, self._outer.momentum
        residual = self.error_feedback.state.residual
        if residual is not None:
            out["ef_residual"] = residual
        return out

    def restore_averaging_state(self, state: dict[str, np.ndarray]) -> None:
        """Take back what averaging_state() returned when the checkpoint was saved. Raise
        checkpoint.CheckpointError to refuse it (an older checkpoint is tried instead)."""
        n = self.trainer.num_params
        for key in ("outer_anchor", "outer_momentum", "ef_residual"):
            if key in state and state[key].shape != (n,):
                raise checkpoint.CheckpointError(
                    f"averaging state {key} has shape {state[key].shape}, expected ({n},)")
        self._outer = None  # from the checkpoint, else re-anchored at its parameters (resume)
        if "cycle_start" in state and state["cycle_start"].size == 1:
            self._cycle_start = int(state["cycle_start"][0])
        if "outer_anchor" in state and "outer_momentum" in state:
            self._outer = OuterState(np.array(state["outer_anchor"], np.float32),
                                     np.array(state["outer_momentum"], np.float32))
        if "ef_residual" in state and self.error_feedback.mode != "none":
            self.error_feedback.state = EFState(np.array(state["ef_residual"], np.float32))
        unused = sorted(set(state) - {"cycle_start", "outer_anchor", "outer_momentum",
                                      "ef_residual"})
        if unused:
            log.info("checkpoint averaging state %s not used by this runner", unused)

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
        if self.rule.algorithm == "diloco" and self._outer is None:
            self._outer = outer_init(self._params)  # a checkpoint saved by a gossip node
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
                if np.all(np.isfinite(params)):
                    self._state, self._params = state, _frozen(params)
                    self.status.step = int(state.step)
                    self.status.loss = float(loss)
                else:
                    self._diverged()
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
