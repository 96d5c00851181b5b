"""Control socket over a real Unix socket, and gossipctl's client and rendering."""

from __future__ import annotations

import json
import socket
import stat
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from gossipd import cli
from gossipd.control import ControlSocketError, bind_control_socket, remove_socket, serve_control

STATUS: dict[str, Any] = {
    "peer_id": "12D3KooWtest", "listen_addrs": ["/ip4/127.0.0.1/tcp/1/p2p/12D3KooWtest"],
    "pid": 1, "uptime_s": 3.0, "task": "digits-mlp", "spec": "s", "shard": "0/4",
    "partition": "iid", "averaging": True, "step": 10, "loss": 0.5, "accuracy": 0.9,
    "accuracy_step": 8, "mixes": 2, "known_peers": ["a", "b"], "live_peers": 2,
    "exchanges_ok": 3, "exchanges_failed": 1, "exchanges_served_ok": 2,
    "exchanges_served_failed": 0, "last_error": "b: TooSlowError", "bytes_sent": 2048,
    "bytes_received": 100,
}


@pytest.fixture
async def sock_path() -> AsyncIterator[Path]:
    # Unix socket paths are limited to 108 bytes: use a short temp dir, not pytest's tmp_path.
    with tempfile.TemporaryDirectory(prefix="gct-") as d:
        yield Path(d) / "c.sock"


def boom(_req: dict[str, Any]) -> Any:
    raise RuntimeError("handler bug")


async def test_requests_round_trip_and_errors_are_answered(sock_path: Path) -> None:
    listener = await bind_control_socket(sock_path)
    assert stat.S_IMODE(sock_path.stat().st_mode) == 0o660
    handlers = {"status": lambda _r: STATUS, "boom": boom}
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, listener, handlers)
        result = await trio.to_thread.run_sync(cli.request, sock_path, "status")
        assert result == STATUS
        with pytest.raises(cli.ControlError, match="unknown command 'nope'"):
            await trio.to_thread.run_sync(cli.request, sock_path, "nope")
        with pytest.raises(cli.ControlError, match="internal error"):
            await trio.to_thread.run_sync(cli.request, sock_path, "boom")

        def raw(line: bytes) -> dict[str, Any]:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(str(sock_path))
                s.sendall(line)
                answer: dict[str, Any] = json.loads(s.makefile().readline())
                return answer

        assert "not JSON" in (await trio.to_thread.run_sync(raw, b"{oops\n"))["error"]
        assert not (await trio.to_thread.run_sync(raw, b"[1]\n"))["ok"]
        # the server is still serving after bad clients
        assert await trio.to_thread.run_sync(cli.request, sock_path, "status") == STATUS
        nursery.cancel_scope.cancel()
    remove_socket(sock_path)
    assert not sock_path.exists()


async def test_stale_socket_is_replaced_but_live_one_is_refused(sock_path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock_path))
    stale.close()  # file left behind, nobody listening: like a crashed daemon
    listener = await bind_control_socket(sock_path)
    with pytest.raises(ControlSocketError, match="in use"):
        await bind_control_socket(sock_path)
    await listener.aclose()


def test_client_names_the_missing_socket(tmp_path: Path) -> None:
    with pytest.raises(cli.ControlError, match="is gossipd running") as info:
        cli.request(tmp_path / "none.sock", "status")
    assert info.value.exit_code == 3


def test_gossipctl_renders_and_prints_json(monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "request", lambda path, cmd, **_: STATUS)
    assert cli.main(["--socket", "/x", "status"]) == 0
    out = capsys.readouterr().out
    assert "12D3KooWtest" in out and "3 ok, 1 failed" in out and "2.0 KiB out" in out
    assert cli.main(["--socket", "/x", "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == STATUS


def test_gossipctl_unreachable_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--socket", str(tmp_path / "no.sock"), "status"]) == 3
    assert "no control socket" in capsys.readouterr().err


def test_gossipctl_export_copies_only_the_sealed_extent(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    """export copies the ledger up to the size the daemon sealed (records written after it are
    left out), verifies the copy, never overwrites, and names the fix for an unreadable or
    short ledger; FILE is required."""
    from gossipd.ledger import Ledger
    from tests.test_ledger import ID_A, SEED_A

    ledger = Ledger(tmp_path / "ledger.bin", SEED_A, ID_A)
    ledger.append("checkpoint", {"params_hash": bytes(32), "step": 1})
    extent = {"path": str(ledger.path), "seq": ledger.durable_head[0],
              "head": ledger.durable_head[1].hex(), "bytes": ledger.durable_size}
    ledger.append("checkpoint", {"params_hash": bytes(32), "step": 2}, fsync=False, sign=False)
    calls: list[str] = []

    def fake(path: Any, cmd: str, **_: Any) -> Any:
        calls.append(cmd)
        return extent

    monkeypatch.setattr(cli, "request", fake)
    out = tmp_path / "out.bin"
    assert cli.main(["--socket", "/x", "provenance", "export", str(out)]) == 0
    assert calls == ["provenance.seal"] and "verified" in capsys.readouterr().out
    assert out.stat().st_size == extent["bytes"] < ledger.path.stat().st_size
    assert cli.main(["--socket", "/x", "provenance", "export", str(out)]) == 1
    assert "never overwritten" in capsys.readouterr().err
    extent["bytes"] = ledger.path.stat().st_size + 10
    assert cli.main(["--socket", "/x", "provenance", "export", str(tmp_path / "o2")]) == 1
    assert "shorter" in capsys.readouterr().err
    extent["path"] = str(tmp_path / "gone.bin")
    assert cli.main(["--socket", "/x", "provenance", "export", str(tmp_path / "o3")]) == 1
    assert "run gossipctl as the daemon's user" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--socket", "/x", "provenance", "export"])
    ledger.close()
