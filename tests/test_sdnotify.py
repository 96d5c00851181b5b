"""sd_notify: the client itself, the daemon's status/watchdog/reload tasks, and a real daemon that
reports READY=1, STATUS=, WATCHDOG=1, RELOADING=1 and STOPPING=1 to a fake NOTIFY_SOCKET."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from gossipd import config as config_mod
from gossipd import main as main_mod
from gossipd.membership import MembershipError
from gossipd.sdnotify import Notifier, watchdog_interval

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, str]]:
    with tempfile.TemporaryDirectory(prefix="sdn-") as short:  # AF_UNIX paths are short
        path = os.path.join(short, "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(2)
        try:
            yield sock, path
        finally:
            sock.close()


def fields(data: bytes) -> list[str]:
    return data.decode().split("\n")


# -- the client ---------------------------------------------------------------------------------

def test_without_notify_socket_everything_is_a_no_op() -> None:
    n = Notifier({})
    assert not n.enabled
    assert not n.ready("x") and not n.watchdog() and not n.stopping() and not n.reloading()
    assert n.failures == 0


def test_sends_fields_as_one_datagram(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("step 0, loss -")
    assert fields(sock.recv(4096)) == ["READY=1", "STATUS=step 0, loss -"]
    assert n.watchdog()
    assert fields(sock.recv(4096)) == ["WATCHDOG=1"]
    assert n.stopping()
    assert fields(sock.recv(4096)) == ["STOPPING=1", "STATUS=stopping"]
    n.close()
    assert not n.enabled and not n.watchdog()


def test_extend_timeout_asks_for_more_start_time(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    assert Notifier({"NOTIFY_SOCKET": path}).extend_timeout(60, "checking the ledger: 20000")
    assert fields(sock.recv(4096)) == ["EXTEND_TIMEOUT_USEC=60000000",
                                       "STATUS=checking the ledger: 20000"]


def test_a_newline_in_a_value_cannot_inject_a_field(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    Notifier({"NOTIFY_SOCKET": path}).status("bad\nREADY=1")
    assert fields(sock.recv(4096)) == ["STATUS=bad READY=1"]


def test_reloading_carries_monotonic_usec(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier({"NOTIFY_SOCKET": path}).reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    got = fields(sock.recv(4096))
    assert got[0] == "RELOADING=1"
    usec = int(got[1].removeprefix("MONOTONIC_USEC="))
    assert before <= usec <= after


def test_abstract_namespace_socket() -> None:
    name = f"gossipd-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_send_failures_never_raise_and_are_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    with caplog.at_level(logging.WARNING, logger="gossipd.sdnotify"):
        assert not n.ready("x")
        assert not n.watchdog()
        assert not n.status("y")
    assert n.failures == 3
    assert len([r for r in caplog.records if "sd_notify" in r.getMessage()]) == 1


def test_an_address_it_cannot_speak_disables_it(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gossipd.sdnotify"):
        n = Notifier({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not n.enabled and not n.watchdog()
    assert "not a Unix socket address" in caplog.text


@pytest.mark.parametrize(("env", "expected"), [
    ({}, None),
    ({"WATCHDOG_USEC": "2000000"}, 2.0),
    ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "4242"}, 2.0),
    ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "4243"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "x"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
])
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env, pid=4242) == expected


def test_watchdog_pid_defaults_to_this_process() -> None:
    env = {"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(env) == 0.5


# -- the daemon's tasks, with fakes -----------------------------------------------------------

class FakeNotifier(Notifier):
    def __init__(self) -> None:
        super().__init__({})
        self.sent: list[tuple[float, tuple[str, ...]]] = []

    def notify(self, *fields: str) -> bool:
        self.sent.append((trio.current_time() if _in_trio() else 0.0, fields))
        return True


def _in_trio() -> bool:
    try:
        trio.current_time()
    except RuntimeError:
        return False
    return True


class FakeNode:
    def __init__(self, reload_result: Any = None, reload_error: Exception | None = None) -> None:
        self.config_path = Path("/etc/gossipd/gossipd.toml")
        self.reload_result = reload_result
        self.reload_error = reload_error
        self.reloads = 0

    def status_line(self) -> str:
        return "step 7, loss 0.5"

    def reload_from_file(self) -> Any:
        self.reloads += 1
        if self.reload_error is not None:
            raise self.reload_error
        return self.reload_result


def test_report_pings_at_half_the_watchdog_and_refreshes_status() -> None:
    notifier = FakeNotifier()

    async def scenario() -> None:
        with trio.move_on_after(20.5):
            await main_mod._report(FakeNode(), notifier, 4.0)  # type: ignore[arg-type]

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
    pings = [t for t, f in notifier.sent if f == ("WATCHDOG=1",)]
    statuses = [t for t, f in notifier.sent if f == ("STATUS=step 7, loss 0.5",)]
    start = pings[0]
    assert [round(t - start, 6) for t in pings] == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    assert [round(t - start, 6) for t in statuses] == [5, 10, 15, 20]


def test_report_without_watchdog_only_refreshes_status() -> None:
    notifier = FakeNotifier()

    async def scenario() -> None:
        with trio.move_on_after(11):
            await main_mod._report(FakeNode(), notifier, None)  # type: ignore[arg-type]

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
    assert [f for _t, f in notifier.sent] == [("STATUS=step 7, loss 0.5",)] * 2


def _reload(node: FakeNode) -> list[tuple[str, ...]]:
    notifier = FakeNotifier()
    main_mod._reload(node, notifier)  # type: ignore[arg-type]
    return [f for _t, f in notifier.sent]


def test_reload_notifies_around_the_reload() -> None:
    # What was applied and what needs a restart is logged by Node.reload (tests/test_node.py).
    node = FakeNode({"applied": ["node.log_level"], "needs_restart": ["train.task"]})
    sent = _reload(node)
    assert sent[0][0] == "RELOADING=1" and sent[0][1].startswith("MONOTONIC_USEC=")
    assert sent[-1] == ("READY=1", "STATUS=step 7, loss 0.5")


def test_reload_with_nothing_changed(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="gossipd"):
        _reload(FakeNode({"applied": [], "needs_restart": []}))
    assert "nothing changed" in caplog.text


@pytest.mark.parametrize("error", [
    config_mod.ConfigError("config key 'averaging.interval_s': expected seconds, got -1"),
    MembershipError("swarm.members: not a peer ID: 'x'"),
    RuntimeError("a bug"),
])
def test_a_failed_reload_is_logged_and_the_node_goes_on(
    error: Exception, caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="gossipd"):
        sent = _reload(FakeNode(reload_error=error))
    assert sent[0][0] == "RELOADING=1"
    assert sent[-1][0] == "READY=1"  # back to running, with the old config
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and "keeping the running config" in errors[0].getMessage()


# -- a real daemon ------------------------------------------------------------------------------

def node_env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items()
         if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "CREDENTIALS_DIRECTORY",
                      "JOURNAL_STREAM")}
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    e.update(extra)
    return e


class Messages:
    """Datagrams from the daemon, read until a predicate holds."""

    def __init__(self, sock: socket.socket, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.sock, self.proc, self.log = sock, proc, log
        self.seen: list[list[str]] = []

    def until(self, what: str, done: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done(self.seen):
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} in {timeout:.0f} s; got {self.seen[-20:]}\n"
                            f"{self.log.read_text()[-3000:]}")
            if self.proc.poll() is not None and not self._recv(0.01):
                pytest.fail(f"gossipd exited with {self.proc.returncode} before {what}:\n"
                            f"{self.log.read_text()[-3000:]}")
            self._recv(0.5)

    def _recv(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)
        try:
            self.seen.append(fields(self.sock.recv(65536)))
        except TimeoutError:
            return False
        return True

    def index(self, field: str, start: int = 0) -> int:
        return next(i for i, m in enumerate(self.seen) if i >= start and field in m)


def _has(field: str, start: int = 0) -> Any:
    return lambda seen: any(field in m for m in seen[start:])


def _has_prefix(prefix: str, start: int = 0) -> Any:
    return lambda seen: any(f.startswith(prefix) for m in seen[start:] for f in m)


@pytest.mark.integration
def test_daemon_notifies_ready_status_watchdog_reload_and_stopping(
    tmp_path: Path, listener: tuple[socket.socket, str],
) -> None:
    sock, notify_path = listener
    with tempfile.TemporaryDirectory(prefix="sdn-") as short:
        control = Path(short) / "c.sock"
        config = tmp_path / "node.toml"
        text = (f'[swarm]\nopen = true\n[node]\nstate_dir = "state"\n'
                f'control_socket = "{control}"\nlog_level = "info"\n'
                '[network]\nlisten = ["/ip4/127.0.0.1/tcp/0"]\n[train]\nsteps_per_second = 5\n')
        config.write_text(text)
        log = tmp_path / "gossipd.log"
        with open(log, "wb") as out:
            # stderr is "the journal": every line must then carry a syslog priority prefix
            info = os.fstat(out.fileno())
            proc = subprocess.Popen(
                [sys.executable, "-m", "gossipd.main", "--config", str(config)],
                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
                env=node_env(NOTIFY_SOCKET=notify_path, WATCHDOG_USEC="2000000",
                             JOURNAL_STREAM=f"{info.st_dev}:{info.st_ino}"))
        try:
            msgs = Messages(sock, proc, log)
            msgs.until("READY=1", _has("READY=1"), 90)  # JAX import and compile first
            # READY=1 means the control socket answers and the host listens
            assert control.exists()
            ready = msgs.index("READY=1")
            assert any(f.startswith("STATUS=step ") for f in msgs.seen[ready])
            msgs.until("WATCHDOG=1", _has("WATCHDOG=1", ready), 5)
            msgs.until("two watchdog pings",
                       lambda seen: sum("WATCHDOG=1" in m for m in seen[ready:]) >= 2, 5)
            msgs.until("a STATUS= refresh", _has_prefix("STATUS=step ", ready + 1), 15)
            # a reloadable change: RELOADING=1, then READY=1 again, and the log says what applied
            config.write_text(text.replace('log_level = "info"', 'log_level = "debug"'))
            mark = len(msgs.seen)
            proc.send_signal(signal.SIGHUP)
            msgs.until("RELOADING=1", _has("RELOADING=1", mark), 10)
            msgs.until("READY=1 after the reload", _has("READY=1", msgs.index("RELOADING=1",
                                                                               mark)), 10)
            # a broken file: logged as an error, the node keeps running
            config.write_text(text + "[averaging]\ninterval_s = -1\n")
            mark = len(msgs.seen)
            proc.send_signal(signal.SIGHUP)
            msgs.until("RELOADING=1 (bad file)", _has("RELOADING=1", mark), 10)
            msgs.until("READY=1 (bad file)", _has("READY=1", msgs.index("RELOADING=1", mark)), 10)
            assert proc.poll() is None
            mark = len(msgs.seen)
            proc.send_signal(signal.SIGTERM)
            msgs.until("STOPPING=1", _has("STOPPING=1", mark), 10)
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        text_log = log.read_text()
        unprefixed = [line for line in text_log.splitlines() if not re.match(r"<[0-7]>", line)]
        assert unprefixed == []
        assert re.search(r"^<6>gossipd\.node: reloaded: node\.log_level", text_log, re.M)
        assert re.search(r"^<3>gossipd: reload: .*averaging\.interval_s", text_log, re.M)
        assert "averaging.interval_s" in text_log and "keeping the running config" in text_log
        assert not control.exists()
