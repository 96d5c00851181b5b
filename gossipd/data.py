"""Data sets and the per-node data partition.

Every node of a swarm calls :func:`load_shard` with the same ``(task, num_shards,
partition, seed)`` and its own ``shard_index``.  The split is a pure function of
those arguments, so the nodes agree on who owns which sample without talking to
each other, and the shards are disjoint and together cover the whole train part.

The test part is never split: every node evaluates on the same fixed held-out set,
so accuracies reported by different nodes are comparable.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cache
from typing import Literal

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

# Tasks a node can train.  The daemon validates its config against this tuple.
TASKS: tuple[str, ...] = ("digits-mlp",)

# Fixed seed of the train/test split.  It is deliberately NOT the swarm seed: the
# held-out set must be identical for every swarm so accuracies stay comparable.
_SPLIT_SEED = 0
_TEST_FRACTION = 0.25

# A Dirichlet draw can leave a shard (almost) empty for small alpha.  We redraw a
# few times and then top such shards up from the largest one, so every node gets at
# least this many samples (fewer only when the data cannot give that many to all).
_MIN_SHARD_SIZE = 10
_DIRICHLET_REDRAWS = 50


@dataclass(frozen=True)
class Partition:
    """How the train part is split over nodes: ``iid`` or ``dirichlet:<alpha>``."""

    kind: Literal["iid", "dirichlet"]
    alpha: float | None = None

    def __post_init__(self) -> None:
        # Validate here so a Partition can never exist in an unusable state.
        if self.kind == "iid":
            if self.alpha is not None:
                raise ValueError("partition 'iid' takes no alpha")
        elif self.kind == "dirichlet":
            if self.alpha is None or not np.isfinite(self.alpha) or self.alpha <= 0:
                raise ValueError(f"dirichlet alpha must be a finite number > 0, got {self.alpha}")
        else:
            raise ValueError(f"unknown partition kind {self.kind!r}; expected 'iid' or 'dirichlet'")

    @classmethod
    def parse(cls, text: str) -> Partition:
        """Parse ``"iid"`` or ``"dirichlet:<alpha>"`` (e.g. ``"dirichlet:0.1"``)."""
        s = text.strip().lower()
        if s == "iid":
            return cls("iid")
        kind, sep, rest = s.partition(":")
        if kind == "dirichlet" and sep:
            try:
                alpha = float(rest)
            except ValueError:
                raise ValueError(
                    f"bad partition {text!r}: alpha {rest!r} is not a number "
                    "(expected e.g. 'dirichlet:0.1')"
                ) from None
            return cls("dirichlet", alpha)
        raise ValueError(f"bad partition {text!r}: expected 'iid' or 'dirichlet:<alpha>'")

    def __str__(self) -> str:
        # repr() of a float round-trips exactly, so parse(str(p)) == p.
        return "iid" if self.kind == "iid" else f"dirichlet:{self.alpha!r}"


@dataclass(frozen=True)
class Shard:
    """One node's private train data plus the shared test set (float32 x, int32 y)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")


@cache
def _split(task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed stratified train/test split (1347 / 450 samples for digits)."""
    _check_task(task)
    digits = load_digits()
    x = (np.asarray(digits.data, dtype=np.float64) / 16.0).astype(np.float32)
    y = np.asarray(digits.target, dtype=np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=_TEST_FRACTION, stratify=y, random_state=_SPLIT_SEED
    )
    arrays = tuple(np.ascontiguousarray(a) for a in (x_tr, y_tr, x_te, y_te))
    for a in arrays:
        a.setflags(write=False)  # cached and shared: nobody may mutate them
    return arrays[0], arrays[1], arrays[2], arrays[3]


def load_test_set(task: str) -> tuple[np.ndarray, np.ndarray]:
    """The fixed held-out set ``(x, y)``, identical on every node."""
    _, _, x_te, y_te = _split(task)
    return x_te, y_te


def load_train_set(task: str) -> tuple[np.ndarray, np.ndarray]:
    """The whole (unsplit) train part; used by tests and the simulator."""
    x_tr, y_tr, _, _ = _split(task)
    return x_tr, y_tr


def _rng(seed: int, num_shards: int, partition: Partition) -> np.random.Generator:
    # crc32 (not hash()) so the stream is stable across processes and runs.
    tag = zlib.crc32(str(partition).encode())
    return np.random.default_rng(np.random.SeedSequence([seed, num_shards, tag]))


def _dirichlet_assign(
    y: np.ndarray, num_shards: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Label skew: per class, shard proportions ~ Dir(alpha); returns index lists."""
    n = len(y)
    min_size = min(_MIN_SHARD_SIZE, n // num_shards)
    classes = np.unique(y)
    shards: list[list[int]] = []
    for _ in range(_DIRICHLET_REDRAWS):
        shards = [[] for _ in range(num_shards)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            props = rng.dirichlet(np.full(num_shards, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(np.int64)
            for k, part in enumerate(np.split(idx, cuts)):
                shards[k].extend(part.tolist())
        if min(len(s) for s in shards) >= min_size:
            break
    else:
        # Still a too-small shard after all redraws (many shards, tiny alpha): move
        # random samples from the currently largest shard.  This weakens the skew
        # only a little and guarantees every node can train at all.
        for k in range(num_shards):
            while len(shards[k]) < min_size:
                donor = max(range(num_shards), key=lambda j: len(shards[j]))
                take = int(rng.integers(len(shards[donor])))
                shards[k].append(shards[donor].pop(take))
    return [np.sort(np.asarray(s, dtype=np.int64)) for s in shards]


def shard_indices(
    task: str, *, num_shards: int, partition: Partition, seed: int
) -> list[np.ndarray]:
    """Indices into the train part for every shard (disjoint, covering, sorted)."""
    _check_task(task)
    _, y_tr = load_train_set(task)
    return split_labels(y_tr, num_shards=num_shards, partition=partition, seed=seed)


def load_shard(
    task: str, *, num_shards: int, shard_index: int, partition: Partition, seed: int
) -> Shard:
    """This node's shard of the train part plus the shared test set."""
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in 0..{num_shards - 1}, got {shard_index}")
    idx = shard_indices(task, num_shards=num_shards, partition=partition, seed=seed)[shard_index]
    x_tr, y_tr = load_train_set(task)
    x_te, y_te = load_test_set(task)
    return Shard(x_train=x_tr[idx], y_train=y_tr[idx], x_test=x_te, y_test=y_te)


def split_labels(
    y: np.ndarray, *, num_shards: int, partition: Partition, seed: int
) -> list[np.ndarray]:
    """Indices into any labelled train part ``y`` for every shard (disjoint, covering, sorted),
    by the same rules and random stream as :func:`shard_indices`; for tasks with their own data
    (e.g. gossipd.tasks_builtin.wine)."""
    y = np.asarray(y)
    if not 1 <= num_shards <= len(y):
        raise ValueError(f"num_shards must be in 1..{len(y)}, got {num_shards}")
    rng = _rng(seed, num_shards, partition)
    if partition.kind == "iid":
        perm = rng.permutation(len(y))
        return [np.sort(p) for p in np.array_split(perm, num_shards)]
    assert partition.alpha is not None  # guaranteed by Partition.__post_init__
    return _dirichlet_assign(y, num_shards, partition.alpha, rng)
