"""Tests for gossipd.mixing: the push-pull average and the consensus metric."""

from __future__ import annotations

import numpy as np
import pytest

from gossipd.mixing import (
    consensus_distance,
    mean_vector,
    merge,
    mix,
    push_pull_init,
    push_pull_update,
)


def test_mix_average() -> None:
    a = np.array([1.0, 2.0, -3.0], np.float32)
    b = np.array([3.0, 0.0, 1.0], np.float32)
    out = mix(a, b)
    assert out.dtype == np.float32 and out.shape == (3,)
    np.testing.assert_array_equal(out, [2.0, 1.0, -1.0])


def test_mix_weights() -> None:
    a = np.array([0.0, 4.0], np.float32)
    b = np.array([8.0, 0.0], np.float32)
    np.testing.assert_array_equal(mix(a, b, 0.0), a)
    np.testing.assert_array_equal(mix(a, b, 1.0), b)
    np.testing.assert_allclose(mix(a, b, 0.25), [2.0, 3.0])


def test_mix_symmetric_bit_exact_and_pure() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=1000).astype(np.float32)
    b = rng.normal(size=1000).astype(np.float32)
    a0, b0 = a.copy(), b.copy()
    # Both sides of an exchange must end with identical params.
    np.testing.assert_array_equal(mix(a, b), mix(b, a))
    np.testing.assert_array_equal(a, a0)  # inputs untouched
    np.testing.assert_array_equal(b, b0)
    assert mix(a, b) is not a


def test_mix_accepts_float64_returns_float32() -> None:
    out = mix(np.zeros(2), np.ones(2))
    assert out.dtype == np.float32


@pytest.mark.parametrize(
    ("local", "remote"),
    [
        (np.zeros(3, np.float32), np.zeros(4, np.float32)),
        (np.zeros((2, 2), np.float32), np.zeros((2, 2), np.float32)),
        (np.array([0.0, np.nan], np.float32), np.zeros(2, np.float32)),
        (np.zeros(2, np.float32), np.array([np.inf, 0.0], np.float32)),
        (np.zeros(2, np.int32), np.zeros(2, np.int32)),
    ],
)
def test_mix_rejects(local: np.ndarray, remote: np.ndarray) -> None:
    with pytest.raises(ValueError):
        mix(local, remote)


@pytest.mark.parametrize("weight", [-0.1, 1.5, float("nan")])
def test_mix_bad_weight(weight: float) -> None:
    with pytest.raises(ValueError, match="weight"):
        mix(np.zeros(2, np.float32), np.ones(2, np.float32), weight)


def test_consensus_distance_values() -> None:
    v = np.array([1.0, 2.0], np.float32)
    assert consensus_distance([v, v, v]) == 0.0
    assert consensus_distance([v]) == 0.0
    # mean (1, 0); each vector is at squared distance 1 from it.
    assert consensus_distance([np.array([0.0, 0.0]), np.array([2.0, 0.0])]) == pytest.approx(1.0)
    # three nodes: mean 0; squared distances 9, 0, 9 -> 6.
    vs = [np.array([-3.0]), np.array([0.0]), np.array([3.0])]
    assert consensus_distance(vs) == pytest.approx(6.0)
    np.testing.assert_allclose(mean_vector(vs), [0.0])


@pytest.mark.parametrize(
    "vectors",
    [[], [np.zeros(2), np.zeros(3)], [np.zeros(2), np.array([np.nan, 0.0])]],
)
def test_consensus_distance_rejects(vectors: list[np.ndarray]) -> None:
    with pytest.raises(ValueError):
        consensus_distance(vectors)


def test_gossip_preserves_mean_and_converges() -> None:
    rng = np.random.default_rng(1)
    nodes = [rng.normal(size=50).astype(np.float32) for _ in range(6)]
    mean0 = mean_vector(nodes)
    d0 = consensus_distance(nodes)
    for _ in range(200):
        i, j = rng.choice(len(nodes), size=2, replace=False)
        avg = mix(nodes[i], nodes[j])
        nodes[i], nodes[j] = avg, avg.copy()
        np.testing.assert_allclose(mean_vector(nodes), mean0, atol=1e-5)
    assert consensus_distance(nodes) < 1e-6 * d0


def test_push_pull_state() -> None:
    s = push_pull_init()
    assert s.rounds == 0
    a = np.array([0.0, 0.0], np.float32)
    b = np.array([3.0, 4.0], np.float32)
    out, s = push_pull_update(s, a, b)
    np.testing.assert_array_equal(out, [1.5, 2.0])
    assert s.rounds == 1 and s.last_gap == pytest.approx(25.0)


# --- merge: the rule for exchanges that overlapped training ---------------------------


def _vec(seed: int, n: int = 1000) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=n).astype(np.float32)


