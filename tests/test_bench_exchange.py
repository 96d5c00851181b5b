"""Smoke test of scripts/bench_exchange.py on a tiny size with a short training part: both
processes start, both paths exchange and verify the pair's mean, the report has its fields."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_exchange.py"


def test_bench_exchange_json() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--sizes", "0.5", "--repeat", "1", "--train-seconds",
         "0.3", "--train-sps", "200", "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["target_met"] is None  # 100 MiB was not measured
    (row,) = report["rows"]
    assert row["bytes_per_direction"] == (1 << 19) // 4 * 4
    for path in ("libp2p", "tcp"):
        assert row[f"{path}_ok"] is True and row[f"{path}_errors"] == []
        assert row[f"{path}_mb_s"] > 0 and row[f"{path}_cpu_s"] > 0
        assert 1.0 <= row[f"{path}_peak_x"] < 10
    assert row["ratio"] > 0
    train = report["train"]
    assert train["without"]["steps_per_s"] > 0
    for load in ("with", "with_bulk"):
        assert train[load]["exchanges"] > 0 and train[load]["exchanges_failed"] == 0
        assert train[load]["steps_per_s"] > 0
