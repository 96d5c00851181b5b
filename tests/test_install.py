"""scripts/install.sh: a dry run changes nothing, a run into --root lays out a working install
(venv, units, drop-in, sysusers/tmpfiles, config and keys with their modes), a second run keeps
the user's files, and the installed gossipd starts with its key passed as a credential."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gossipd import config as config_mod

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "install.sh"
PREFIX = "/opt/gossipd"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="install.sh needs bash")


def clean_env() -> dict[str, str]:
    """No PYTHONPATH, notify socket or credentials of the test run leak into what is installed."""
    drop = ("PYTHONPATH", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
            "CREDENTIALS_DIRECTORY", "JOURNAL_STREAM", "VIRTUAL_ENV")
    e = {k: v for k, v in os.environ.items() if k not in drop}
    e.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    return e


def install(root: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), "--root", str(root), "--python", sys.executable, *args],
        capture_output=True, text=True, env=clean_env(), timeout=timeout, cwd=root.parent)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_dry_run_prints_every_action_and_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    run = install(root, "--dry-run", "--gpu", "--instance", "n1:4101", "--prefix", "/srv/gd")
    assert run.returncode == 0, run.stdout + run.stderr
    assert list(root.iterdir()) == []
    out = run.stdout
    assert f"-m venv {root}/srv/gd/venv" in out
    assert "-c " + str(ROOT / "constraints.txt") in out and "[cuda]" in out
    for dest in ("etc/systemd/system/gossipd.service", "etc/systemd/system/gossipd@.service",
                 "etc/systemd/system/gossipd.service.d/gpu.conf",
                 "etc/systemd/system/gossipd@.service.d/gpu.conf",
                 "usr/lib/sysusers.d/gossipd.conf", "usr/lib/tmpfiles.d/gossipd.conf",
                 "etc/gossipd/gossipd.toml", "etc/gossipd/identity.key",
                 "etc/gossipd/n1.toml", "etc/gossipd/n1.key"):
        assert f"{root}/{dest}" in out, dest
    assert "s|/opt/gossipd/venv/|/srv/gd/venv/|g" in out  # the units follow --prefix
    # with --root, system commands are printed for the target, never run here
    steps = out[out.index("next steps"):]
    for step in ("systemd-sysusers /usr/lib/sysusers.d/gossipd.conf",
                 "systemd-tmpfiles --create /usr/lib/tmpfiles.d/gossipd.conf",
                 "chgrp gossipd /etc/gossipd/gossipd.toml /etc/gossipd/n1.toml",
                 "systemctl daemon-reload", "systemctl enable --now gossipd\n",
                 "systemctl enable --now gossipd@n1"):
        assert step in steps, step
    assert not re.search(r"^\+ (systemctl|systemd-sysusers|systemd-tmpfiles|chgrp)", out, re.M)


@pytest.mark.parametrize(("args", "message"), [
    (["--instance", "bad/name:1"], "--instance wants NAME:PORT"),
    (["--instance", "n1"], "--instance wants NAME:PORT"),
    (["--instance", "gossipd:4001"], "single node"),
    (["--instance", "n1:70000"], "port must be 1-65535"),
    (["--prefix", "opt/gossipd"], "absolute path"),
    (["--frobnicate"], "unknown option"),
    (["--from", "/nonexistent"], "not a gossipd source tree"),
    (["--deps-from", "/nonexistent"], "not a directory"),
])
def test_bad_arguments_are_refused(tmp_path: Path, args: list[str], message: str) -> None:
    run = install(tmp_path, "--dry-run", *args)
    assert run.returncode == 2 and message in run.stderr, run.stderr


def wait_status(sock: Path, proc: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"installed gossipd exited with {proc.returncode}:\n"
                        f"{log.read_text()[-3000:]}")
        if sock.exists():
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
                    c.settimeout(5)
                    c.connect(str(sock))
                    c.sendall(b'{"cmd": "status"}\n')
                    data = b""
                    while not data.endswith(b"\n"):
                        chunk = c.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                reply: dict[str, Any] = json.loads(data)
                assert reply["ok"], reply
                result: dict[str, Any] = reply["result"]
                return result
            except (OSError, json.JSONDecodeError):
                pass
        time.sleep(0.2)
    pytest.fail("installed gossipd did not answer on its control socket in 90 s")


@pytest.mark.integration
def test_install_into_a_root_then_start_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    # --deps-from: reuse this venv's packages; only gossipd itself is built and installed
    run = install(root, "--deps-from", sys.prefix, "--gpu", "--instance", "n1:4101")
    if run.returncode != 0 and "hatchling" in run.stdout + run.stderr:
        pytest.skip("pip could not get the build backend (hatchling): no package index here")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    venv = root / PREFIX.lstrip("/") / "venv"
    etc = root / "etc" / "gossipd"
    units = root / "etc" / "systemd" / "system"
    binary = venv / "bin" / "gossipd"
    assert os.access(binary, os.X_OK) and os.access(venv / "bin" / "gossipctl", os.X_OK)
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import gossipd; print(gossipd.__file__)"],
                           capture_output=True, text=True, env=clean_env(), timeout=60,
                           cwd=tmp_path, check=True)
    assert Path(where.stdout.strip()).is_relative_to(venv)  # the installed copy, not the tree

    for unit in ("gossipd.service", "gossipd@.service"):
        assert (units / unit).read_text() == (ROOT / "systemd" / unit).read_text()
        assert (units / f"{unit}.d" / "gpu.conf").read_text() == (
            ROOT / "systemd" / "gossipd-gpu.conf").read_text()
    assert (root / "usr/lib/sysusers.d/gossipd.conf").is_file()
    assert (root / "usr/lib/tmpfiles.d/gossipd.conf").is_file()
    assert mode(etc) == 0o750
    assert mode(etc / "gossipd.toml") == 0o640 and mode(etc / "n1.toml") == 0o640
    assert mode(etc / "identity.key") == 0o600 and mode(etc / "n1.key") == 0o600
    peer_ids = re.findall(r"peer ID (12D3KooW\w+)", run.stdout)
    assert len(set(peer_ids)) == 2  # one key per node

    n1 = tomllib.loads((etc / "n1.toml").read_text())
    assert n1["node"]["state_dir"] == "/var/lib/gossipd/n1"  # StateDirectory=gossipd/%i
    assert n1["node"]["control_socket"] == "/run/gossipd/n1/control.sock"
    assert n1["network"]["listen"] == ["/ip4/0.0.0.0/tcp/4101"]
    n1["swarm"]["open"] = True
    config_mod.from_mapping(n1, Path("/etc/gossipd"))

    analyze = shutil.which("systemd-analyze")
    if analyze is not None:  # the installed units with their drop-ins, as systemd would load them
        for unit in ("gossipd.service", "gossipd@n1.service"):
            sec = subprocess.run([analyze, "security", "--offline=true", f"--root={root}", unit],
                                 capture_output=True, text=True, timeout=60)
            found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", sec.stdout)
            assert found and float(found.group(1)) <= 2.0, sec.stdout[-2000:] + sec.stderr

    # A second run keeps what the user owns.
    (etc / "gossipd.toml").write_text("# edited by the operator\n")
    keys = {p: p.read_bytes() for p in (etc / "identity.key", etc / "n1.key")}
    again = install(root, "--dry-run", "--deps-from", sys.prefix, "--instance", "n1:4101")
    assert again.returncode == 0, again.stderr
    for kept in ("gossipd.toml", "identity.key", "n1.toml", "n1.key"):
        assert f"keeping existing {etc / kept}" in again.stdout
    assert f"reusing the venv {venv}" in again.stdout
    assert (etc / "gossipd.toml").read_text() == "# edited by the operator\n"
    assert all(p.read_bytes() == b for p, b in keys.items())

    # Start the installed daemon the way the unit does: key from $CREDENTIALS_DIRECTORY.
    creds = tmp_path / "creds"
    creds.mkdir()
    shutil.copy(etc / "identity.key", creds / "identity.key")
    (creds / "identity.key").chmod(0o400)
    with tempfile.TemporaryDirectory(prefix="ins-") as short:
        sock = Path(short) / "c.sock"
        config = tmp_path / "node.toml"
        config.write_text(
            f'[swarm]\nopen = true\n[node]\nstate_dir = "{tmp_path / "state"}"\n'
            f'control_socket = "{sock}"\n[network]\nlisten = ["/ip4/127.0.0.1/tcp/0"]\n'
            '[train]\nsteps_per_second = 5\n')
        log = tmp_path / "gossipd.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([str(binary), "--config", str(config)], stdout=out,
                                    stderr=subprocess.STDOUT, cwd=tmp_path,
                                    env={**clean_env(), "CREDENTIALS_DIRECTORY": str(creds)})
        try:
            status = wait_status(sock, proc, log)
            assert status["peer_id"] == peer_ids[0]  # the key install.sh made
            assert not (tmp_path / "state" / "identity.key").exists()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert not sock.exists()
