"""systemd/: units that `systemd-analyze verify` accepts without a word, sandboxing that
`systemd-analyze security` rates at 2.0 or less (GPU drop-in included), sysusers/tmpfiles entries,
the example config, and the identity key arriving as a credential (LoadCredential=)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gossipd import config as config_mod
from gossipd import identity
from gossipd.main import main

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "systemd"
UNITS = ("gossipd.service", "gossipd@.service")
INSTALLED_BINARY = "/opt/gossipd/venv/bin/gossipd"
MAX_EXPOSURE = 2.0

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (Debian: apt-get install systemd)")


def gossipd_binary() -> str:
    """An existing gossipd executable: `verify` checks that ExecStart= can be run."""
    here = Path(sys.executable).parent / "gossipd"
    return str(here) if here.exists() else shutil.which("gossipd") or sys.executable


def unit_dir(tmp_path: Path, gpu: bool = False) -> Path:
    """The units as installed, ExecStart= pointed at a binary that exists on this machine."""
    out = tmp_path / "units"
    out.mkdir(parents=True, exist_ok=True)
    for name in UNITS:
        text = (SYSTEMD / name).read_text()
        assert INSTALLED_BINARY in text
        (out / name).write_text(text.replace(INSTALLED_BINARY, gossipd_binary()))
        if gpu:
            (out / f"{name}.d").mkdir(exist_ok=True)
            shutil.copy(SYSTEMD / "gossipd-gpu.conf", out / f"{name}.d" / "gpu.conf")
    return out


def analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"})


def exposure(unit: str, cwd: Path, *extra: str) -> float:
    run = analyze("security", "--offline=true", *extra, unit, cwd=cwd)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", run.stdout)
    assert found, run.stdout[-2000:] + run.stderr
    return float(found.group(1))


def service_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines()
            if line and not line.startswith("#")]


# -- verify: exit status 0 is not enough, typos only show on stderr ----------------------------

@needs_analyze
@pytest.mark.parametrize("gpu", [False, True], ids=["cpu", "gpu"])
@pytest.mark.parametrize("unit", ["gossipd.service", "gossipd@.service", "gossipd@node1.service"])
def test_verify_prints_nothing(tmp_path: Path, unit: str, gpu: bool) -> None:
    d = unit_dir(tmp_path, gpu)
    run = analyze("verify", f"./{unit}", cwd=d)
    assert run.returncode == 0 and run.stderr == "", run.stderr


@needs_analyze
def test_verify_check_sees_a_typo(tmp_path: Path) -> None:
    # The check above must be able to fail: verify exits 0 here and complains on stderr only.
    d = unit_dir(tmp_path, gpu=True)
    (d / "gossipd.service.d" / "gpu.conf").write_text("[Service]\nPrivateDevicez=no\n")
    run = analyze("verify", "./gossipd.service", cwd=d)
    assert "PrivateDevicez" in run.stderr


@needs_analyze
@pytest.mark.parametrize("gpu", [False, True], ids=["cpu", "gpu"])
@pytest.mark.parametrize("unit", ["gossipd.service", "gossipd@node1.service"])
def test_security_exposure_is_at_most_2(tmp_path: Path, unit: str, gpu: bool) -> None:
    score = exposure(f"./{unit}", unit_dir(tmp_path, gpu))
    assert score <= MAX_EXPOSURE


@needs_analyze
def test_the_gpu_drop_in_is_what_opens_devices(tmp_path: Path) -> None:
    cpu = exposure("./gossipd.service", unit_dir(tmp_path / "cpu"))
    gpu = exposure("./gossipd.service", unit_dir(tmp_path / "gpu", gpu=True))
    assert cpu < gpu <= MAX_EXPOSURE  # the drop-in was loaded and costs little


# -- what the units promise ---------------------------------------------------------------------

@pytest.mark.parametrize("unit", UNITS)
def test_unit_contract(unit: str) -> None:
    lines = service_lines(SYSTEMD / unit)
    conf = "%i.toml" if "@" in unit else "gossipd.toml"
    assert f"ExecStart={INSTALLED_BINARY} --config /etc/gossipd/{conf}" in lines
    for want in ("Type=notify", "NotifyAccess=main", "ExecReload=/bin/kill -HUP $MAINPID",
                 "User=gossipd", "Group=gossipd", "ConfigurationDirectory=gossipd",
                 "ProtectSystem=strict", "NoNewPrivileges=yes", "CapabilityBoundingSet=",
                 "MemoryDenyWriteExecute=no", "PrivateDevices=yes", "RestartPreventExitStatus=2"):
        assert want in lines, want
    watchdog = next(line for line in lines if line.startswith("WatchdogSec="))
    assert int(watchdog.removeprefix("WatchdogSec=").removesuffix("s")) >= 10
    key = "%i.key" if "@" in unit else "identity.key"
    assert f"LoadCredential={identity.CREDENTIAL_NAME}:/etc/gossipd/{key}" in lines
    suffix = "/%i" if "@" in unit else ""
    assert f"StateDirectory=gossipd{suffix}" in lines
    assert f"RuntimeDirectory=gossipd{suffix}" in lines


def test_template_differs_from_the_single_unit_only_where_instances_must() -> None:
    single = service_lines(SYSTEMD / "gossipd.service")
    template = service_lines(SYSTEMD / "gossipd@.service")
    per_instance = {line for line in template if "%i" in line}
    assert {line.replace("%i", "X") for line in per_instance} == {
        "Description=gossipd decentralized training node X",
        f"ExecStart={INSTALLED_BINARY} --config /etc/gossipd/X.toml",
        "StateDirectory=gossipd/X", "RuntimeDirectory=gossipd/X",
        "LoadCredential=identity.key:/etc/gossipd/X.key",
    }
    shared = [line for line in template if line not in per_instance]
    # the single unit keeps /run/gossipd when it stops: instances' sockets live below it
    assert shared == [line for line in single if "%i" not in line and line not in {
        "Description=gossipd decentralized training node",
        f"ExecStart={INSTALLED_BINARY} --config /etc/gossipd/gossipd.toml",
        "StateDirectory=gossipd", "RuntimeDirectory=gossipd",
        "LoadCredential=identity.key:/etc/gossipd/identity.key",
        "RuntimeDirectoryPreserve=yes",
    }]


def test_units_document_the_two_deliberate_openings() -> None:
    unit = (SYSTEMD / "gossipd.service").read_text()
    assert re.search(r"#.*XLA.*\n(#.*\n)*MemoryDenyWriteExecute=no", unit)
    assert re.search(r"#.*GPU.*\n(#.*\n)*PrivateDevices=yes", unit)
    drop_in = (SYSTEMD / "gossipd-gpu.conf").read_text()
    assert "PrivateDevices=no" in drop_in.splitlines()


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="no systemd-sysusers")
def test_sysusers_entry_creates_the_user_and_group(tmp_path: Path) -> None:
    # --root and --dry-run: reads and reports only, inside tmp_path
    run = subprocess.run(["systemd-sysusers", f"--root={tmp_path}", "--dry-run",
                          str(SYSTEMD / "sysusers.d" / "gossipd.conf")],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert "Creating group 'gossipd'" in run.stderr + run.stdout
    assert "Creating user 'gossipd'" in run.stderr + run.stdout
    assert list(tmp_path.iterdir()) == []


def test_tmpfiles_entry_keeps_etc_gossipd_from_others() -> None:
    entries = [line.split() for line in service_lines(SYSTEMD / "tmpfiles.d" / "gossipd.conf")]
    assert entries == [["d", "/etc/gossipd", "0750", "root", "gossipd", "-"]]


def test_example_config_uses_the_unit_directories(tmp_path: Path) -> None:
    data = tomllib.loads((SYSTEMD / "gossipd.toml").read_text())
    with pytest.raises(config_mod.ConfigError, match="closed by default"):
        config_mod.from_mapping(data, Path("/etc/gossipd"))  # members must be filled in first
    data["swarm"]["members"] = ["12D3KooWDidNFJPYNdBZZ8xymcjf4CADzKc7yLwvLvESeu3yc3yZ"]
    cfg = config_mod.from_mapping(data, Path("/etc/gossipd"))
    assert cfg.node.state_dir == Path("/var/lib/gossipd")  # StateDirectory=gossipd
    assert cfg.node.socket_path == Path("/run/gossipd/control.sock")  # RuntimeDirectory=gossipd


# -- the key as a credential ------------------------------------------------------------------

def write_key(path: Path, mode: int) -> bytes:
    seed = bytes(range(32))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(seed)
    path.chmod(mode)
    return seed


@pytest.mark.parametrize("mode", [0o400, 0o440])  # 0440: systemd's ACL mask shows as group bits
def test_credential_key_is_used_and_nothing_is_written(tmp_path: Path, mode: int) -> None:
    creds = tmp_path / "creds"
    seed = write_key(creds / "identity.key", mode)
    state = tmp_path / "state"
    got, path = identity.load_seed(state, {"CREDENTIALS_DIRECTORY": str(creds)})
    assert (got, path) == (seed, creds / "identity.key")
    assert state.is_dir() and not (state / identity.KEY_FILE_NAME).exists()


def test_a_world_readable_credential_is_refused(tmp_path: Path) -> None:
    write_key(tmp_path / "creds" / "identity.key", 0o444)
    with pytest.raises(identity.IdentityError, match="accessible by other users"):
        identity.load_seed(tmp_path / "state", {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")})


def test_without_the_credential_the_state_dir_key_is_used(tmp_path: Path) -> None:
    (tmp_path / "creds").mkdir()  # other credentials may be there, but no key
    state = tmp_path / "state"
    first, path = identity.load_seed(state, {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")})
    assert path == state / identity.KEY_FILE_NAME
    assert identity.load_seed(state, {}) == (first, path)


def test_new_key_creates_a_0600_key_and_never_replaces_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    key = tmp_path / "etc" / "identity.key"
    assert main(["--new-key", str(key)]) == 0
    peer_id = capsys.readouterr().out.strip()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert peer_id == identity.peer_id_for_seed(key.read_bytes())
    before = key.read_bytes()
    assert main(["--new-key", str(key)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert key.read_bytes() == before


def test_config_is_required_without_new_key(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2 and "--config is required" in capsys.readouterr().err
