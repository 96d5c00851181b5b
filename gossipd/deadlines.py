"""Adaptive exchange deadlines: pure state in the optax style (init / observe / deadline).

A fixed `averaging.timeout_s` is either too long (a frozen peer holds an outgoing slot for the
whole of it: 10 s where exchanges take 20 ms) or too short (a large model on a slow link never
finishes). The deadline of the next exchange is therefore derived from the exchanges this node
actually completed, and `averaging.timeout_s` is only its ceiling.

Rules and the reasons for them:
- deadline = clamp(FACTOR * p90(recent durations) + MARGIN_S, FLOOR_S, ceiling). p90, not the
  mean: one slow exchange among many fast ones must still fit. FACTOR 4 leaves room for a busy
  machine (2 cores, many nodes); MARGIN_S covers a dial's fixed cost.
- Until MIN_SAMPLES exchanges completed, the ceiling applies: no evidence, no tightening.
- A timeout counts as a sample of twice the deadline that expired, so a network that became
  slower widens the deadline within a few failures instead of failing forever; a frozen peer
  only costs one (short) deadline per attempt, and peer backoff keeps attempts rare.
- Only the newest WINDOW samples count, so the deadline follows the swarm as it changes.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

WINDOW = 32
MIN_SAMPLES = 5
FACTOR = 4.0
MARGIN_S = 0.5
FLOOR_S = 1.0


class DeadlineState(NamedTuple):
    samples: tuple[float, ...] = ()  # durations in seconds, newest last


def deadline_init() -> DeadlineState:
    return DeadlineState()


def observe(state: DeadlineState, duration_s: float) -> DeadlineState:
    """Fold in the duration of one completed exchange."""
    if not np.isfinite(duration_s) or duration_s < 0:
        return state
    return DeadlineState((*state.samples, float(duration_s))[-WINDOW:])


def observe_timeout(state: DeadlineState, deadline_s: float) -> DeadlineState:
    """An exchange ran into its deadline: count it as twice that long (module rules)."""
    return observe(state, 2.0 * deadline_s)


def deadline(state: DeadlineState, ceiling_s: float) -> float:
    """Seconds the next exchange may take in all."""
    if len(state.samples) < MIN_SAMPLES:
        return ceiling_s
    p90 = float(np.percentile(np.asarray(state.samples), 90))
    return float(min(ceiling_s, max(FLOOR_S, FACTOR * p90 + MARGIN_S)))
