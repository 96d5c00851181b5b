"""Tests for gossipd.robust: plain checks, self-centred clipping, adaptive tau, reputation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gossipd.mixing import merge
from gossipd.robust import (
    DEFAULT_CLIP,
    ClipConfig,
    ClipInfo,
    ClipState,
    PeerScore,
    ReputationConfig,
    check_remote,
    clip_init,
    clip_tau,
    clipped_merge,
    outcome_of,
    recommend_ban,
    reputation_forget,
    reputation_init,
    reputation_update,
)


def _vec(seed: int, n: int = 64, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=n) * scale).astype(np.float32)


def _warm(distances: list[float], cfg: ClipConfig = DEFAULT_CLIP) -> ClipState:
    state = clip_init()
    base = np.zeros(8, np.float32)
    base[0] = 100.0  # big norm: the warm-up bound never binds
    for d in distances:
        remote = base.copy()
        remote[1] = d
        _, state, _ = clipped_merge(state, base, base, remote, 0.5, cfg)
    return state


# --- check_remote -------------------------------------------------------------------------


def test_check_accepts_honest() -> None:
    s = _vec(0)
    assert check_remote(s, s + 0.01 * _vec(1)) is None


@pytest.mark.parametrize("remote, reason", [
    (np.zeros(63, np.float32), "shape"),
    (np.zeros((8, 8), np.float32), "shape"),
    (np.zeros(64, np.int32), "shape"),
    (np.full(64, np.nan, np.float32), "nan"),
    (np.r_[np.ones(63, np.float32), np.float32(np.inf)], "nan"),
])
def test_check_rejects_with_reason(remote: np.ndarray, reason: str) -> None:
    assert check_remote(_vec(0), remote) == reason


def test_check_norm_ratio_both_ways() -> None:
    s = _vec(0)
    assert check_remote(s, 11.0 * s) == "norm"
    assert check_remote(s, s / 11.0) == "norm"
    assert check_remote(s, 9.0 * s) is None
    assert check_remote(s, 3.0 * s, norm_ratio=2.0) == "norm"
    # An all-zero snapshot has no scale to compare against: only shape and finiteness apply.
    assert check_remote(np.zeros(64, np.float32), s) is None
    with pytest.raises(ValueError):
        check_remote(s, s, norm_ratio=0.5)


def test_single_nan_among_many_is_found() -> None:
    s = _vec(0, 10_000)
    r = s.copy()
    r[7777] = np.nan
    assert check_remote(s, r) == "nan"


# --- clipping -----------------------------------------------------------------------------


def test_small_honest_delta_passes_unchanged() -> None:
    state = _warm([1.0] * 8)
    c, s = _vec(0), _vec(0)
    c[0] += 0.25  # local progress during the exchange
    r = s + (0.1 * _vec(1) / np.linalg.norm(_vec(1))).astype(np.float32)
    out, new_state, info = clipped_merge(state, c, s, r, 0.5)
    np.testing.assert_array_equal(out, merge(c, s, r, 0.5))
    assert info.scale == 1.0 and not info.hard
    assert outcome_of(info) == "clean"
    assert new_state.exchanges == state.exchanges + 1
    assert new_state.clipped == 0


def test_far_remote_is_clipped_to_tau() -> None:
    state = _warm([1.0] * 8)
    assert clip_tau(state, 100.0) == pytest.approx(1.0)
    s = _vec(0)
    r = s + 1000.0 * _vec(1)
    plain_clip = ClipConfig(redescend=False)
    out, new_state, info = clipped_merge(state, s, s, r, 0.5, plain_clip)
    step = np.linalg.norm(out.astype(np.float64) - s)
    assert step == pytest.approx(0.5 * info.tau, rel=1e-5)
    assert info.scale < 1e-2 and info.hard and outcome_of(info) == "clipped_hard"
    assert new_state.clipped == 1
    # The direction is kept: the step points from S towards R.
    assert float((out - s) @ (r - s)) > 0


def test_far_outliers_redescend() -> None:
    cfg = ClipConfig(hard_factor=1.5)
    state = _warm([1.0] * 8, cfg)
    s = np.zeros(4, np.float32)
    s[0] = 100.0
    steps = []
    for d in (0.5, 1.2, 1.5, 3.0, 30.0):
        r = s.copy()
        r[1] = d
        out, _, info = clipped_merge(state, s, s, r, 0.5, cfg)
        steps.append(float(out[1]))
        assert info.hard == (d > 1.5)
    # Up to tau the step grows with the distance, is capped at w * tau up to hard_factor * tau,
    # then shrinks like 1 / distance.
    assert steps[:3] == pytest.approx([0.25, 0.5, 0.5])
    assert steps[3] == pytest.approx(0.5 * 1.5 / 3.0)
    assert steps[4] == pytest.approx(0.5 * 1.5 / 30.0)


@settings(max_examples=60, deadline=None)
@given(
    c=arrays(np.float32, 16, elements=st.floats(-10, 10, width=32)),
    s=arrays(np.float32, 16, elements=st.floats(-10, 10, width=32)),
    r=arrays(np.float32, 16, elements=st.floats(-1e4, 1e4, width=32)),
    w=st.floats(0.0, 1.0),
    history=st.lists(st.floats(1e-3, 50.0), min_size=0, max_size=40),
)
def test_clipping_bounds_the_step(c: np.ndarray, s: np.ndarray, r: np.ndarray, w: float,
                                  history: list[float]) -> None:
    state = _warm(history)
    out, _, info = clipped_merge(state, c, s, r, w)
    step = float(np.linalg.norm(out.astype(np.float64) - c))
    # Up to the float32 rounding of the result (half an ulp per element) and the float64
    # rounding of merge's C - S + S when C is tiny next to S.
    ulp = float(np.linalg.norm(np.spacing(np.abs(out).astype(np.float32))))
    ulp += float(np.linalg.norm(np.spacing(np.maximum(np.abs(c), np.abs(s)).astype(np.float64))))
    assert step <= w * info.tau * (1 + 1e-9) + ulp
    assert 0.0 < info.scale <= 1.0
    if info.distance <= info.tau:
        np.testing.assert_array_equal(out, merge(c, s, r, w))


def test_tau_adapts_to_shrinking_distances() -> None:
    cfg = ClipConfig(window=16, multiplier=2.0)
    early = _warm([4.0] * 16, cfg)
    tau_early = clip_tau(early, 100.0, cfg)
    late = _warm([4.0] * 16 + [0.5] * 16, cfg)
    tau_late = clip_tau(late, 100.0, cfg)
    assert tau_early == pytest.approx(8.0)
    assert tau_late == pytest.approx(1.0)
    assert len(late.distances) == 16


def test_tau_median_ignores_a_minority_of_far_vectors() -> None:
    honest_and_attacks = [1.0, 1000.0, 1.1, 0.9, 1000.0, 1.0, 1.2, 1000.0, 0.95]
    state = _warm(honest_and_attacks)
    assert clip_tau(state, 100.0) <= 1.2


def test_warmup_and_floor() -> None:
    cfg = ClipConfig(warmup=4, warmup_rel=0.5, floor=1e-3)
    # No history: the bound is relative to our own norm.
    assert clip_tau(clip_init(), 10.0, cfg) == pytest.approx(5.0)
    # A first far vector cannot raise the bound past warmup_rel * ||S||.
    assert clip_tau(_warm([100.0], cfg), 10.0, cfg) == pytest.approx(5.0)
    # A few small distances tighten it already during warm-up.
    assert clip_tau(_warm([0.1, 0.1], cfg), 10.0, cfg) == pytest.approx(0.1)
    # After warm-up the median alone counts; exact consensus leaves the floor.
    assert clip_tau(_warm([20.0] * 4, cfg), 10.0, cfg) == pytest.approx(20.0)
    assert clip_tau(_warm([0.0] * 8, cfg), 10.0, cfg) == pytest.approx(1e-3)


def test_current_exchange_is_judged_by_history_only() -> None:
    state = _warm([1.0] * 8)
    s = np.zeros(4, np.float32)
    s[0] = 100.0
    r = s.copy()
    r[1] = 50.0
    _, new_state, info = clipped_merge(state, s, s, r)
    assert info.tau == pytest.approx(1.0)
    assert new_state.distances[-1] == pytest.approx(50.0)


def test_clipped_merge_rejects_bad_input() -> None:
    s = _vec(0)
    with pytest.raises(ValueError):
        clipped_merge(clip_init(), s, s, s[:10])
    with pytest.raises(ValueError):
        clipped_merge(clip_init(), s, s, s, 0.5, ClipConfig(multiplier=0.0))
    r = s.copy()
    r[3] = np.nan
    with pytest.raises(ValueError):
        clipped_merge(clip_init(), s, s, r)


# --- reputation ---------------------------------------------------------------------------


def test_reputation_clean_peer_never_banned() -> None:
    rep = reputation_init()
    for _ in range(100):
        rep = reputation_update(rep, "a", "clean")
    assert not recommend_ban(rep, "a")
    assert rep.peers["a"].score == pytest.approx(10.0, rel=1e-3)
    assert rep.peers["a"].clean == 100 and rep.peers["a"].events == 100


def test_reputation_hard_clips_alone_never_ban_but_rejections_do() -> None:
    rep = reputation_init()
    for _ in range(30):
        rep = reputation_update(rep, "a", "clean")
    for _ in range(200):
        rep = reputation_update(rep, "a", "clipped_hard")
        assert not recommend_ban(rep, "a")  # honest peers on skewed data get clipped hard
    assert rep.peers["a"].score < 0
    history = []
    for _ in range(3):
        rep = reputation_update(rep, "a", "rejected")
        history.append(recommend_ban(rep, "a"))
    assert history[-1]
    first = history.index(True)
    assert all(history[first:])


def test_reputation_mild_clips_are_neutral() -> None:
    rep = reputation_init()
    for i in range(200):
        rep = reputation_update(rep, "a", "clipped" if i % 2 else "clean")
    assert not recommend_ban(rep, "a")
    assert rep.peers["a"].clipped == 100


def test_reputation_rejections() -> None:
    rep = reputation_init()
    cfg = ReputationConfig(max_rejections=3)
    for _ in range(50):
        rep = reputation_update(rep, "a", "clean", cfg)
    for _ in range(2):
        rep = reputation_update(rep, "a", "rejected", cfg)
    assert not recommend_ban(rep, "a", cfg)
    rep = reputation_update(rep, "a", "rejected", cfg)
    assert recommend_ban(rep, "a", cfg)
    # A fresh peer that only sends garbage is banned after min_events outcomes.
    for _ in range(2):
        rep = reputation_update(rep, "b", "rejected", cfg)
    assert rep.peers["b"].score <= cfg.ban_score and not recommend_ban(rep, "b", cfg)
    assert rep.peers["b"].as_dict()["rejected"] == 2


def test_reputation_is_pure_and_forgettable() -> None:
    rep0 = reputation_init()
    rep1 = reputation_update(rep0, "a", "clipped_hard")
    assert "a" not in rep0.peers and rep1.peers["a"] == PeerScore(
        score=-0.25, events=1, clipped_hard=1)
    assert not recommend_ban(rep1, "nobody")
    assert "a" not in reputation_forget(rep1, "a").peers
    with pytest.raises(ValueError):
        reputation_update(rep0, "a", "weird")  # type: ignore[arg-type]


def test_outcome_of() -> None:
    assert outcome_of(ClipInfo(distance=1.0, tau=2.0, scale=1.0, hard=False)) == "clean"
    assert outcome_of(ClipInfo(distance=3.0, tau=2.0, scale=2 / 3, hard=False)) == "clipped"
    assert outcome_of(ClipInfo(distance=9.0, tau=2.0, scale=2 / 9, hard=True)) == "clipped_hard"
