"""Tests for gossipd.outer: the DiLoCo-style outer Nesterov step on flat vectors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from gossipd.outer import OuterState, outer_init, outer_update


def _vec(seed: int, n: int = 257) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=n).astype(np.float32)


def test_init_copies_and_zero_momentum() -> None:
    p = _vec(0)
    st = outer_init(p)
    assert st.anchor.dtype == np.float32 and st.momentum.dtype == np.float32
    np.testing.assert_array_equal(st.anchor, p)
    np.testing.assert_array_equal(st.momentum, np.zeros_like(p))
    p[0] += 1.0  # the caller's buffer changing must not move the anchor
    assert st.anchor[0] != p[0]


def test_init_accepts_float64_stores_float32() -> None:
    st = outer_init(np.arange(4, dtype=np.float64))
    assert st.anchor.dtype == np.float32


def test_lr1_mu0_is_plain_averaging_bit_for_bit() -> None:
    st = outer_init(_vec(1))
    for k in range(3):
        avg = _vec(10 + k)
        new, st = outer_update(st, avg, lr=1.0, momentum=0.0)
        np.testing.assert_array_equal(new, avg)
        np.testing.assert_array_equal(st.anchor, avg)


def test_nesterov_rule_values() -> None:
    anchor = np.array([1.0, 2.0], np.float32)
    st = OuterState(anchor=anchor, momentum=np.array([0.5, -1.0], np.float32))
    avg = np.array([0.0, 3.0], np.float32)
    new, st2 = outer_update(st, avg, lr=0.5, momentum=0.9)
    delta = anchor.astype(np.float64) - avg  # [1, -1]
    m = 0.9 * np.array([0.5, -1.0]) + delta  # [1.45, -1.9]
    np.testing.assert_allclose(st2.momentum, m, rtol=1e-6)
    np.testing.assert_allclose(new, anchor - 0.5 * (delta + 0.9 * m), rtol=1e-6)
    np.testing.assert_array_equal(new, st2.anchor)


def test_momentum_accumulates_along_a_constant_pseudo_gradient() -> None:
    # The averaged point always lies 0.1 below the anchor: a constant pseudo-gradient of 0.1.
    st = outer_init(np.zeros(3, np.float32))
    steps = []
    for _ in range(30):
        before = st.anchor.astype(np.float64)
        new, st = outer_update(st, (before - 0.1).astype(np.float32), lr=0.7, momentum=0.9)
        steps.append(float(before[0] - new[0]))
    assert all(b > a for a, b in itertools.pairwise(steps))  # accelerating
    # The momentum buffer tends to delta / (1 - mu) = 1.0, the step to lr*(1 + mu/(1-mu))*delta.
    np.testing.assert_allclose(st.momentum, 1.0, rtol=0.05)
    assert steps[-1] == pytest.approx(0.7 * 0.1 / (1 - 0.9), rel=0.05)
    assert steps[0] == pytest.approx(0.7 * (0.1 + 0.9 * 0.1), rel=1e-5)


def test_update_is_pure_and_returns_a_separate_copy() -> None:
    st = outer_init(_vec(2))
    anchor0, mom0 = st.anchor.copy(), st.momentum.copy()
    avg = _vec(3)
    avg0 = avg.copy()
    new, st2 = outer_update(st, avg, lr=0.7, momentum=0.9)
    np.testing.assert_array_equal(st.anchor, anchor0)
    np.testing.assert_array_equal(st.momentum, mom0)
    np.testing.assert_array_equal(avg, avg0)
    new[0] += 5.0
    assert st2.anchor[0] != new[0]
    assert new.dtype == np.float32 and new.shape == avg.shape


@pytest.mark.parametrize(
    "averaged",
    [
        np.zeros(4, np.float32),  # wrong length
        np.zeros((257, 1), np.float32),  # not 1-d
        np.zeros(257, np.int32),  # not float
        np.full(257, np.nan, np.float32),
        np.concatenate([np.zeros(256, np.float32), [np.inf]]).astype(np.float32),
    ],
)
def test_rejects_bad_averaged(averaged: np.ndarray) -> None:
    with pytest.raises(ValueError):
        outer_update(outer_init(_vec(4)), averaged, lr=0.7, momentum=0.9)


def test_rejects_bad_params_state_and_hyper() -> None:
    with pytest.raises(ValueError):
        outer_init(np.array([1.0, np.nan], np.float32))
    with pytest.raises(ValueError):
        outer_init(np.zeros((2, 2), np.float32))
    st = outer_init(_vec(5))
    bad = st._replace(momentum=np.zeros(3, np.float32))
    with pytest.raises(ValueError):
        outer_update(bad, _vec(6), lr=0.7, momentum=0.9)
    for lr, mu in [(0.0, 0.9), (-1.0, 0.0), (float("nan"), 0.0), (0.7, 1.0), (0.7, -0.1)]:
        with pytest.raises(ValueError):
            outer_update(st, _vec(6), lr=lr, momentum=mu)


def test_overflow_raises() -> None:
    st = outer_init(np.array([3e38], np.float32))
    with pytest.raises(ValueError):
        outer_update(st, np.array([-3e38], np.float32), lr=1.0, momentum=0.5)
