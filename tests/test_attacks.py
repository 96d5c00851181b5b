"""Tests for gossipd.attacks: every mode deterministic, of the intended shape, and pure."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gossipd.attacks import (
    ATTACK_MODES,
    HOSTILE_MODES,
    AttackConfig,
    alie_z,
    attack_apply,
    attack_init,
)

ANCHOR = np.linspace(-1.0, 1.0, 200).astype(np.float32)


def _honest(seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (ANCHOR + 0.3 * rng.normal(size=ANCHOR.size)).astype(np.float32)


def _received(k: int = 5) -> list[np.ndarray]:
    return [_honest(100 + i) for i in range(k)]


@pytest.mark.parametrize("mode", ATTACK_MODES)
def test_every_mode_is_deterministic(mode: str) -> None:
    outs = []
    for _ in range(2):
        st0 = attack_init(seed=42, anchor=ANCHOR)
        v1, st1 = attack_apply(st0, mode, _honest(1), _received())
        v2, st2 = attack_apply(st1, mode, _honest(2), _received())
        assert st2.calls == 2 and st0.calls == 0
        outs.append((v1, v2))
    for a, b in zip(outs[0], outs[1], strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == np.float32 and a.shape == ANCHOR.shape


@pytest.mark.parametrize("mode", ATTACK_MODES)
def test_apply_does_not_touch_its_inputs(mode: str) -> None:
    honest, received = _honest(), _received()
    keep = honest.copy(), [r.copy() for r in received]
    state = attack_init(seed=3, anchor=ANCHOR)
    out, _ = attack_apply(state, mode, honest, received)
    np.testing.assert_array_equal(honest, keep[0])
    for r, k in zip(received, keep[1], strict=True):
        np.testing.assert_array_equal(r, k)
    np.testing.assert_array_equal(state.anchor, ANCHOR)
    out[...] = 0.0  # the result is a fresh array
    np.testing.assert_array_equal(honest, keep[0])


def test_none_is_honest() -> None:
    out, _ = attack_apply(attack_init(0), "none", _honest())
    np.testing.assert_array_equal(out, _honest())


def test_signflip_points_away() -> None:
    h = _honest()
    out, _ = attack_apply(attack_init(0, ANCHOR), "signflip", h,
                          config=AttackConfig(signflip_k=2.0))
    progress, forged = h - ANCHOR, out - ANCHOR
    assert float(progress @ forged) < 0
    np.testing.assert_allclose(forged, -2.0 * progress, rtol=1e-5, atol=1e-6)


def test_scaled_points_along_and_far() -> None:
    h = _honest()
    out, _ = attack_apply(attack_init(0, ANCHOR), "scaled", h,
                          config=AttackConfig(scaled_lambda=10.0))
    np.testing.assert_allclose(out - ANCHOR, 10.0 * (h - ANCHOR), rtol=1e-5, atol=1e-5)


def test_noise_has_the_std() -> None:
    h = np.zeros(100_000, np.float32)
    out, state = attack_apply(attack_init(5), "noise", h, config=AttackConfig(noise_std=0.5))
    assert float(np.std(out - h)) == pytest.approx(0.5, rel=0.02)
    again, _ = attack_apply(state, "noise", h, config=AttackConfig(noise_std=0.5))
    assert not np.array_equal(out, again)  # fresh noise each call
    other, _ = attack_apply(attack_init(6), "noise", h, config=AttackConfig(noise_std=0.5))
    assert not np.array_equal(out, other)  # and per seed


def test_alie_is_mean_minus_z_std() -> None:
    rec = _received(6)
    stack = np.stack(rec).astype(np.float64)
    out, _ = attack_apply(attack_init(0), "alie", _honest(), rec,
                          config=AttackConfig(alie_z=1.5))
    np.testing.assert_allclose(out, stack.mean(0) - 1.5 * stack.std(0), rtol=1e-5, atol=1e-6)
    # Inside the honest spread: no farther from the mean than 1.5 std per element.
    assert np.all(np.abs(out - stack.mean(0)) <= 1.5 * stack.std(0) + 1e-5)


def test_alie_needs_a_population() -> None:
    h = _honest()
    for rec in ([], [_honest(9)]):
        out, _ = attack_apply(attack_init(0), "alie", h, rec)
        np.testing.assert_array_equal(out, h)
    # Vectors of the wrong shape or with NaNs are not part of the population.
    bad = [np.zeros(3, np.float32), np.full(ANCHOR.size, np.nan, np.float32), _honest(9)]
    out, _ = attack_apply(attack_init(0), "alie", h, bad)
    np.testing.assert_array_equal(out, h)


def test_alie_z_formula() -> None:
    assert alie_z(8, 1) == 0.0  # s = 4, (8 - 4) / 8 = 1/2: no attack at all
    assert alie_z(8, 2) == pytest.approx(0.3186, abs=1e-3)  # s = 3: Phi^-1(5/8)
    assert alie_z(50, 24) == pytest.approx(1.75, abs=0.01)  # s = 2: Phi^-1(0.96)
    assert alie_z(4, 3) == math.inf  # s = 0: every honest worker already outvoted
    with pytest.raises(ValueError):
        alie_z(4, 4)
    out, _ = attack_apply(attack_init(0), "alie", _honest(), _received(),
                          config=AttackConfig(alie_z=None, alie_n=8, alie_f=1))
    stack = np.stack(_received()).astype(np.float64)
    np.testing.assert_allclose(out, stack.mean(0), rtol=1e-5, atol=1e-6)


def test_nan_has_nans_elsewhere_honest() -> None:
    h = _honest()
    out, _ = attack_apply(attack_init(0), "nan", h, config=AttackConfig(nan_fraction=0.05))
    bad = np.isnan(out)
    assert bad.sum() == 10
    np.testing.assert_array_equal(out[~bad], h[~bad])
    tiny, _ = attack_apply(attack_init(0), "nan", h, config=AttackConfig(nan_fraction=0.0))
    assert np.isnan(tiny).sum() == 1  # always at least one


def test_stale_repeats_the_first_snapshot() -> None:
    state = attack_init(0)  # anchor taken from the first call
    first = _honest(1)
    outs = []
    for i in range(4):
        out, state = attack_apply(state, "stale", _honest(1 + i))
        outs.append(out)
    for out in outs:
        np.testing.assert_array_equal(out, first)
    assert state.anchor is not None and state.calls == 4


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown attack mode"):
        attack_apply(attack_init(0), "bogus", _honest())
    with pytest.raises(ValueError):
        attack_apply(attack_init(0), "signflip", np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError):
        attack_apply(attack_init(0, ANCHOR), "signflip", np.zeros(3, np.float32))
    assert "none" not in HOSTILE_MODES and set(HOSTILE_MODES) < set(ATTACK_MODES)


@settings(max_examples=40, deadline=None)
@given(
    honest=arrays(np.float32, 32, elements=st.floats(-100, 100, width=32)),
    mode=st.sampled_from(ATTACK_MODES),
    seed=st.integers(0, 2**40),
)
def test_any_vector_gives_a_vector_of_its_shape(honest: np.ndarray, mode: str,
                                                seed: int) -> None:
    state = attack_init(seed, ANCHOR[:32])
    out, new = attack_apply(state, mode, honest, [honest, honest * 0.5])
    again, _ = attack_apply(state, mode, honest, [honest, honest * 0.5])
    assert out.shape == honest.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out, again)
    assert new.calls == 1 and new.seed == seed
    assert np.isnan(out).any() == (mode == "nan")
