"""Smoke test of scripts/bench_crypto.py on a tiny size: it runs and reports the ratio fields."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_crypto.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_crypto", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_crypto_json(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load()
    assert bench.main(["--sizes", "0.0625", "--repeat", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["round_trips_ok"] is True
    assert report["target_ratio"] == 0.5
    assert report["target_met"] is None  # 100 MiB was not measured
    (row,) = report["results"]
    assert row["size_mib"] == 0.0625
    assert row["bytes"] == 65536
    for field in ("gossipd_mb_s", "secretbox_mb_s", "ratio"):
        assert isinstance(row[field], float) and row[field] > 0
