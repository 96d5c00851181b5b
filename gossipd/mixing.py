"""Gossip mixing rules: pure functions on flat float32 parameter vectors.

Push-pull averaging: when node A exchanges with peer B, both compute
``(mine + theirs) / 2``.  Because both sides apply the same symmetric rule, the
swarm-wide mean of the parameters is unchanged by an exchange (up to float
rounding) while the two nodes' disagreement is removed; repeated random pairings
drive every node towards the mean (consensus).

Training does not stop while an exchange is in flight, so by the time the peer's
vector R arrives, the local vector has moved on from the snapshot S that was sent
to some C. ``merge`` then sets ``C + w * (R - S)``: the pairwise mix of the two
snapshots that were actually exchanged, plus the local progress ``C - S`` made
meanwhile. With no progress (C == S) it is exactly ``mix(S, R, w)``; mixing R into
C directly instead would count the progress made during the exchange only with
weight ``1 - w`` and break the symmetry of the pair.

Inputs are validated strictly: a vector of the wrong shape means a peer with a
different model, and a non-finite vector would poison every node it reaches
through later exchanges, so both are rejected rather than mixed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


def as_vector(name: str, v: np.ndarray) -> np.ndarray:
    """``v`` as a 1-d finite float array, or ValueError naming ``name`` and what is wrong."""
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
    a = as_vector("local", local)
    b = as_vector("remote", remote)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: local {a.shape} vs remote {b.shape}")
    w = float(weight)
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    # Compute in float64 and round once, so mix(a, b) and mix(b, a) agree bit-for-bit
    # at weight 0.5 (both nodes of an exchange end up with identical params).
    out = (1.0 - w) * a.astype(np.float64) + w * b.astype(np.float64)
    return out.astype(np.float32)


# Elements per block in ``merge``: at most MERGE_BLOCK (two float64 work buffers of 2 MiB each)
# and at most 1/8 of the vector, so the work buffers stay under half the vector's size.
MERGE_BLOCK = 1 << 18


def merge(
    current: np.ndarray,
    sent: np.ndarray,
    remote: np.ndarray,
    weight: float = 0.5,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``current + weight * (remote - sent)`` as float32: the merge rule of an exchange
    that overlapped training (module docstring).

    Computed block by block as ``(1 - w) * sent + w * remote + (current - sent)`` in
    float64 and rounded once, the first two terms exactly as ``mix`` computes them: so with
    no local progress (``current`` equal to ``sent``) the result is ``mix(sent, remote, w)``
    bit for bit, and at weight 0.5 both nodes of an exchange end identical. ``out`` (float32,
    same shape) receives the result and may be one of the inputs, e.g. the receive buffer of
    ``remote``: then nothing model-sized is allocated. A non-finite result (a NaN or inf in
    any input, or an overflow) raises ValueError; ``out`` is then partly written.
    """
    vectors = [_as_shape("current", current), _as_shape("sent", sent),
               _as_shape("remote", remote)]
    shape = vectors[0].shape
    for name, v in zip(("sent", "remote"), vectors[1:], strict=True):
        if v.shape != shape:
            raise ValueError(f"shape mismatch: current {shape} vs {name} {v.shape}")
    w = float(weight)
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    if out is None:
        out = np.empty(shape, np.float32)
    elif out.dtype != np.float32 or out.shape != shape or not out.flags.writeable:
        raise ValueError("out must be a writable float32 vector of the same shape")
    elif any(np.may_share_memory(out, v) and out is not v for v in vectors):
        raise ValueError("out overlaps an input without being that input")
    c, s, r = vectors
    step = max(1, min(MERGE_BLOCK, shape[0] // 8))
    acc = np.empty(step, np.float64)
    term = np.empty_like(acc)
    # Overflow and inf - inf are what the finiteness check below is for: no warnings.
    with np.errstate(over="ignore", invalid="ignore"):
        for lo in range(0, shape[0], step):
            hi = min(lo + step, shape[0])
            a, t = acc[: hi - lo], term[: hi - lo]
            np.multiply(s[lo:hi], 1.0 - w, out=a, dtype=np.float64)
            np.multiply(r[lo:hi], w, out=t, dtype=np.float64)
            a += t
            np.subtract(c[lo:hi], s[lo:hi], out=t, dtype=np.float64)
            a += t
            block = out[lo:hi]
            np.copyto(block, a, casting="same_kind")
            if not np.isfinite(block).all():
                raise ValueError(f"merge result is not finite near element {lo}")
    return out


def _as_shape(name: str, v: np.ndarray) -> np.ndarray:
    """Like as_vector without the finiteness pass: merge checks its result instead."""
    a = np.asarray(v)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-d vector, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name} must be a float vector, got dtype {a.dtype}")
    return a


def _stack(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """Validate equally shaped finite vectors and stack them as float64 rows."""
    if len(vectors) == 0:
        raise ValueError("need at least one vector")
    arrs = [as_vector(f"vectors[{i}]", v) for i, v in enumerate(vectors)]
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


# --- staleness-aware weights --------------------------------------------------------


def staleness_weight(weight: float, local_step: int, remote_step: int, halflife: int) -> float:
    """The mixing weight for a remote vector that is ``local_step - remote_step`` steps behind.

    ``weight * 2 ** (-max(0, local_step - remote_step) / halflife)`` for ``halflife > 0``;
    ``weight`` unchanged for ``halflife == 0`` (staleness ignored).

    Why: a peer that has taken fewer SGD steps than we have (a slower machine, or one that was
    paused) holds a model from earlier in training; averaging it in at full weight pulls the
    faster node back. Every ``halflife`` steps of lag halve its share. A peer that is AHEAD of
    us counts fully: its model is at least as trained as ours, and discounting it would slow
    the laggard's catch-up. The result is never above ``weight``, so it stays in [0, 1] whenever
    ``weight`` is. Note the rule is deliberately asymmetric: the two sides of an exchange take
    different shares, so unlike plain push-pull it does not conserve the pair's mean.
    """
    w = float(weight)
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    if halflife < 0:
        raise ValueError(f"halflife must be >= 0, got {halflife}")
    if local_step < 0 or remote_step < 0:
        raise ValueError(f"steps must be >= 0, got local {local_step}, remote {remote_step}")
    if halflife == 0:
        return w
    lag = max(0, int(local_step) - int(remote_step))
    return w * float(2.0 ** (-lag / halflife))
