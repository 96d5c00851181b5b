"""scripts/testnet.py as an operator uses it: `up`, then status/pause/resume/kill/restart/down in
separate invocations against live nodes; and a short `run` with a fault that writes the report."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from gossipd import cli

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "testnet.py"


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    e["MPLBACKEND"] = "Agg"
    return e


def tn_cmd(*args: object, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, env=env(), timeout=timeout)


def ok(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert r.returncode == 0, f"rc {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def load_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("testnet_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being created
    spec.loader.exec_module(module)
    return module


def proc_letter(pid: int) -> str | None:
    """The /proc state letter of pid, None if there is no such process (or only a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    letter = raw[raw.rindex(")") + 2]
    return None if letter in "ZX" else letter


def listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def status(d: Path) -> dict[int, dict[str, Any]]:
    r = tn_cmd("status", "--dir", d, "--json", timeout=60)
    return {n["index"]: n for n in json.loads(r.stdout)["nodes"]}


# -- no processes --------------------------------------------------------------------------


def test_fault_schedule_parsing(tmp_path: Path) -> None:
    tn = load_module()
    f = tn.parse_fault("pause:1@20+15", 0)
    assert (f.action, f.node, f.at, f.duration) == ("pause", 1, 20.0, 15.0)
    assert tn.parse_fault("restart:3@50", 1).describe() == "restart:3@50"
    for bad in ("kill3@30", "explode:1@3", "kill:1@-2", "kill:1@5+3", "pause:x@1", "pause:1@4+0"):
        with pytest.raises(ValueError):
            tn.parse_fault(bad, 0)
    # a node that is not there is a usage error (exit 2) before anything starts
    r = tn_cmd("run", "--nodes", 2, "--out", tmp_path / "o", "--fault", "kill:5@3", timeout=60)
    assert r.returncode == 2 and "no node 5" in r.stderr and not (tmp_path / "o").exists()


def test_a_recycled_pid_is_never_signalled(tmp_path: Path) -> None:
    """A recorded pid that now belongs to another process (not that gossipd with that config,
    or started at another time) counts as gone and gets no signal."""
    tn = load_module()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ticks = tn.proc_start_ticks(other.pid)
        for spec in (
            tn.NodeSpec(0, str(tmp_path), str(tmp_path / "config.toml"), "s", 1, "p", "a",
                        pid=other.pid, start_ticks=ticks),  # right start time, not gossipd
            tn.NodeSpec(0, str(tmp_path), str(tmp_path / "config.toml"), "s", 1, "p", "a",
                        pid=other.pid, start_ticks=(ticks or 0) + 1),  # another start time
        ):
            assert tn.proc_state(spec) == "gone"
            assert tn.signal_node(spec, signal.SIGKILL) is False
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


# -- live nodes ----------------------------------------------------------------------------


@pytest.mark.integration
def test_up_status_pause_resume_kill_restart_down(tmp_path: Path) -> None:
    d = tmp_path / "tn"
    try:
        ok(tn_cmd("up", "--nodes", 3, "--dir", d, "--partition", "iid",
                   "--set", "train.steps_per_second=5"))
        state = json.loads((d / "testnet.json").read_text())
        nodes = state["nodes"]
        pids = [n["pid"] for n in nodes]
        ports = [n["port"] for n in nodes]
        sockets = [Path(n["socket"]) for n in nodes]
        assert all(proc_letter(p) not in (None, "T") for p in pids)
        assert all(s.exists() for s in sockets) and all(listening(p) for p in ports)
        assert len(str(sockets[0])) < 108 and Path(state["socket_dir"]).is_dir()
        # the up command has exited; the nodes outlive it and answer a separate invocation
        st = status(d)
        assert all(n["answering"] and n["process"] == "running" for n in st.values())
        assert [n["peer_id"] for n in st.values()] == [n["peer_id"] for n in nodes]

        ok(tn_cmd("pause", 1, "--dir", d))
        assert proc_letter(pids[1]) in ("T", "t")
        st = status(d)
        assert st[1]["process"] == "paused" and not st[1]["answering"]
        assert st[0]["answering"] and st[2]["answering"]
        ok(tn_cmd("resume", 1, "--dir", d))
        assert proc_letter(pids[1]) not in (None, "T", "t")
        until(lambda: status(d)[1]["answering"], 30, "node 1 to answer after resume")

        ok(tn_cmd("kill", 2, "--dir", d))
        until(lambda: proc_letter(pids[2]) is None, 10, "node 2 to die")
        # The leader thread shows as a zombie while the last worker thread still holds the
        # shared file table, so the listener can outlive the letter by a moment.
        until(lambda: not listening(ports[2]), 10, "node 2's port to close")
        st = status(d)
        assert st[2]["process"] == "gone" and st[2]["recorded"] == "killed"

        r = ok(tn_cmd("restart", 2, "--dir", d))
        assert "same key and state dir" in r.stdout
        new = json.loads((d / "testnet.json").read_text())["nodes"][2]
        assert new["pid"] != pids[2] and new["port"] == ports[2] and new["incarnations"] == 2
        back = cli.request(sockets[2], "status", timeout=10)
        assert back["peer_id"] == nodes[2]["peer_id"] and back["pid"] == new["pid"]
        assert any(a.startswith(f"/ip4/127.0.0.1/tcp/{ports[2]}/") for a in back["listen_addrs"])
        # the restarted node rejoins: it averages with the others again
        until(lambda: cli.request(sockets[2], "status", timeout=10)["exchanges_ok"] > 0
              or cli.request(sockets[2], "status", timeout=10)["exchanges_served_ok"] > 0,
              60, "the restarted node to exchange")

        # the testnet view over the recorded nodes
        dash = subprocess.Popen([sys.executable, str(SCRIPT), "dashboard", "--dir", str(d)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env())
        try:
            assert dash.stdout is not None
            url = dash.stdout.readline().decode().split()[2]

            def swarm_up() -> bool:
                with urllib.request.urlopen(url + "api/swarm", timeout=10) as r:
                    nodes_seen = json.load(r)["nodes"]
                return len(nodes_seen) == 3 and all(n["up"] for n in nodes_seen.values())

            until(swarm_up, 30, "the testnet dashboard to show 3 live nodes")
        finally:
            dash.terminate()
            dash.wait(timeout=15)

        ok(tn_cmd("down", "--dir", d))
        for pid in [*pids, new["pid"]]:
            assert proc_letter(pid) is None
        assert not any(listening(p) for p in ports)
        assert not Path(state["socket_dir"]).exists()
        final = json.loads((d / "testnet.json").read_text())
        assert final["down"] and all(n["state"] == "stopped" for n in final["nodes"])
        # every command on a testnet that is down is harmless
        assert tn_cmd("kill", 0, "--dir", d).returncode == 1
        assert tn_cmd("status", "--dir", d).returncode == 0
    finally:
        if (d / "testnet.json").exists() and not json.loads(
                (d / "testnet.json").read_text()).get("down"):
            tn_cmd("down", "--dir", d)


@pytest.mark.integration
def test_short_run_writes_plots_and_report(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    r = ok(tn_cmd("run", "--nodes", 2, "--seconds", 20, "--partition", "iid",
                   "--fault", "pause:1@6+4", "--report-every", 10, "--out", out, timeout=300))
    assert ("report: accuracy.png, consensus.png, bytes.png, latency.png, provenance.png, "
            "report.md") in r.stdout
    for name in ("accuracy.png", "consensus.png", "bytes.png", "latency.png", "provenance.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    report = (out / "report.md").read_text()
    assert "![accuracy](accuracy.png)" in report and "pause:1@6+4" in report
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and [f["action"] for f in summary["faults"]] == ["pause", "resume"]
    # provenance: both ledgers verify, the run's receipts are on both, identically signed
    prov = summary["provenance"]
    assert prov["ok"] and prov["ledgers"] == prov["verified"] == 2
    assert prov["receipts_matched"] > 5 and 300 < prov["bytes_per_receipt"] < 2000
    assert prov["merged"]["node0"]["node1"] > 5 and prov["merged"]["node1"]["node0"] > 5
    assert "ledgers verify" in r.stdout and "Provenance: 2 of 2 ledgers verify" in report
    series = json.loads((out / "timeseries.json").read_text())
    assert len(series["polls"]) >= 8
    # the paused node is missing from the polls while it is stopped, present before and after
    during = [p for p in series["polls"] if 7 <= p["t"] <= 9.5]
    assert during and all("1" not in p["node_accuracy"] for p in during)
    assert "1" in series["polls"][-1]["node_accuracy"]
    assert all(len(series["history"][str(i)]) >= 5 for i in range(2))
    assert series["polls"][-1]["avg_model_accuracy"] > 0.8


def test_the_ledger_check_excuses_only_what_a_kill_a_fault_or_the_stop_cut() -> None:
    """A receipt on one side only is a failure, unless a node in it was killed, or its
    exchange started inside a fault's window or the final stop's; copies that differ always
    fail; so does an unsealed tail of a node that was not killed."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import check_ledgers

    def result(*unmatched: tuple[list[str], bool, int]) -> dict[str, Any]:
        return {"nodes": {f"node{i}": {"ok": True, "error": None, "unsealed": 0}
                          for i in range(3)},
                "receipts_matched": 9,
                "receipts_unmatched": [{"exchange_id": "x", "found_on": on[:1],
                                        "expected_on": on, "identical": same, "time_ms": t}
                                       for on, same, t in unmatched]}

    pair = ["node0", "node1"]
    assert check_ledgers.judge(result(), set())
    assert not check_ledgers.judge(result((pair, True, 5_000)), set(), [(0, 4_999)])
    assert check_ledgers.judge(result((pair, True, 5_000)), set(), [(0, 5_000)])
    assert check_ledgers.judge(result((pair, True, 5_000)), {"node1"})
    assert not check_ledgers.judge(result((pair, False, 5_000)), set(), [(0, 9_000)])
    tail = result()
    tail["nodes"]["node2"]["unsealed"] = 3
    assert check_ledgers.judge(tail, {"node2"}) and not check_ledgers.judge(tail, set())
    assert "not killed" in tail["nodes"]["node2"]["error"]
    assert not check_ledgers.judge({"nodes": {}, "receipts_matched": 0,
                                    "receipts_unmatched": []}, set())


def _load_report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("report_script", ROOT / "scripts" / "report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_report_survives_a_killed_and_a_restarted_node(tmp_path: Path) -> None:
    """Synthetic series: node 2 is killed at 10 s (no polls, no history after), node 1 is
    restarted at 14 s (counters from 0 again); plots and report.md are still written."""
    pytest.importorskip("matplotlib")
    report = _load_report()
    history: dict[str, list[dict[str, Any]]] = {"0": [], "1": [], "2": []}
    polls = []
    for k in range(13):
        t = 2.0 * k
        for i in map(str, range(3)):
            if i == "2" and t > 10:
                continue
            inc, t0 = (2, 14.0) if i == "1" and t > 14 else (1, 0.0)
            n = int(4 * (t - t0))
            history[i].append({"t": t, "incarnation": inc, "accuracy": 0.5 + t / 60,
                               "bytes_sent": 40_000 * n, "bytes_received": 40_000 * n,
                               "exchanges_ok": n // 2, "exchanges_served_ok": n - n // 2,
                               "exchange_seconds_mean": 0.012 if n else None,
                               "consensus_estimate": 1e-4 / (1 + t)})
        accs = {i: 0.5 + t / 60 for i in ("0", "1", "2") if not (i == "2" and t > 10)}
        polls.append({"t": t, "steps": {}, "node_accuracy": accs,
                      "avg_model_accuracy": 0.55 + t / 60, "consensus_distance": 1 / (1 + t)})
    faults = [{"fault": "kill:2@10", "action": "kill", "node": 2, "at_s": 10.0},
              {"fault": "restart:1@14", "action": "restart", "node": 1, "at_s": 14.0}]
    series = {"nodes": 3, "seconds": 24, "num_params": 4810, "sample_every_s": 2.0,
              "local_only": False, "faults": faults, "polls": polls, "history": history}
    row = {"peer_id": "12D3KooWx", "accuracy": 0.9, "step": 100, "exchanges_ok": 10,
           "exchanges_failed": 0, "exchanges_served_ok": 10, "bytes_sent": 10**6,
           "bytes_received": 10**6, "exit_code": 0}
    summary = {"nodes": [{**row, "index": i, "killed": i == 2,
                          "accuracy": None if i == 2 else 0.9} for i in range(3)],
               "avg_model_accuracy": 0.95, "mean_node_accuracy": 0.9,
               "min_node_accuracy": 0.9, "consensus_distance": 0.01, "local_only": False,
               "partition": "iid", "task": "digits-mlp", "seed": 0, "seconds": 24,
               "leftovers": {}, "faults": faults, "ok": True}
    written = report.write_report(tmp_path, summary, series)
    assert [p.name for p in written] == ["accuracy.png", "consensus.png", "bytes.png",
                                         "latency.png", "report.md"]
    assert all(p.stat().st_size > 1000 for p in written)
    text = (tmp_path / "report.md").read_text()
    assert "| 2 (killed) | - |" in text and "kill:2@10" in text
    # the interval mean of a running mean: 12 ms whatever the counts
    _t, ms = report.window_latency(history["0"])
    assert ms and all(abs(m - 12.0) < 1e-6 for m in ms)
    xs, _ys = report.broken([(0.0, 1.0), (2.0, 1.0), (9.0, 1.0)], gap=5.0)
    assert xs[:2] == [0.0, 2.0] and xs[2] != xs[2] and xs[3] == 9.0  # NaN breaks the line


@pytest.mark.integration
def test_a_plugin_task_trains_across_a_testnet_by_config_alone(tmp_path: Path) -> None:
    """The example CSV plugin (examples/csv_task.py, not part of the package): named in the
    config, imported by every node from the directory the testnet started in."""
    data = tmp_path / "mine.csv"
    subprocess.run([sys.executable, str(ROOT / "examples" / "csv_task.py"), str(data)],
                   check=True, env=env(), timeout=60)
    out = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "run", "--nodes", "2", "--seconds", "15", "--partition",
         "iid", "--task", "csv_task:factory", "--set", f"train.data_path={json.dumps(str(data))}",
         "--set", "train.options={hidden = 16}", "--out", str(out)],
        capture_output=True, text=True, env=env(), timeout=300, cwd=ROOT / "examples")
    ok(r)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "csv_task:factory" and summary["metric"] == "accuracy"
    assert summary["ok"] and all(n["exchanges_ok"] + n["exchanges_served_ok"] > 0
                                 for n in summary["nodes"])
    assert summary["min_node_accuracy"] > 0.9
    config = (out / "node0" / "config.toml").read_text()
    assert "[train]" in config and '"hidden" = 16' in config