def test_merge_is_pairwise_mix_plus_local_progress() -> None:
    sent, remote = _vec(1), _vec(2)
    progress = _vec(3) * 0.01
    current = sent + progress
    out = merge(current, sent, remote, 0.5)
    expect = current.astype(np.float64) + 0.5 * (remote.astype(np.float64) - sent)
    np.testing.assert_allclose(out, expect, rtol=0, atol=1e-6)
    # What mixing the remote into the current vector would give instead: the progress made
    # during the exchange only half counted.
    np.testing.assert_allclose(out - mix(current, remote), 0.5 * progress, atol=1e-6)


def test_merge_without_progress_is_mix_bit_for_bit_and_symmetric() -> None:
    a, b = _vec(4, 300_001), _vec(5, 300_001)
    np.testing.assert_array_equal(merge(a, a, b), mix(a, b))
    np.testing.assert_array_equal(merge(a, a, b), merge(b, b, a))  # both nodes end identical
    np.testing.assert_array_equal(merge(a, a, b, 0.25), mix(a, b, 0.25))


def test_merge_weights() -> None:
    sent, remote, current = _vec(6), _vec(7), _vec(8)
    np.testing.assert_allclose(merge(current, sent, remote, 0.0), current, atol=1e-6)
    np.testing.assert_allclose(merge(current, sent, remote, 1.0),
                               current.astype(np.float64) + remote - sent, atol=1e-5)
    with pytest.raises(ValueError, match="weight"):
        merge(current, sent, remote, 1.5)


def test_merge_in_place_into_remote_and_pure_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gossipd.mixing.MERGE_BLOCK", 7)  # many blocks, a short last one
    sent, remote, current = _vec(9, 100), _vec(10, 100), _vec(11, 100)
    expect = merge(current, sent, remote.copy())
    copies = sent.copy(), current.copy()
    out = merge(current, sent, remote, out=remote)
    assert out is remote
    np.testing.assert_array_equal(out, expect)
    np.testing.assert_array_equal(sent, copies[0])
    np.testing.assert_array_equal(current, copies[1])


def test_merge_refuses_bad_inputs() -> None:
    a = _vec(12, 10)
    for bad in (np.nan, np.inf, -np.inf):
        for i in range(3):
            args = [a.copy(), a.copy(), a.copy()]
            args[i][3] = bad
            with pytest.raises(ValueError, match="not finite"):
                merge(*args)
    huge = np.full(4, 3e38, np.float32)
    with pytest.raises(ValueError, match="not finite"):  # overflows float32
        merge(huge, -huge, huge, 0.5)
    with pytest.raises(ValueError, match="shape"):
        merge(a, a[:5], a)
    with pytest.raises(ValueError, match="1-d"):
        merge(a.reshape(2, 5), a.reshape(2, 5), a.reshape(2, 5))
    with pytest.raises(ValueError, match="out"):
        merge(a, a, a, out=np.empty(10, np.float64))
    with pytest.raises(ValueError, match="overlaps"):
        big = np.zeros(11, np.float32)
        merge(big[:10], a, a, out=big[1:])


# --- staleness_weight ---------------------------------------------------------------

import itertools  # noqa: E402

from gossipd.mixing import staleness_weight  # noqa: E402


def test_staleness_weight_halves_per_halflife_of_lag() -> None:
    assert staleness_weight(0.5, 100, 100, 10) == 0.5
    assert staleness_weight(0.5, 110, 100, 10) == pytest.approx(0.25)
    assert staleness_weight(0.5, 120, 100, 10) == pytest.approx(0.125)
    assert staleness_weight(0.4, 105, 100, 10) == pytest.approx(0.4 / np.sqrt(2))


def test_staleness_weight_peer_ahead_counts_fully() -> None:
    assert staleness_weight(0.5, 100, 150, 10) == 0.5
    assert staleness_weight(0.5, 0, 10**9, 1) == 0.5


def test_staleness_weight_halflife_zero_disables() -> None:
    assert staleness_weight(0.5, 10**6, 0, 0) == 0.5
    assert staleness_weight(0.3, 0, 100, 0) == 0.3


def test_staleness_weight_monotone_and_in_range() -> None:
    ws = [staleness_weight(0.5, 100 + lag, 100, 7) for lag in range(0, 200, 5)]
    assert all(0.0 <= w <= 0.5 for w in ws)
    assert all(a > b for a, b in itertools.pairwise(ws))


@pytest.mark.parametrize(
    ("weight", "local", "remote", "halflife"),
    [(1.5, 1, 1, 1), (-0.1, 1, 1, 1), (0.5, 1, 1, -1), (0.5, -1, 0, 1), (0.5, 0, -1, 1)],
)
def test_staleness_weight_rejects(weight: float, local: int, remote: int, halflife: int) -> None:
    with pytest.raises(ValueError):
        staleness_weight(weight, local, remote, halflife)
