"""The dashboard: its routes over a node on the in-memory transport, and both pages in a real
headless Chromium against live gossipd processes (no console errors, every node shown, charts
update; screenshots saved under test-artifacts/)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from gossipd import cli
from gossipd.dashboard import SwarmState, _finite, node_routes, poll_swarm
from tests.browser import find_chromium, open_page
from tests.fakes import MemoryNetwork
from tests.test_node import make_node, start

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("GOSSIPD_TEST_ARTIFACTS", ROOT / "test-artifacts"))


async def test_node_routes_serve_the_page_and_live_json() -> None:
    net = MemoryNetwork()
    a = make_node(net, "a", 0.0)
    routes = node_routes(a)
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        await start(nursery, a)
        await trio.sleep(1.2)
        ctype, body = routes["/"]("")
        assert ctype.startswith("text/html") and b"/*STYLE*/" not in body and b"svg" in body
        assert routes["/dashboard.js"]("")[1].startswith(b"// gossipd dashboard")
        status = json.loads(routes["/api/status"]("")[1])
        assert status["peer_id"] == a.transport.peer_id and status["device"]
        history = json.loads(routes["/api/history"]("since=-1")[1])
        assert history["samples"]
        with pytest.raises(ValueError):
            routes["/api/history"]("since=nan")
        nursery.cancel_scope.cancel()
    assert _finite({"a": [float("nan"), 1.0, float("inf")]}) == {"a": [None, 1.0, None]}


def test_swarm_poll_marks_a_dead_node_down(tmp_path: Path) -> None:
    def request(sock: Path, cmd: str, **_kw: Any) -> Any:
        raise cli.ControlError(f"no control socket at {sock}", 3)

    state = SwarmState()
    poll_swarm({"n0": tmp_path / "x.sock"}, request, state)
    assert state.nodes["n0"]["up"] is False and "no control socket" in state.nodes["n0"]["error"]
    assert state.series == []


# ------------------------------------------------------------------ in a real browser


def _env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    return e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium found: `apt-get install chromium` (.ci/run installs it)")
    base = tmp_path_factory.mktemp("dash")
    with tempfile.TemporaryDirectory(prefix="gdn-") as short:
        port0 = _free_port()
        procs: list[subprocess.Popen[bytes]] = []
        socks: dict[str, Path] = {}
        boot: list[str] = []
        try:
            for i in range(3):
                sock = Path(short) / f"n{i}.sock"
                listen = f"/ip4/127.0.0.1/tcp/{port0 if i == 0 else 0}"
                cfg = base / f"n{i}.toml"
                cfg.write_text(
                    f'[swarm]\nopen = true\n[node]\nstate_dir = "{base / f"s{i}"}"\n'
                    f'control_socket = "{sock}"\ndashboard_listen = "127.0.0.1:0"\n'
                    f'[network]\nlisten = ["{listen}"]\nbootstrap = {json.dumps(boot)}\n'
                    'discovery_interval_s = 1.0\n'
                    '[train]\nsteps_per_second = 10\neval_interval_s = 1.0\n'
                    'num_shards = 3\n' f'shard_index = {i}\n')
                log = open(base / f"n{i}.log", "wb")  # noqa: SIM115 - closed with the process
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "gossipd.main", "--config", str(cfg)],
                    stdout=log, stderr=subprocess.STDOUT, env=_env()))
                socks[f"n{i}"] = sock
                if i == 0:
                    deadline = time.monotonic() + 120
                    status = None
                    while status is None:
                        assert time.monotonic() < deadline and procs[0].poll() is None
                        try:
                            status = cli.request(sock, "status", timeout=5)
                        except cli.ControlError:
                            time.sleep(0.2)
                    boot = [status["listen_addrs"][0]]
            statuses = {}
            for name, sock in socks.items():
                deadline = time.monotonic() + 120
                while name not in statuses:
                    assert time.monotonic() < deadline
                    try:
                        statuses[name] = cli.request(sock, "status", timeout=5)
                    except cli.ControlError:
                        time.sleep(0.2)
            swarm = subprocess.Popen(
                [sys.executable, str(ROOT / "scripts" / "dashboard.py"),
                 *[f"--node={n}={s}" for n, s in socks.items()]],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env())
            procs.append(swarm)
            assert swarm.stdout is not None
            swarm_url = swarm.stdout.readline().decode().strip()
            assert swarm_url.startswith("http://127.0.0.1:"), swarm_url
            yield {"chromium": chromium, "node_url": statuses["n0"]["dashboard_url"],
                   "swarm_url": swarm_url, "socks": socks}
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


@pytest.mark.integration
def test_dashboard_cli_prints_the_url(live: dict[str, Any],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--socket", str(live["socks"]["n0"]), "dashboard"]) == 0
    assert capsys.readouterr().out.strip() == live["node_url"]
    with urllib.request.urlopen(live["node_url"] + "api/status", timeout=10) as r:
        assert json.load(r)["dashboard_url"] == live["node_url"]


async def _chart_points(page: Any, chart: str) -> int:
    value = await page.evaluate(f"document.getElementById('{chart}').dataset.points || '0'")
    return int(value)


@pytest.mark.integration
async def test_node_page_in_a_browser(live: dict[str, Any]) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with open_page(live["chromium"]) as page:
        await page.goto(live["node_url"])
        with trio.fail_after(60):
            while await _chart_points(page, "chart-accuracy") < 2:
                await trio.sleep(0.5)
        first = await _chart_points(page, "chart-accuracy")
        with trio.fail_after(30):  # the chart grows without a reload
            while await _chart_points(page, "chart-accuracy") <= first:
                await trio.sleep(0.5)
        text = await page.evaluate("document.body.innerText")
        assert "peer" in text and await page.evaluate(
            "document.getElementById('peer-id').textContent.startsWith('12D3KooW')")
        assert await page.evaluate("document.querySelectorAll('#peers-body tr').length") >= 1
        await page.screenshot(ARTIFACTS / "dashboard-node.png")
        assert page.errors == []


@pytest.mark.integration
async def test_swarm_page_in_a_browser(live: dict[str, Any]) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with open_page(live["chromium"]) as page:
        await page.goto(live["swarm_url"])
        with trio.fail_after(60):
            while await page.evaluate(
                    "document.querySelectorAll('#nodes-body tr.live').length") < 3:
                await trio.sleep(0.5)
        with trio.fail_after(60):  # exchanges draw edges; the averaged-model chart fills
            while (await page.evaluate("Number(document.getElementById('graph').dataset.edges)")
                   < 1 or await _chart_points(page, "chart-avg") < 2):
                await trio.sleep(0.5)
        first = await _chart_points(page, "chart-avg")
        with trio.fail_after(30):
            while await _chart_points(page, "chart-avg") <= first:
                await trio.sleep(0.5)
        await page.screenshot(ARTIFACTS / "dashboard-testnet.png")
        assert page.errors == []
