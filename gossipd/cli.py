"""`gossipctl`: talk to a running gossipd over its control socket.

Exit status: 0 ok, 1 the daemon answered with an error, 3 the daemon cannot be reached (the
message says which socket was tried and how to pick another).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

DEFAULT_SOCKET = Path("/var/lib/gossipd/control.sock")
TIMEOUT_S = 10.0

EPILOG = """\
examples:
  gossipctl status                       human-readable node status
  gossipctl status --json                the same as JSON, for scripts
  gossipctl --socket ./n0/control.sock peers
  GOSSIPD_SOCKET=./n0/control.sock gossipctl status

socket: --socket, else $GOSSIPD_SOCKET, else the socket of --config,
        else /var/lib/gossipd/control.sock.
"""


class ControlError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def request(path: Path, cmd: str, timeout: float = TIMEOUT_S, **args: Any) -> Any:
    """Send one command; return its result or raise ControlError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except FileNotFoundError as exc:
            raise ControlError(
                f"no control socket at {path}: is gossipd running? "
                "(systemctl status gossipd; or pass --socket PATH)", 3) from exc
        except PermissionError as exc:
            raise ControlError(
                f"permission denied on {path}: run as root or add yourself to the gossipd group",
                3) from exc
        except OSError as exc:
            raise ControlError(f"cannot connect to {path}: {exc}", 3) from exc
        sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        buf = bytearray()
        while not buf.endswith(b"\n"):
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            buf += chunk
    except TimeoutError as exc:
        raise ControlError(f"gossipd at {path} did not answer within {timeout:g} s", 3) from exc
    finally:
        sock.close()
    try:
        response = json.loads(buf)
    except json.JSONDecodeError as exc:
        raise ControlError(f"gossipd at {path} sent an unreadable answer", 1) from exc
    if not response.get("ok"):
        raise ControlError(f"gossipd: {response.get('error', 'unknown error')}", 1)
    return response["result"]


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def render_status(s: dict[str, Any]) -> str:
    lines = [
        f"peer id      {s['peer_id']}",
        *[f"listening    {a}" for a in s["listen_addrs"]],
        f"task         {s['task']}  shard {s['shard']} ({s['partition']})  "
        f"averaging {'on' if s['averaging'] else 'off'}",
        f"step         {s['step']}   loss {_fmt(s['loss'])}   "
        f"test accuracy {_fmt(s['accuracy'])} (at step {_fmt(s['accuracy_step'])})",
        f"peers        {len(s['known_peers'])} known, {s['live_peers']} live",
        f"exchanges    {s['exchanges_ok']} ok, {s['exchanges_failed']} failed (started);  "
        f"{s['exchanges_served_ok']} ok, {s['exchanges_served_failed']} failed (served)",
        f"traffic      {_human_bytes(s['bytes_sent'])} out, "
        f"{_human_bytes(s['bytes_received'])} in",
        f"uptime       {s['uptime_s']:.0f} s   pid {s['pid']}",
    ]
    if s.get("last_error"):
        lines.append(f"last error   {s['last_error']}")
    return "\n".join(lines)


def render_peers(peers: list[dict[str, Any]]) -> str:
    if not peers:
        return "no peers known yet"
    rows = [f"{'peer id':<54} {'live':<5} {'ok':>6} {'failed':>7} {'strikes':>7}"]
    for p in peers:
        rows.append(
            f"{p['peer_id']:<54} {'yes' if p['live'] else 'no':<5} {p['exchanges_ok']:>6} "
            f"{p['exchanges_failed']:>7} {p['strikes']:>7}"
        )
    return "\n".join(rows)


def _socket_from(args: argparse.Namespace) -> Path:
    if args.socket is not None:
        return Path(args.socket)
    if os.environ.get("GOSSIPD_SOCKET"):
        return Path(os.environ["GOSSIPD_SOCKET"])
    if args.config is not None:
        from gossipd import config as config_mod

        try:
            return config_mod.load(Path(args.config)).node.socket_path
        except config_mod.ConfigError as exc:
            raise ControlError(f"gossipctl: {exc}", 2) from exc
    return DEFAULT_SOCKET


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gossipctl",
        description="Control and inspect a running gossipd node over its Unix control socket.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--socket", help="control socket path")
    parser.add_argument("--config", help="read the socket path from this gossipd config")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p_status = sub.add_parser("status", help="peer ID, addresses, training and exchange counters")
    p_status.add_argument("--json", action="store_true", help="print JSON")
    p_peers = sub.add_parser("peers", help="known peers with their exchange counters")
    p_peers.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    try:
        path = _socket_from(args)
        result = request(path, args.command)
    except ControlError as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    if args.json:
        print(json.dumps(result, indent=2))
    elif args.command == "status":
        print(render_status(result))
    else:
        print(render_peers(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
