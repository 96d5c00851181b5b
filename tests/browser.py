"""A headless Chromium driven over the DevTools protocol, for the dashboard tests.

No WebDriver: Chromium is started with a fresh profile and `--remote-debugging-port=0`, the port
is read from DevToolsActivePort, and one page target is driven over its websocket with
trio-websocket. Console errors and uncaught exceptions are collected while the page runs.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio
from trio_websocket import open_websocket_url

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
         "--window-size=1400,1000"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Page:
    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self.errors: list[str] = []

    async def _reader(self) -> None:
        while True:
            msg = json.loads(await self._ws.get_message())
            if "id" in msg and msg["id"] in self._pending:
                await self._pending.pop(msg["id"]).send(msg)
            elif msg.get("method") == "Runtime.exceptionThrown":
                detail = msg["params"]["exceptionDetails"]
                self.errors.append(detail.get("exception", {}).get("description", str(detail)))
            elif msg.get("method") == "Runtime.consoleAPICalled" and \
                    msg["params"]["type"] in ("error", "assert"):
                self.errors.append(json.dumps(msg["params"]["args"])[:500])
            elif msg.get("method") == "Log.entryAdded" and \
                    msg["params"]["entry"]["level"] == "error":
                self.errors.append(msg["params"]["entry"].get("text", "")[:500])

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        i = next(self._ids)
        send, recv = trio.open_memory_channel[dict[str, Any]](1)
        self._pending[i] = send
        await self._ws.send_message(json.dumps({"id": i, "method": method, "params": params}))
        with trio.fail_after(30):
            reply = await recv.receive()
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def evaluate(self, expression: str) -> Any:
        r = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def goto(self, url: str) -> None:
        await self.call("Page.navigate", url=url)
        with trio.fail_after(30):
            while await self.evaluate("document.readyState") != "complete":
                await trio.sleep(0.1)

    async def screenshot(self, path: Path) -> None:
        r = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(r["data"]))


def _devtools_port(profile: Path, proc: subprocess.Popen[bytes]) -> int:
    import time

    deadline = time.monotonic() + 30
    marker = profile / "DevToolsActivePort"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode}")
        if marker.exists() and marker.read_text().strip():
            return int(marker.read_text().split()[0])
        time.sleep(0.1)
    raise RuntimeError("chromium did not open its DevTools port in 30 s")


@contextlib.asynccontextmanager
async def open_page(chromium: str) -> AsyncIterator[Page]:
    profile = tempfile.mkdtemp(prefix="gdash-")
    # Its own process group: Chromium's helper processes are ours to end with it, together.
    proc = subprocess.Popen([chromium, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        port = await trio.to_thread.run_sync(_devtools_port, Path(profile), proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            targets = json.load(r)
        url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        async with open_websocket_url(url, max_message_size=64 * 1024 * 1024) as ws, \
                trio.open_nursery() as nursery:
            page = Page(ws)
            nursery.start_soon(page._reader)
            for domain in ("Runtime", "Log", "Page"):
                await page.call(f"{domain}.enable")
            yield page
            nursery.cancel_scope.cancel()
    finally:
        _end_group(proc)
        # A helper that was still writing the profile is gone now; retry the removal briefly.
        for _ in range(20):
            shutil.rmtree(profile, ignore_errors=True)
            if not os.path.exists(profile):
                break
            time.sleep(0.1)


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM Chromium's process group (the one started above), SIGKILL after 10 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with contextlib.suppress(ProcessLookupError):  # helpers that outlived the main process
        os.killpg(proc.pid, signal.SIGKILL)
