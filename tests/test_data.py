"""Tests for gossipd.data: the partition format and the deterministic shard split."""

from __future__ import annotations

import numpy as np
import pytest

from gossipd.data import (
    TASKS,
    Partition,
    load_shard,
    load_test_set,
    load_train_set,
    shard_indices,
)

TASK = "digits-mlp"
DIR01 = Partition("dirichlet", 0.1)


def test_tasks() -> None:
    assert TASK in TASKS


@pytest.mark.parametrize("text", ["iid", "dirichlet:0.1", "dirichlet:1.0", "dirichlet:0.05"])
def test_partition_round_trip(text: str) -> None:
    p = Partition.parse(text)
    assert str(p) == text
    assert Partition.parse(str(p)) == p


def test_partition_parse_values() -> None:
    assert Partition.parse("iid") == Partition("iid")
    assert Partition.parse(" Dirichlet:0.5 ") == Partition("dirichlet", 0.5)
    assert Partition.parse("dirichlet:1") == Partition("dirichlet", 1.0)


@pytest.mark.parametrize(
    "text",
    ["", "foo", "iid:3", "dirichlet", "dirichlet:", "dirichlet:abc", "dirichlet:0",
     "dirichlet:-1", "dirichlet:nan", "dirichlet:inf", "dirichlet0.1"],
)
def test_partition_parse_errors(text: str) -> None:
    with pytest.raises(ValueError, match=r"partition|alpha"):
        Partition.parse(text)


def test_partition_constructor_validates() -> None:
    with pytest.raises(ValueError):
        Partition("iid", 0.5)
    with pytest.raises(ValueError):
        Partition("dirichlet")


def test_fixed_split_sizes_and_dtypes() -> None:
    x_te, y_te = load_test_set(TASK)
    x_tr, y_tr = load_train_set(TASK)
    assert x_te.shape == (450, 64) and y_te.shape == (450,)
    assert x_tr.shape == (1347, 64) and y_tr.shape == (1347,)
    assert x_te.dtype == np.float32 and y_te.dtype == np.int32
    assert x_tr.min() >= 0.0 and x_tr.max() <= 1.0
    # Stratified: every class is in the test set in about its overall share.
    assert np.bincount(y_te, minlength=10).min() >= 40
    again_x, again_y = load_test_set(TASK)
    np.testing.assert_array_equal(again_x, x_te)
    np.testing.assert_array_equal(again_y, y_te)


def test_unknown_task() -> None:
    with pytest.raises(ValueError, match="unknown task"):
        load_test_set("cifar")
    with pytest.raises(ValueError, match="unknown task"):
        load_shard("cifar", num_shards=2, shard_index=0, partition=DIR01, seed=0)


@pytest.mark.parametrize("partition", [Partition("iid"), DIR01, Partition("dirichlet", 1.0)])
@pytest.mark.parametrize("num_shards", [1, 4, 7])
def test_shards_disjoint_and_covering(partition: Partition, num_shards: int) -> None:
    parts = shard_indices(TASK, num_shards=num_shards, partition=partition, seed=3)
    assert len(parts) == num_shards
    joined = np.concatenate(parts)
    assert len(joined) == 1347
    np.testing.assert_array_equal(np.sort(joined), np.arange(1347))  # disjoint + covering
    assert min(len(p) for p in parts) >= 10


@pytest.mark.parametrize("partition", [Partition("iid"), DIR01])
def test_shards_deterministic(partition: Partition) -> None:
    a = shard_indices(TASK, num_shards=4, partition=partition, seed=5)
    b = shard_indices(TASK, num_shards=4, partition=partition, seed=5)
    c = shard_indices(TASK, num_shards=4, partition=partition, seed=6)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(len(x) != len(z) or not np.array_equal(x, z) for x, z in zip(a, c, strict=True))


def _label_skew(partition: Partition, seed: int) -> float:
    """Mean total-variation distance of shard label distributions from the global one."""
    _, y = load_train_set(TASK)
    overall = np.bincount(y, minlength=10) / len(y)
    tvs = []
    for idx in shard_indices(TASK, num_shards=4, partition=partition, seed=seed):
        local = np.bincount(y[idx], minlength=10) / len(idx)
        tvs.append(0.5 * np.abs(local - overall).sum())
    return float(np.mean(tvs))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dirichlet_skew_present(seed: int) -> None:
    assert _label_skew(DIR01, seed) > 0.4
    assert _label_skew(Partition("iid"), seed) < 0.1


def test_dirichlet_many_shards_min_size() -> None:
    # Tiny alpha over many shards forces the top-up path; every shard stays usable.
    parts = shard_indices(TASK, num_shards=60, partition=Partition("dirichlet", 0.01), seed=0)
    assert min(len(p) for p in parts) >= 10
    assert len(np.unique(np.concatenate(parts))) == 1347


def test_load_shard_contents() -> None:
    x_tr, y_tr = load_train_set(TASK)
    idx = shard_indices(TASK, num_shards=4, partition=DIR01, seed=1)[2]
    s = load_shard(TASK, num_shards=4, shard_index=2, partition=DIR01, seed=1)
    assert s.x_train.dtype == np.float32 and s.y_train.dtype == np.int32
    assert s.x_train.shape == (len(idx), 64)
    np.testing.assert_array_equal(s.x_train, x_tr[idx])
    np.testing.assert_array_equal(s.y_train, y_tr[idx])
    x_te, y_te = load_test_set(TASK)
    np.testing.assert_array_equal(s.x_test, x_te)
    np.testing.assert_array_equal(s.y_test, y_te)


@pytest.mark.parametrize(("num_shards", "shard_index"), [(4, 4), (4, -1), (0, 0), (2000, 0)])
def test_load_shard_bad_index(num_shards: int, shard_index: int) -> None:
    with pytest.raises(ValueError):
        load_shard(TASK, num_shards=num_shards, shard_index=shard_index,
                   partition=Partition("iid"), seed=0)
