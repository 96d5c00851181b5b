"""Checkpoint files: round trip, newest-first listing, pruning, and refusal of what does not fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gossipd import checkpoint


def test_save_list_load_and_prune(tmp_path: Path) -> None:
    flat = np.arange(6, dtype=np.float32)
    for step in (10, 30, 20):
        checkpoint.save(tmp_path, flat * step, step, "spec/6", keep=2)
    infos = checkpoint.list_checkpoints(tmp_path)
    assert [c.step for c in infos] == [30, 20]  # newest first; step 10 pruned
    params, info = checkpoint.load(infos[0].path, "spec/6", 6)
    np.testing.assert_array_equal(params, flat * 30)
    assert info.spec == "spec/6" and info.size_bytes > 0
    assert not list(tmp_path.glob("*.tmp"))


def test_load_refuses_another_model_and_garbage(tmp_path: Path) -> None:
    info = checkpoint.save(tmp_path, np.ones(4, np.float32), 1, "a/4")
    with pytest.raises(checkpoint.CheckpointError, match="this node trains"):
        checkpoint.load(info.path, "b/4", 4)
    with pytest.raises(checkpoint.CheckpointError, match="this node trains"):
        checkpoint.load(info.path, "a/4", 5)
    bad = tmp_path / "step-000000000002.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(checkpoint.CheckpointError, match="unreadable"):
        checkpoint.load(bad, "a/4", 4)
    assert [c.step for c in checkpoint.list_checkpoints(tmp_path)] == [1]  # garbage skipped
    nan = checkpoint.save(tmp_path, np.full(4, np.nan, np.float32), 3, "a/4")
    with pytest.raises(checkpoint.CheckpointError, match="NaN"):
        checkpoint.load(nan.path, "a/4", 4)
