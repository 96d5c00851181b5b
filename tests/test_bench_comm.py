"""Smoke test of scripts/bench_comm.py: a tiny --quick run on digits, the JSON and table shape."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import bench_comm

CONFIGS = ["gossip-int8ef-k10", "diloco-H20-int8ef", "stale-hl100-fp32-k10-restart"]


def test_quick_run_json_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    # 4 nodes, 100 steps: a shape check, not a measurement (the restart lands at step 30).
    argv = ["--quick", "--nodes", "4", "--steps", "100", "--decay-steps", "100",
            "--eval-every", "20", "--target", "auto", "--configs", *CONFIGS, "--json"]
    assert bench_comm.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    (res,) = out["tasks"]
    assert res["task"] == "digits-mlp" and res["nodes"] == 4 and res["seeds"] == [0]
    rows = res["rows"]
    # The references run even though only the other rows were asked for.
    assert set(rows) == {bench_comm.REFERENCE, bench_comm.RESTART_REFERENCE, *CONFIGS}
    n = 4810  # digits-mlp params
    assert rows[bench_comm.REFERENCE]["payload_bytes"] == 4 * n
    assert rows["gossip-int8ef-k10"]["payload_bytes"] == n + 4 * -(-n // 256)
    # One payload sent per node per round: 10 rounds at k = 10, 5 rounds at H = 20.
    assert rows[bench_comm.REFERENCE]["total_bytes_per_node"] == 10 * 4 * n
    assert rows["diloco-H20-int8ef"]["total_bytes_per_node"] == 5 * (n + 4 * 19)
    for name, r in rows.items():
        assert 0.0 <= r["final_avg"] <= 1.0 and 0.0 <= r["final_worst"] <= r["final_avg"] + 1
        assert isinstance(r["meets_target"], bool)
        assert (r["bytes_to_target"] is None) != (r["bytes_to_target_lower_bound"] is None)
        assert r["reference"] in rows, name
        hist = res["runs"][name][0]["history"]
        assert [h["step"] for h in hist] == sorted(h["step"] for h in hist)
        assert {"step", "bytes_per_node", "avg", "worst", "mean"} <= set(hist[0])
    assert rows[bench_comm.REFERENCE]["ratio_vs_reference"] in (None, 1.0)
    assert rows["stale-hl100-fp32-k10-restart"]["reference"] == bench_comm.RESTART_REFERENCE

    bench_comm.print_table(res)
    table = capsys.readouterr().out
    assert "## digits-mlp (dirichlet:0.1), 4 nodes, 100 steps" in table
    for name in rows:
        assert name in table
    assert "x vs ref" in table and "lost worst" in table
