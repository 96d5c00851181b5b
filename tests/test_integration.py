"""Real gossipd processes on loopback: one node's lifecycle, and a 3-node testnet with a crash."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from gossipd import cli

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    return e


def wait_status(sock: Path, proc: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"gossipd exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if sock.exists():
            try:
                result: dict[str, Any] = cli.request(sock, "status", timeout=5)
                return result
            except cli.ControlError:
                pass
        time.sleep(0.1)
    pytest.fail("gossipd did not become ready in 90 s")


def port_open(addr: str) -> bool:
    parts = addr.split("/")
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((parts[2], int(parts[4]))) == 0


def test_single_node_lifecycle(tmp_path: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="git-") as short:
        sock = Path(short) / "c.sock"
        config = tmp_path / "node.toml"
        config.write_text(
            f'[swarm]\nopen = true\n[node]\nstate_dir = "state"\ncontrol_socket = "{sock}"\n'
            '[network]\nlisten = ["/ip4/127.0.0.1/tcp/0"]\n'
            '[train]\nsteps_per_second = 10\n'
        )
        log = tmp_path / "gossipd.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "gossipd.main", "--config", str(config)],
                                    stdout=out, stderr=subprocess.STDOUT, env=env())
        try:
            status = wait_status(sock, proc, log)
            assert stat.S_IMODE(sock.stat().st_mode) == 0o660
            key = tmp_path / "state" / "identity.key"
            assert stat.S_IMODE(key.stat().st_mode) == 0o600
            assert status["peer_id"].startswith("12D3KooW")
            assert status["peer_id"] in log.read_text()  # logged at start
            addr = status["listen_addrs"][0]
            assert addr.endswith("/p2p/" + status["peer_id"]) and port_open(addr)
            ctl = subprocess.run(
                [sys.executable, "-m", "gossipd.cli", "--socket", str(sock), "status", "--json"],
                capture_output=True, env=env(), timeout=60, check=True)
            assert json.loads(ctl.stdout)["peer_id"] == status["peer_id"]
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
            assert time.monotonic() - t0 < 10
            assert not sock.exists()
            assert not port_open(addr)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_three_node_testnet_converges_and_survives_a_sigkill(tmp_path: Path) -> None:
    out = tmp_path / "tn"
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "testnet.py"), "run", "--nodes", "3",
         "--seconds", "45", "--partition", "iid", "--kill", "2@25", "--out", str(out),
         "--report-every", "15"],
        capture_output=True, text=True, env=env(), timeout=400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    nodes = {n["index"]: n for n in summary["nodes"]}
    survivors = [nodes[0], nodes[1]]
    assert nodes[2]["killed"]
    assert summary["avg_model_accuracy"] >= 0.9
    assert all(n["accuracy"] >= 0.85 for n in survivors)
    assert all(n["known_peers"] == 2 for n in survivors)
    # after the crash the survivors kept exchanging and training
    kill = summary["kill"]
    for n in survivors:
        assert n["exchanges_ok"] > kill["exchanges_ok_at_kill"][str(n["index"])] + 5
        assert n["step"] > kill["step_at_kill"][str(n["index"])] + 100
        assert n["exit_code"] == 0
    assert summary["leftovers"] == {"processes_alive": [], "sockets_left": [],
                                    "ports_listening": []}
    assert summary["consensus_distance"] < 1.0
    assert summary["provenance"]["ok"] and summary["provenance"]["verified"] == 3
    # provenance: every ledger verifies and every receipt is on both peers, identically signed
    check = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_ledgers.py"), str(out), "--killed",
         "node2", "--json"], capture_output=True, text=True, env=env(), timeout=120)
    ledgers = json.loads(check.stdout)
    assert check.returncode == 0, check.stdout[-3000:]
    assert all(n["ok"] and n["receipts"] > 5 for n in ledgers["nodes"].values())
    assert ledgers["receipts_matched"] > 10
    assert all("node2" in u["expected_on"] for u in ledgers["receipts_unmatched"])
