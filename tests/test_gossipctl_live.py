"""Every gossipctl command against two live gossipd processes, with and without --json, and a
fuzz of malformed control requests that must leave the daemon serving."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gossipd import cli

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration


@dataclass
class LiveNode:
    proc: subprocess.Popen[bytes]
    sock: Path
    config: Path
    state: Path
    log: Path
    status: dict[str, Any]


def _env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    return e


def _config(sock: Path, state: Path, interval: float) -> str:
    return (f'[swarm]\nopen = true\n[node]\nstate_dir = "{state}"\ncontrol_socket = "{sock}"\n'
            '[network]\nlisten = ["/ip4/127.0.0.1/tcp/0"]\n'
            f'[averaging]\ninterval_s = {interval}\njoin = "mix"\n'  # train from the start
            '[train]\nsteps_per_second = 10\n')


def _start(base: Path, short: Path, name: str) -> LiveNode:
    sock, state, config = short / f"{name}.sock", base / name, base / f"{name}.toml"
    config.write_text(_config(sock, state, 30.0))  # averaging rare: commands drive it here
    log = base / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gossipd.main", "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, env=_env())
    return LiveNode(proc, sock, config, state, log, {})


def _wait(node: LiveNode) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if node.proc.poll() is not None:
            pytest.fail(f"gossipd exited {node.proc.returncode}: {node.log.read_text()[-2000:]}")
        if node.sock.exists():
            try:
                node.status = cli.request(node.sock, "status", timeout=5)
                return
            except cli.ControlError:
                pass
        time.sleep(0.1)
    pytest.fail("gossipd not ready in 120 s")


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveNode, LiveNode]]:
    base = tmp_path_factory.mktemp("ctl")
    with tempfile.TemporaryDirectory(prefix="gctl-") as short:
        a, b = _start(base, Path(short), "a"), _start(base, Path(short), "b")
        try:
            _wait(a)
            _wait(b)
            yield a, b
        finally:
            for n in (a, b):
                if n.proc.poll() is None:
                    n.proc.send_signal(signal.SIGTERM)
            for n in (a, b):
                try:
                    assert n.proc.wait(timeout=15) == 0
                except subprocess.TimeoutExpired:
                    n.proc.kill()
                    n.proc.wait()
                    raise


def ctl(node: LiveNode, *argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(["--socket", str(node.sock), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def ctl_json(node: LiveNode, *argv: str, capsys: pytest.CaptureFixture[str]) -> Any:
    code, out, err = ctl(node, *argv, "--json", capsys=capsys)
    assert code == 0, err
    return json.loads(out)


def test_status_text_and_json(nodes: tuple[LiveNode, LiveNode],
                              capsys: pytest.CaptureFixture[str]) -> None:
    a, _ = nodes
    code, out, _ = ctl(a, "status", capsys=capsys)
    assert code == 0 and a.status["peer_id"] in out and "training running" in out
    assert ctl_json(a, "status", capsys=capsys)["peer_id"] == a.status["peer_id"]
    # --json before the command works too
    code, out, _ = ctl(a, "--json", "status", capsys=capsys)
    assert code == 0 and json.loads(out)["peer_id"] == a.status["peer_id"]


def test_peers_add_ban_unban_remove(nodes: tuple[LiveNode, LiveNode],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    a, b = nodes
    b_id, b_addr = b.status["peer_id"], b.status["listen_addrs"][0]
    added = ctl_json(a, "peers", "add", b_addr, capsys=capsys)
    assert added["peer_id"] == b_id
    code, out, _ = ctl(a, "peers", capsys=capsys)
    assert code == 0 and b_id in out
    assert any(p["peer_id"] == b_id for p in ctl_json(a, "peers", "list", capsys=capsys))
    assert ctl(a, "peers", "ban", b_id, "--for", "600", capsys=capsys)[0] == 0
    entry = next(p for p in ctl_json(a, "peers", capsys=capsys) if p["peer_id"] == b_id)
    assert entry["banned"] and not entry["live"] and 0 < entry["banned_for_s"] <= 600
    code, out, _ = ctl(a, "average-now", b_id, capsys=capsys)
    assert code == 1 and "failed" in out  # b is banned: never dialled
    assert ctl(a, "peers", "unban", b_id, capsys=capsys)[0] == 0
    code, _, err = ctl(a, "peers", "unban", b_id, capsys=capsys)
    assert code == 1 and "not banned" in err
    assert ctl_json(a, "peers", "remove", b_id, capsys=capsys)["removed"] is True
    code, _, err = ctl(a, "peers", "remove", b_id, capsys=capsys)
    assert code == 1 and "unknown peer" in err
    code, _, err = ctl(a, "peers", "add", "/ip4/1.2.3.4/tcp/1", capsys=capsys)
    assert code == 1 and "/p2p/" in err
    with pytest.raises(SystemExit) as usage:
        cli.main(["--socket", str(a.sock), "peers", "ban"])
    assert usage.value.code == 2
    capsys.readouterr()


def test_average_now(nodes: tuple[LiveNode, LiveNode],
                     capsys: pytest.CaptureFixture[str]) -> None:
    a, b = nodes
    ctl_json(a, "peers", "add", b.status["listen_addrs"][0], capsys=capsys)
    code, out, _ = ctl(a, "average-now", b.status["peer_id"], capsys=capsys)
    assert code == 0 and f"averaged with {b.status['peer_id']}" in out
    result = ctl_json(a, "average-now", capsys=capsys)
    assert result["ok"] and result["peer_id"] == b.status["peer_id"]
    deadline = time.monotonic() + 10  # b counts its side once a's last chunk is in
    while ctl_json(b, "status", capsys=capsys)["exchanges_served_ok"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_train_pause_resume_stop_start(nodes: tuple[LiveNode, LiveNode],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    a, _ = nodes
    assert ctl_json(a, "train", "pause", capsys=capsys)["training"] == "paused"
    # The chunk running at the pause finishes (the very first one includes the JIT compile).
    deadline = time.monotonic() + 60
    step = -1
    while (now := ctl_json(a, "status", capsys=capsys)["step"]) != step:
        assert time.monotonic() < deadline, "training did not pause"
        step = now
        time.sleep(1.0)
    code, out, _ = ctl(a, "train", "resume", capsys=capsys)
    assert code == 0 and "training running" in out
    assert ctl_json(a, "train", "stop", capsys=capsys)["training"] == "stopped"
    assert ctl_json(a, "train", "start", capsys=capsys)["training"] == "running"
    deadline = time.monotonic() + 20
    while ctl_json(a, "status", capsys=capsys)["step"] == step:
        assert time.monotonic() < deadline, "training did not resume"
        time.sleep(0.2)


def test_checkpoint_save_and_list(nodes: tuple[LiveNode, LiveNode],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    a, _ = nodes
    saved = ctl_json(a, "checkpoint", "save", capsys=capsys)
    assert Path(saved["path"]).is_file() and saved["path"].startswith(str(a.state))
    code, out, _ = ctl(a, "checkpoint", "list", capsys=capsys)
    assert code == 0 and saved["path"] in out
    assert ctl_json(a, "checkpoint", "list", capsys=capsys)[0]["step"] == saved["step"]


def test_config_show_and_reload(nodes: tuple[LiveNode, LiveNode],
                                capsys: pytest.CaptureFixture[str]) -> None:
    a, _ = nodes
    shown = ctl_json(a, "config", "show", capsys=capsys)
    assert shown["averaging.interval_s"] == 30.0
    code, out, _ = ctl(a, "config", "show", capsys=capsys)
    assert code == 0 and "averaging.interval_s = 30.0" in out
    a.config.write_text(a.config.read_text().replace("interval_s = 30.0", "interval_s = 20.0")
                        .replace('"/ip4/127.0.0.1/tcp/0"', '"/ip4/127.0.0.1/tcp/1"'))
    code, out, _ = ctl(a, "config", "reload", capsys=capsys)
    assert code == 0 and "averaging.interval_s" in out and "network.listen" in out
    assert ctl_json(a, "config", "show", capsys=capsys)["averaging.interval_s"] == 20.0
    a.config.write_text(a.config.read_text().replace("interval_s = 20.0", "interval_s = -5"))
    code, _, err = ctl(a, "config", "reload", capsys=capsys)
    assert code == 1 and "averaging.interval_s" in err and "unchanged" in err
    assert ctl_json(a, "config", "show", capsys=capsys)["averaging.interval_s"] == 20.0


def test_metrics_and_log_level(nodes: tuple[LiveNode, LiveNode],
                               capsys: pytest.CaptureFixture[str]) -> None:
    a, _ = nodes
    code, out, _ = ctl(a, "metrics", capsys=capsys)
    assert code == 0 and "gossipd_training_step" in out
    assert "gossipd_training_step" in ctl_json(a, "metrics", capsys=capsys)["text"]
    code, out, _ = ctl(a, "log-level", "debug", capsys=capsys)
    assert code == 0 and "debug" in out
    assert ctl_json(a, "log-level", "info", capsys=capsys) == {"log_level": "info"}


def test_unreachable_socket_is_exit_3_and_names_the_fix(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["--socket", str(tmp_path / "nope.sock"), "status"])
    _, err = capsys.readouterr()
    assert code == 3 and "nope.sock" in err and "is gossipd running" in err


def _raw(sock: Path, payload: bytes, *, close_write: bool = True) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(15)
        s.connect(str(sock))
        try:
            s.sendall(payload)
            if close_write:
                s.shutdown(socket.SHUT_WR)
            return s.recv(1 << 16)
        except (BrokenPipeError, ConnectionResetError):
            return b""


def test_malformed_control_requests_leave_the_daemon_serving(
        nodes: tuple[LiveNode, LiveNode]) -> None:
    a, _ = nodes
    rng = random.Random(7)
    payloads = [
        b"\n", b"not json\n", b"[1, 2]\n", b'{"cmd": 5}\n', b'{"cmd": "nope"}\n',
        b'{"cmd": "peers.ban", "peer": 12}\n',
        b'{"cmd": "peers.ban", "peer": "x", "seconds": -1}\n',
        b'{"cmd": "train", "action": "explode"}\n', b'{"cmd": "log-level", "level": "loud"}\n',
        b'{"cmd": "average-now", "peer": "' + b"A" * 200 + b'"}\n', b"\xff\xfe\x00\n",
        b"{" * 100_000 + b"\n", b"[" * 60_000 + b"\n", b'{"cmd": "status"' + b" " * 70_000 + b"}\n",
    ] + [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300))) + b"\n"
         for _ in range(40)]
    for payload in payloads:
        answer = _raw(a.sock, payload)
        if answer:
            assert json.loads(answer)["ok"] is False
    # half-open clients that never finish a line, all at once
    held = []
    for _ in range(8):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(a.sock))
        s.sendall(b'{"cmd": "sta')
        held.append(s)
    try:
        assert cli.request(a.sock, "status", timeout=10)["peer_id"] == a.status["peer_id"]
    finally:
        for s in held:
            s.close()
    assert a.proc.poll() is None


def test_provenance_and_offline_verify(nodes: tuple[LiveNode, LiveNode],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    a, _ = nodes
    ctl_json(a, "checkpoint", "save", capsys=capsys)
    lineage = ctl_json(a, "provenance", capsys=capsys)
    assert lineage["records"] >= 3 and lineage["data"] and lineage["checkpoints"]
    code, out, _ = ctl(a, "provenance", capsys=capsys)
    assert code == 0 and "ledger" in out and "checkpoint" in out
    # The node keeps appending; export copies it up to a head it has just sealed.
    exported = a.state / "export.bin"
    code, out, err = ctl(a, "provenance", "export", str(exported), capsys=capsys)
    assert code == 0 and "verified" in out and str(exported) in out, err
    code, _, err = ctl(a, "provenance", "export", str(exported), capsys=capsys)
    assert code == 1 and "never overwritten" in err
    again = a.state / "export2.bin"
    code, out, _ = ctl(a, "provenance", "export", str(again), "--json", capsys=capsys)
    assert code == 0 and json.loads(out)["ok"] is True
    code, out, _ = ctl(a, "provenance", "verify", str(exported), capsys=capsys)
    assert code == 0 and "ledger verified" in out
    bad = a.state / "tampered.bin"
    blob = bytearray(exported.read_bytes())
    blob[20] ^= 1
    bad.write_bytes(bytes(blob))
    code, _, err = ctl(a, "provenance", "verify", str(bad), capsys=capsys)
    assert code == 1 and "does NOT verify" in err
    code, out, _ = ctl(a, "provenance", "verify", str(bad), "--json", capsys=capsys)
    assert code == 1 and json.loads(out)["ok"] is False
