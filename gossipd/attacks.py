"""Attack modes for testnet nodes: what a Byzantine node sends instead of its honest vector.

Every function here is pure: the state is an immutable :class:`AttackState` that
:func:`attack_apply` returns anew, and the randomness is drawn from a generator seeded with
``(seed, calls)``, so a run is reproducible from its seed and a replayed call gives the same
vector. A testnet node calls ``attack_apply`` where an honest node would send its snapshot ``S``;
it keeps training and mixing honestly on its own params (so ``S`` tracks the swarm and the attack
stays anchored to a realistic point), only what it SENDS is forged.

Modes (``a`` is the anchor: the first honest vector the node sent, i.e. the swarm's common init
because every node starts at consensus; ``S`` is the honest vector of this call):

* ``"signflip"``: ``a - k * (S - a)``: the node's training progress since the start, reversed
  and scaled by ``signflip_k``. Averaging with it undoes the peer's learning. (``-S`` would also
  be a sign flip, but one whose norm equals ``||S||`` exactly; the anchored form is the one that
  survives a norm check and is the gradient-sign-flip attack of the literature in parameter
  space.)
* ``"scaled"``: ``a + lam * (S - a)`` with a big ``scaled_lambda``: the honest direction, blown
  up, the model-replacement attack. Plain averaging overshoots far past any sensible point.
* ``"noise"``: ``S + N(0, noise_std^2)`` per coordinate.
* ``"alie"``: A Little Is Enough (Baruch, Baruch, Goldberg 2019): ``mean - z * std``, element
  wise over the vectors it recently RECEIVED (the honest population as far as it can see). The
  vector sits inside the honest spread, so distance-based defences cannot tell it apart, yet it
  pushes every coordinate the same way. The paper's ``z`` (:func:`alie_z`) is 0 for 8 nodes
  and 1 attacker (no attack at all), so a fixed ``alie_z`` (default 1.5) is used unless
  ``AttackConfig.alie_z`` is None. With fewer than 2 received vectors it sends ``S``.
* ``"nan"``: ``S`` with a random ``nan_fraction`` of the coordinates (at least one) set to NaN:
  one NaN is enough to poison a naive average, and a sparse one slips past any check that only
  looks at a few elements.
* ``"stale"``: always the anchor: a replay of its first snapshot (a node that never trains, or
  replays an old message).
* ``"none"``: the honest vector (the control).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Literal, NamedTuple, get_args

import numpy as np

AttackMode = Literal["none", "signflip", "scaled", "noise", "alie", "nan", "stale"]
ATTACK_MODES: tuple[str, ...] = get_args(AttackMode)
# The modes that forge a vector (everything but the honest control).
HOSTILE_MODES: tuple[str, ...] = tuple(m for m in ATTACK_MODES if m != "none")


class AttackConfig(NamedTuple):
    """Strengths of the attacks (module docstring); the defaults make each one break plain
    averaging of the digits MLP visibly within a 8-node swarm."""

    signflip_k: float = 2.0
    scaled_lambda: float = 10.0
    noise_std: float = 0.5
    alie_z: float | None = 1.5  # None: the paper's z from alie_n / alie_f
    alie_n: int = 8  # swarm size and attacker count for the paper's z
    alie_f: int = 1
    nan_fraction: float = 0.01


DEFAULT_ATTACK = AttackConfig()


class AttackState(NamedTuple):
    seed: int
    calls: int  # vectors forged so far; with seed, selects the random draws of the next call
    anchor: np.ndarray | None  # first honest vector (float32), set on the first call


def attack_init(seed: int, anchor: np.ndarray | None = None) -> AttackState:
    """A fresh attack state. ``anchor`` defaults to the first honest vector passed to
    :func:`attack_apply`."""
    a = None if anchor is None else np.array(anchor, dtype=np.float32, copy=True)
    return AttackState(seed=int(seed), calls=0, anchor=a)


def alie_z(n: int, f: int) -> float:
    """The z of Baruch et al. 2019: ``s = floor(n / 2 + 1) - f`` honest workers must be
    convinced, ``z = Phi^-1((n - s) / n)``. 0 when that fraction is 1/2 or less (e.g. n=8, f=1)."""
    if n < 1 or not 0 <= f < n:
        raise ValueError(f"need n >= 1 and 0 <= f < n, got n={n} f={f}")
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    if p <= 0.5:
        return 0.0
    if p >= 1.0:
        return math.inf
    return NormalDist().inv_cdf(p)


def _rng(state: AttackState) -> np.random.Generator:
    return np.random.default_rng([state.seed & 0xFFFFFFFF, state.calls])


def _alie(honest: np.ndarray, received: Sequence[np.ndarray], z: float) -> np.ndarray:
    rows = [np.asarray(r, np.float64) for r in received
            if np.shape(r) == honest.shape and np.all(np.isfinite(r))]
    if len(rows) < 2:
        return honest.copy()
    stack = np.stack(rows)
    forged: np.ndarray = stack.mean(axis=0) - z * stack.std(axis=0)
    return forged.astype(np.float32)


def attack_apply(
    state: AttackState,
    mode: str,
    honest: np.ndarray,
    received_recent: Sequence[np.ndarray] = (),
    config: AttackConfig = DEFAULT_ATTACK,
) -> tuple[np.ndarray, AttackState]:
    """The vector to send instead of ``honest`` (float32, same shape, a new array) and the new
    state. ``received_recent`` is what this node received from peers lately (used by "alie";
    the caller keeps the window, e.g. the last 8). Unknown modes raise ValueError."""
    if mode not in ATTACK_MODES:
        raise ValueError(f"unknown attack mode {mode!r}; known: {', '.join(ATTACK_MODES)}")
    s = np.asarray(honest, dtype=np.float32)
    if s.ndim != 1:
        raise ValueError(f"honest must be a 1-d vector, got shape {s.shape}")
    anchor = state.anchor
    if anchor is None:
        anchor = s.copy()
    elif anchor.shape != s.shape:
        raise ValueError(f"anchor shape {anchor.shape} != honest shape {s.shape}")
    a64, s64 = anchor.astype(np.float64), s.astype(np.float64)
    if mode == "none":
        out = s.copy()
    elif mode == "signflip":
        out = (a64 - config.signflip_k * (s64 - a64)).astype(np.float32)
    elif mode == "scaled":
        out = (a64 + config.scaled_lambda * (s64 - a64)).astype(np.float32)
    elif mode == "noise":
        noise = _rng(state).normal(0.0, config.noise_std, size=s.shape)
        out = (s64 + noise).astype(np.float32)
    elif mode == "alie":
        z = config.alie_z if config.alie_z is not None else alie_z(config.alie_n, config.alie_f)
        out = _alie(s, received_recent, z)
    elif mode == "nan":
        out = s.copy()
        if out.size:
            count = max(1, round(config.nan_fraction * out.size))
            idx = _rng(state).choice(out.size, size=min(count, out.size), replace=False)
            out[idx] = np.nan
    else:  # "stale"
        out = anchor.copy()
    return out, AttackState(seed=state.seed, calls=state.calls + 1, anchor=anchor)
