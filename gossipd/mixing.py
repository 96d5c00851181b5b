"""Gossip mixing rules: pure functions on flat float32 parameter vectors.

Push-pull averaging: when node A exchanges with peer B, both compute
``(mine + theirs) / 2``.  Because both sides apply the same symmetric rule, the
swarm-wide mean of the parameters is unchanged by an exchange (up to float
rounding) while the two nodes' disagreement is removed; repeated random pairings
drive every node towards the mean (consensus).

Inputs are validated strictly: a vector of the wrong shape means a peer with a
different model, and a non-finite vector would poison every node it reaches
through later exchanges, so both are rejected rather than mixed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


def _as_vector(name: str, v: np.ndarray) -> np.ndarray:
    a = np.asarray(v)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-d vector, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name} must be a float vector, got dtype {a.dtype}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    return a


def mix(local: np.ndarray, remote: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """``(1 - weight) * local + weight * remote`` as a new float32 vector.

    ``weight`` is the share taken from the remote vector, in [0, 1]; 0.5 is the
    symmetric push-pull average.
    """
    a = _as_vector("local", local)
    b = _as_vector("remote", remote)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: local {a.shape} vs remote {b.shape}")
    w = float(weight)
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    # Compute in float64 and round once, so mix(a, b) and mix(b, a) agree bit-for-bit
    # at weight 0.5 (both nodes of an exchange end up with identical params).
    out = (1.0 - w) * a.astype(np.float64) + w * b.astype(np.float64)
    return out.astype(np.float32)


def _stack(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """Validate equally shaped finite vectors and stack them as float64 rows."""
    if len(vectors) == 0:
        raise ValueError("need at least one vector")
    arrs = [_as_vector(f"vectors[{i}]", v) for i, v in enumerate(vectors)]
    for i, a in enumerate(arrs):
        if a.shape != arrs[0].shape:
            raise ValueError(
                f"shape mismatch: vectors[0] {arrs[0].shape} vs vectors[{i}] {a.shape}"
            )
    return np.stack(arrs).astype(np.float64)


def mean_vector(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """The element-wise mean of equally shaped vectors (float32)."""
    mean: np.ndarray = _stack(vectors).mean(axis=0)
    return mean.astype(np.float32)


def consensus_distance(vectors: Sequence[np.ndarray]) -> float:
    """Mean over nodes of the squared L2 distance to the mean vector (0 = consensus)."""
    rows = _stack(vectors)
    dev = rows - rows.mean(axis=0)
    return float(np.mean(np.sum(dev * dev, axis=1)))


# --- optax-style rule object ---------------------------------------------------------
# For a daemon that wants to track its mixing: init/update like optax, the state an
# immutable NamedTuple that ``update`` returns anew (the caller stores it).


class MixState(NamedTuple):
    rounds: int  # exchanges applied so far
    last_gap: float  # squared L2 distance local<->remote at the last exchange


def push_pull_init() -> MixState:
    return MixState(rounds=0, last_gap=0.0)


def push_pull_update(
    state: MixState, local: np.ndarray, remote: np.ndarray, weight: float = 0.5
) -> tuple[np.ndarray, MixState]:
    """Mix ``local`` with ``remote`` and record the pre-mix gap (a drift metric)."""
    mixed = mix(local, remote, weight)
    diff = np.asarray(local, np.float64) - np.asarray(remote, np.float64)
    return mixed, MixState(rounds=state.rounds + 1, last_gap=float(diff @ diff))
