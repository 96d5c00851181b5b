"""scripts/chaos.py without running a testnet: its plans, its metrics over canned summaries and
time series, the table; and testnet.py's parsing of a node's exchange histogram."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


chaos = load("chaos")


def node(i: int, acc: float, **kw: Any) -> dict[str, Any]:
    row = {"index": i, "accuracy": acc, "exit_code": 0, "killed": False, "incarnations": 1,
           "stop_s": 3.0, "early_exits": [], "polls_unanswered": 0,
           "exchange_deadline_s": 1.0, "exchange_max_gt_s": 0.5, "exchange_max_le_s": 1.0,
           "exchanges_timed_out": 0, "exchange_outcomes": {"ok": 10}}
    row.update(kw)
    return row


def summary(accs: list[float], avg: float, **kw: Any) -> dict[str, Any]:
    s = {"nodes": [node(i, a) for i, a in enumerate(accs)], "avg_model_accuracy": avg,
         "mean_node_accuracy": sum(accs) / len(accs), "min_node_accuracy": min(accs),
         "seconds": 120.0, "ok": True, "faults": []}
    s.update(kw)
    return s


def res(name: str, s: dict[str, Any], series: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "summary": s, "timeseries": series or {"polls": [], "history": {}}}


def test_plans_are_bounded_and_spare_the_bootstrap() -> None:
    faults = chaos.churn_faults(4, 120)
    assert faults == ["--fault", "kill:1@30", "--fault", "restart:1@35",
                      "--fault", "kill:2@30", "--fault", "restart:2@35",
                      "--fault", "kill:1@90", "--fault", "restart:1@95",
                      "--fault", "kill:3@90", "--fault", "restart:3@95"]
    soak = chaos.soak_faults(4, 300)
    assert "kill:2@60" in soak and "kill:3@120" in soak and not any(":0@" in f or ":1@" in f
                                                                     for f in soak)
    args = chaos.parse_args(["--quick", "--scenarios", "attacks,freeze", "--attacks",
                             "signflip"])
    names = [r.name for r in chaos.plan(args)]
    assert names == ["baseline", "freeze", "attack-signflip", "attack-control-scaled"]
    control = chaos.plan(args)[-1]
    assert 'averaging.robust="none"' in control.args
    assert '3:averaging.attack="scaled"' in control.args


def test_metrics_and_table_from_canned_runs() -> None:
    base = res("baseline", summary([0.97, 0.96, 0.97, 0.96], 0.970))
    churn = res("churn", summary([0.96, 0.96, 0.97, 0.96], 0.965, faults=[
        {"action": "kill", "node": 1, "at_s": 30}]))
    attack = res("attack-signflip", summary([0.95, 0.95, 0.96, 0.10], 0.9))
    control = res("attack-control-scaled", summary([0.10, 0.12, 0.11, 0.10], 0.1))
    polls = [{"t": float(t), "steps": {"0": t * 10, "1": t * 10, "2": 5}} for t in range(0, 60, 2)]
    freeze = res("freeze", summary([0.97, 0.97, 0.97], 0.97, faults=[
        {"action": "pause", "node": 2, "at_s": 10}, {"action": "resume", "node": 2,
                                                     "at_s": 30}]),
        {"polls": [*polls, {"t": 60.0, "steps": {"0": 600, "1": 600, "2": 50}}],
         "history": {}})
    hist = {str(i): [{"t": float(t), "incarnation": 1, "exchanges_ok": t, "exchanges_failed": 0}
                     for t in range(0, 121, 10)] for i in range(4)}
    flood = res("flood", summary([0.97] * 4, 0.97), {"started_wall": 1000.0, "history": hist})
    flood["flood"] = {"started_wall": 1005.0, "ended_wall": 1110.0, "opened": 500}
    soak = res("soak", summary([0.97] * 4, 0.97, seconds=1000.0))
    for i, r in enumerate(soak["summary"]["nodes"]):
        r.update(rss_first_mb=400.0, rss_last_mb=404.0 + 30 * (i == 3), growth_pct=1.0
                 + 7.5 * (i == 3), rss_warm_s=250.0, rss_since_s=0.0)
    rows = [chaos.evaluate(r, base) for r in (base, churn, freeze, attack, control, flood, soak)]
    by = {r.scenario: r for r in rows}
    assert by["churn"].result == "pass" and by["churn"].value == "96.5"
    assert by["freeze"].result == "FAIL"  # node 2's step stalls after its resume
    assert by["attack-signflip"].result == "pass"  # honest 0..2 against baseline's 0..2
    assert by["attack-control-scaled"].result == "expected-fail"
    assert by["flood"].result == "pass" and by["flood"].value == "100.0%"
    assert by["soak"].result == "pass" and by["soak"].value == "+8.5%"
    text = chaos.render_table(rows)
    assert text.splitlines()[0].split() == list(chaos.COLUMNS)
    assert "attack-control-scaled" in text and "expected-fail" in text
    md = chaos.render_table(rows, markdown=True)
    assert md.count("\n") == len(rows) + 2
    missing = chaos.evaluate({"name": "churn", "rc": 1}, base)
    assert missing.result == "error"


def test_reuse_tabulates_existing_runs_as_json(tmp_path: Path) -> None:
    out = tmp_path / "c"
    (out / "baseline").mkdir(parents=True)
    (out / "baseline" / "summary.json").write_text(json.dumps(summary([0.9, 0.9], 0.9)))
    (out / "baseline" / "timeseries.json").write_text(json.dumps({"polls": []}))
    (out / "churn").mkdir()
    (out / "churn" / "summary.json").write_text(json.dumps(summary([0.7, 0.7], 0.7)))
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "chaos.py"), "--nodes", "2",
                        "--scenarios", "churn", "--reuse", "--json", "--out", str(out)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr  # churn lost 20 points
    rep = json.loads(r.stdout)
    assert [x["scenario"] for x in rep["rows"]] == ["baseline", "churn"]
    assert rep["rows"][1]["result"] == "FAIL"
    assert (out / "chaos.md").exists()


def test_exchange_histogram_bounds() -> None:
    testnet = load("testnet")
    text = "\n".join([
        '# HELP x', 'gossipd_exchanges_total{role="initiated",outcome="ok"} 5.0',
        'gossipd_exchanges_total{role="served",outcome="timeout"} 2.0',
        'gossipd_exchange_duration_seconds_bucket{role="initiated",le="0.5"} 4.0',
        'gossipd_exchange_duration_seconds_bucket{role="initiated",le="1.0"} 5.0',
        'gossipd_exchange_duration_seconds_bucket{role="initiated",le="+Inf"} 5.0',
        'gossipd_exchange_duration_seconds_count{role="initiated"} 5.0',
        'gossipd_exchange_duration_seconds_bucket{role="served",le="2.5"} 0.0',
        'gossipd_exchange_duration_seconds_bucket{role="served",le="5.0"} 2.0',
        'gossipd_exchange_duration_seconds_bucket{role="served",le="+Inf"} 2.0',
        'gossipd_exchange_duration_seconds_count{role="served"} 2.0',
    ])
    m = testnet.parse_exchange_metrics(text)
    assert m == {"outcomes": {"ok": 5, "timeout": 2}, "max_gt_s": 2.5, "max_le_s": 5.0}


def test_a_control_that_crashed_is_judged_on_its_last_poll() -> None:
    base = res("baseline", summary([0.97, 0.96, 0.97, 0.96], 0.970))
    s = summary([0.5, 0.5, 0.5, 0.5], 0.5, ok=False)
    for r in s["nodes"]:
        r["accuracy"] = None
        r["exit_code"] = 1 if r["index"] < 3 else 0
    polls = [{"t": 2.0, "node_accuracy": {"0": 0.4, "1": 0.3, "2": 0.35, "3": 0.1},
              "consensus_distance": 1e30},
             {"t": 4.0, "node_accuracy": {"3": 0.1}, "consensus_distance": 0.0}]
    row = chaos.evaluate(res("attack-control-signflip", s, {"polls": polls}), base)
    assert row.result == "expected-fail" and row.value == "35.0,30.0"
    assert "exited with an error" in row.notes and "t=2.0 s" in row.notes
