"""scripts/netns.py (namespaces on a private bridge, partitions that cut and heal, teardown from
the record) and scripts/testnet.py --netns with a partition fault."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"


def load(name: str) -> ModuleType:
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being created
    spec.loader.exec_module(module)
    return module


netns = load("netns")
WHY_NOT = netns.available()
needs_netns = pytest.mark.skipif(WHY_NOT is not None,
                                 reason=f"network namespaces unavailable here: {WHY_NOT}")


def ours(prefix: str) -> list[str]:
    return [n for n in netns.list_namespaces() if n.startswith(prefix)]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    e["MPLBACKEND"] = "Agg"
    return e


# -- no namespaces needed ------------------------------------------------------------------


def test_groups_and_partition_faults_parse() -> None:
    assert netns.parse_groups("0-3/4-7") == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert netns.parse_groups("0,2|1,3") == [[0, 2], [1, 3]]
    assert netns.format_groups([[0, 1, 2, 5], [3]]) == "0-2,5/3"
    for bad in ("0-3/2-4", "a/1", "0/", "3-1", ""):
        with pytest.raises(ValueError):
            netns.parse_groups(bad)
    with pytest.raises(ValueError, match="no node 4"):
        netns.parse_groups("0-1/2-4", 4)
    tn = load("testnet")
    f = tn.parse_fault("partition:0-3/4-7@60+300", 0)
    assert (f.action, f.groups, f.at, f.duration) == ("partition", [[0, 1, 2, 3], [4, 5, 6, 7]],
                                                      60.0, 300.0)
    assert f.describe() == "partition:0-3/4-7@60+300"
    assert tn.parse_fault("cut:0|1@5", 1).describe() == "partition:0/1@5"
    assert tn.parse_fault("heal@9", 2).action == "heal"
    for bad in ("partition:0-3/2-4@5", "partition:@5", "heal:3@5", "heal@5+3"):
        with pytest.raises(ValueError):
            tn.parse_fault(bad, 0)
    # partitions need namespaces; without --netns they are a usage error before anything runs
    r = subprocess.run([sys.executable, str(SCRIPTS / "testnet.py"), "run", "--nodes", "2",
                        "--out", "/nonexistent/o", "--fault", "partition:0/1@3"],
                       capture_output=True, text=True, env=env(), timeout=60)
    assert r.returncode == 2 and "need --netns" in r.stderr


# -- namespaces ----------------------------------------------------------------------------


@needs_netns
def test_cut_and_heal_between_two_namespaces(tmp_path: Path) -> None:
    state = tmp_path / "netns.json"
    with netns.up_network(2, state) as net:
        prefix = net.prefix
        assert sorted(ours(prefix)) == sorted([net.bridge_ns, net.ns(0), net.ns(1)])
        assert json.loads(state.read_text())["namespaces"] == [net.bridge_ns, net.ns(0),
                                                               net.ns(1)]
        assert net.reachable(0, 1) and net.reachable(1, 0)
        net.cut([[0], [1]])
        assert not net.reachable(0, 1, timeout=0.5) and not net.reachable(1, 0, timeout=0.5)
        net.heal()
        assert net.reachable(0, 1) and net.reachable(1, 0)
        net.cut([[1]])  # one group: node 1 alone, everyone else (node 0) with no group
        assert not net.reachable(0, 1, timeout=0.5)
    assert ours(prefix) == [] and not state.exists()


@needs_netns
def test_teardown_from_the_record_and_on_sigterm(tmp_path: Path) -> None:
    # built by one process, removed by another from the state file alone
    state = tmp_path / "a.json"
    cli = [sys.executable, str(SCRIPTS / "netns.py")]
    up = subprocess.run([*cli, "up", "--nodes", "2", "--state", str(state)],
                        capture_output=True, text=True, timeout=60)
    assert up.returncode == 0, up.stderr
    prefix = json.loads(state.read_text())["prefix"]
    try:
        assert len(ours(prefix)) == 3
        assert subprocess.run([*cli, "probe", "0", "1", "--state", str(state)],
                              timeout=60).returncode == 0
        down = subprocess.run([*cli, "down", "--state", str(state)], capture_output=True,
                              text=True, timeout=60)
        assert down.returncode == 0, down.stderr
        assert ours(prefix) == []
    finally:
        netns.down_prefix(prefix)
    # a process holding a network is SIGTERMed: the network goes with it
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); import netns\n"
            "with netns.up_network(3, __import__('pathlib').Path(sys.argv[2])) as net:\n"
            "    print(net.prefix, flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(SCRIPTS), str(tmp_path / "b.json")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        prefix = holder.stdout.readline().strip()
        assert prefix.startswith("gsd") and len(ours(prefix)) == 4
        holder.send_signal(signal.SIGTERM)
        assert holder.wait(timeout=60) == 128 + signal.SIGTERM
        assert ours(prefix) == [] and not (tmp_path / "b.json").exists()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if prefix.startswith("gsd"):
            netns.down_prefix(prefix)


@needs_netns
@pytest.mark.integration
def test_a_partitioned_testnet_splits_and_heals(tmp_path: Path) -> None:
    """4 nodes in namespaces, cut 2/2 at 5 s for 6 s: no exchange crosses the cut while it is in
    place (attempts fail), both halves keep averaging inside, and after the heal exchanges cross
    again. The testnet's pid bookkeeping holds for nodes started through `ip netns exec`: each
    node reported its own pid as the one the testnet started (the readiness check) and exited 0
    on SIGTERM."""
    out = tmp_path / "p"
    r = subprocess.run(
        [sys.executable, str(SCRIPTS / "testnet.py"), "run", "--nodes", "4", "--seconds", "25",
         "--netns", "--fault", "partition:0-1/2-3@5+6", "--set", "averaging.timeout_s=2",
         "--set", "network.dial_timeout_s=2", "--sample-every", "1", "--report-every", "5",
         "--ready-timeout", "300", "--out", str(out)],
        capture_output=True, text=True, env=env(), timeout=600)
    assert r.returncode == 0, f"rc {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and all(n["exit_code"] == 0 for n in summary["nodes"])
    assert summary["leftovers"]["netns_left"] == [] and ours(summary["netns"]["prefix"]) == []
    (part,) = summary["partitions"]
    assert part["groups"] == [[0, 1], [2, 3]] and part["healed_at_s"] is not None
    during, after = part["exchanges_during"], part["exchanges_after"]
    # (an exchange whose last bytes were on their way at the cut may still complete)
    assert during["cross_ok"] <= 1 and during["cross_failed"] > 0, part
    assert during["within_ok"] > 0, part
    assert after["cross_ok"] > 0, part
    applied = [f["fault"] for f in summary["faults"]]
    assert applied == ["partition:0-1/2-3@5+6", "heal@11"]
    series = json.loads((out / "timeseries.json").read_text())
    assert any(p["t"] >= part["healed_at_s"] for p in series["polls"])
