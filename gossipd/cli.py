"""`gossipctl`: talk to a running gossipd over its control socket.

Exit status: 0 ok, 1 the daemon answered with an error (or `average-now` failed), 2 a usage or
config error, 3 the daemon cannot be reached (the message says which socket was tried and how to
pick another).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from gossipd import ledger_files

# Under systemd the socket lives in RuntimeDirectory; a node run by hand uses its state_dir.
DEFAULT_SOCKETS = (Path("/run/gossipd/control.sock"), Path("/var/lib/gossipd/control.sock"))
TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 70.0  # the daemon gives a command 60 s

EPILOG = """\
examples:
  gossipctl status                       human-readable node status
  gossipctl status --json                the same as JSON, for scripts
  gossipctl peers                        peers: exchanges, strikes, reputation, bans
  gossipctl peers add /ip4/10.0.0.5/tcp/4001/p2p/12D3KooW...
  gossipctl peers ban 12D3KooW... --for 600
  gossipctl train pause                  stop local steps, keep averaging
  gossipctl average-now                  one exchange right away
  gossipctl checkpoint save
  gossipctl config reload                re-read the config file (same as SIGHUP)
  gossipctl metrics                      Prometheus text format
  gossipctl dashboard                    the web dashboard's URL (node.dashboard_listen)
  gossipctl provenance                   contributors to this node's model, from its ledger
  gossipctl provenance verify ledger.bin offline check of every link and signature
  gossipctl provenance verify a.bin b.bin ...  several nodes' ledgers against each other too
  gossipctl provenance export out.bin    a sealed copy of the running node's ledger, verified
  gossipctl --socket ./n0/control.sock status

socket: --socket, else $GOSSIPD_SOCKET, else the socket of --config, else
        /run/gossipd/control.sock (systemd) or /var/lib/gossipd/control.sock.
exit status: 0 ok, 1 the daemon reported an error, 2 usage, 3 daemon not reachable.
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
        f"averaging {'on' if s['averaging'] else 'off'}   training {s.get('training', '-')}",
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
    rows = [f"{'peer id':<54} {'live':<5} {'ok':>6} {'failed':>7} {'strikes':>7} "
            f"{'reputation':>10} {'clipped':>7}  banned"]
    for p in peers:
        banned = "-" if not p.get("banned") else (
            "yes" if p.get("banned_for_s") is None else f"{p['banned_for_s']:.0f} s")
        rep = p.get("reputation") or {}
        score = "-" if not rep else f"{rep['score']:.2f}"
        clipped = "-" if not rep else str(rep["clipped"] + rep["clipped_hard"])
        rows.append(
            f"{p['peer_id']:<54} {'yes' if p['live'] else 'no':<5} {p['exchanges_ok']:>6} "
            f"{p['exchanges_failed']:>7} {p['strikes']:>7} {score:>10} {clipped:>7}  {banned}"
        )
    return "\n".join(rows)


def render_checkpoints(items: list[dict[str, Any]]) -> str:
    if not items:
        return "no checkpoints yet (gossipctl checkpoint save)"
    rows = [f"{'step':>10}  {'saved (UTC)':<20} {'size':>10}  path"]
    for c in items:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(c["saved_at"]))
        rows.append(f"{c['step']:>10}  {when:<20} {_human_bytes(c['size_bytes']):>10}  {c['path']}")
    return "\n".join(rows)


def render_provenance(p: dict[str, Any]) -> str:
    lines = [f"ledger      {p['ledger']}  ({p['records']} records, {p['receipts']} receipts)",
             f"head        seq {p['head']['seq']}  {p['head']['hash']}"]
    for d in p["data"][-1:]:
        lines.append(f"data        {d['data']['dataset_hash'][:16]}  "
                     f"{d['data']['samples']} samples")
    if p["contributors"]:
        lines.append(f"{'contributor':<54} {'exchanges':>9} {'samples':>9}")
        lines += [f"{c['peer']:<54} {c['exchanges']:>9} {c['samples']:>9}"
                  for c in p["contributors"]]
    elif not p.get("not_merged"):
        lines.append("no exchanges recorded yet")
    for peer, n in sorted(p.get("not_merged", {}).items()):
        lines.append(f"not merged  {peer}: {n} exchange(s) whose parameters were refused")
    for c in p["checkpoints"][-3:]:
        lines.append(f"checkpoint  step {c['data']['step']}  {c['data']['params_hash'][:16]}")
    if p.get("since_ms"):
        merged = sum(c["exchanges"] for c in p["contributors"])
        lines.append(f"since       {_clock(p['since_ms'], True)} (ledger start): {merged} merged "
                     f"of {p['receipts']} exchanges with {len(p['contributors'])} peer(s)")
    if p["latest_exchanges"]:
        lines.append("latest exchanges (time, role, peer, my step / peer step):")
    for x in p["latest_exchanges"][-5:]:
        peer = x["peer"] if len(x["peer"]) <= 20 else "…" + x["peer"][-19:]
        lines.append(f"  {_clock(x['time_ms'])}  {x['role']:<9}  {peer:<20}  "
                     f"{x['my_step']} / {x['peer_step']}"
                     + ("" if x["merged"] else "  not merged"))
    return "\n".join(lines)


def _clock(ms: int, date: bool = False) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S", time.localtime(ms / 1000))


def render_result(command: str, result: Any) -> str:
    """Readable text for each command's result (the JSON form is `--json`)."""
    if command == "status":
        return render_status(result)
    if command == "provenance":
        return render_provenance(result)
    if command == "peers":
        return render_peers(result)
    if command == "checkpoint.list":
        return render_checkpoints(result)
    if command == "checkpoint.save":
        return f"saved step {result['step']} to {result['path']}"
    if command == "config.show":
        return "\n".join(f"{k} = {json.dumps(v)}" for k, v in result.items())
    if command == "config.reload":
        applied = ", ".join(result["applied"]) or "nothing changed"
        text = f"applied: {applied}"
        if result["needs_restart"]:
            text += f"\nneeds a restart (systemctl restart gossipd): " \
                    f"{', '.join(result['needs_restart'])}"
        return text
    if command == "metrics":
        return str(result["text"]).rstrip("\n")
    if command == "average-now":
        if result["ok"]:
            return f"averaged with {result['peer_id']}"
        return f"exchange with {result['peer_id'] or '-'} failed: {result['error']}"
    if command == "train":
        return f"training {result['training']}"
    if command == "log-level":
        return f"log level {result['log_level']}"
    if command.startswith("peers."):
        return " ".join(f"{k} {v}" for k, v in result.items())
    return json.dumps(result, indent=2)


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
    for path in DEFAULT_SOCKETS:
        if path.exists():
            return path
    return DEFAULT_SOCKETS[0]


def _request_of(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The control command and its arguments for the parsed command line."""
    cmd = args.command
    if cmd == "peers":
        action = args.action or "list"
        if action == "list":
            return "peers", {}
        if action == "add":
            return "peers.add", {"addr": args.target}
        extra = {"seconds": args.seconds} if action == "ban" and args.seconds else {}
        return f"peers.{action}", {"peer": args.target, **extra}
    if cmd == "train":
        return "train", {"action": args.action}
    if cmd == "average-now":
        return "average-now", {"peer": args.peer} if args.peer else {}
    if cmd in ("checkpoint", "config"):
        return f"{cmd}.{args.action}", {}
    if cmd == "log-level":
        return "log-level", {"level": args.level}
    if cmd == "dashboard":
        return "status", {}
    if cmd == "provenance" and args.action == "export":
        return "provenance.seal", {}
    return cmd, {}


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the daemon's answer as JSON (for scripts)")
    parser = argparse.ArgumentParser(
        prog="gossipctl",
        description="Control and inspect a running gossipd node over its Unix control socket.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--socket", help="control socket path")
    parser.add_argument("--config", help="read the socket path from this gossipd config")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("status", parents=[common],
                   help="peer ID, addresses, training and exchange counters")
    p = sub.add_parser("peers", parents=[common], help="list, add, remove, ban or unban peers",
                       description="Without an action: the peer table with exchange counters, "
                       "strikes and bans.")
    p.add_argument("action", nargs="?", choices=["list", "add", "remove", "ban", "unban"])
    p.add_argument("target", nargs="?", metavar="ADDR|PEER",
                   help="add: /ip4/HOST/tcp/PORT/p2p/PEER_ID; remove, ban, unban: a peer ID")
    p.add_argument("--for", dest="seconds", type=float, metavar="SECONDS",
                   help="ban: for this long (default: until unbanned)")
    p = sub.add_parser("train", parents=[common], help="start, pause, resume or stop training",
                       description="pause/resume: local training steps only (the node still "
                       "averages). stop: pause and leave averaging; start: both back on.")
    p.add_argument("action", choices=["start", "pause", "resume", "stop"])
    p = sub.add_parser("average-now", parents=[common],
                       help="one averaging exchange right away (random live peer or PEER)")
    p.add_argument("peer", nargs="?", help="peer ID (default: a random live peer)")
    p = sub.add_parser("checkpoint", parents=[common], help="save or list model checkpoints")
    p.add_argument("action", choices=["save", "list"])
    p = sub.add_parser("config", parents=[common],
                       help="show the running config, or reload the file (like SIGHUP)")
    p.add_argument("action", choices=["show", "reload"])
    sub.add_parser("metrics", parents=[common], help="Prometheus metrics (text format)")
    p = sub.add_parser("provenance", parents=[common],
                       help="who contributed to this node's model; `export`, `verify` a ledger",
                       description="Without arguments: the lineage of the node's model from its "
                       "ledger. `export OUT` has the node seal and fsync its ledger and copies it "
                       "up to that sealed head into OUT (never overwritten), then verifies the "
                       "copy. `verify FILE` checks an exported ledger offline (no daemon): every "
                       "link, every record signature and both signatures of every receipt; "
                       "`verify A B ...` (several nodes' exports) audits them together too and "
                       "prints each model's lineage, with the data sets that reached it. A "
                       "ledger copied by hand from a running node may end in records not sealed "
                       "yet (at most 0.25 s of them): `export` avoids that.")
    p.add_argument("action", nargs="?", choices=["verify", "export"])
    p.add_argument("file", nargs="*", help="verify: one or more ledger files (exports, or "
                   "state_dir/ledger.bin of a stopped node); several are also checked against "
                   "each other: receipts identical on both sides, every head a node showed in "
                   "an exchange still in its ledger (else its history was rewritten), and "
                   "which nodes reached each model. export: the file to write")
    sub.add_parser("dashboard", parents=[common], help="the URL of the node's web dashboard",
                   description="Prints the dashboard URL (set node.dashboard_listen, e.g. "
                   "\"127.0.0.1:8470\", to turn the dashboard on).")
    p = sub.add_parser("log-level", parents=[common], help="change the log level until restart")
    p.add_argument("level", choices=["debug", "info", "warning", "error"])
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "peers":
        needs_target = args.action in ("add", "remove", "ban", "unban")
        if needs_target != (args.target is not None):
            parser.error("peers add needs ADDR; remove, ban and unban need PEER; list takes none")
    if args.command == "provenance" and args.action is not None and not args.file:
        parser.error(f"provenance {args.action} needs FILE")
    if args.command == "provenance" and args.action == "export" and len(args.file) > 1:
        parser.error("provenance export takes one FILE")
    if args.command == "provenance" and args.action is None and args.file:
        parser.error("provenance takes FILE only after `verify` or `export`")
    if args.command == "provenance" and args.action == "verify":
        if len(args.file) == 1:
            return ledger_files.verify_ledger(args.file[0], getattr(args, "json", False))
        return ledger_files.audit_ledgers(args.file, getattr(args, "json", False))
    cmd, cmd_args = _request_of(args)
    timeout = COMMAND_TIMEOUT_S if cmd == "average-now" else TIMEOUT_S
    try:
        path = _socket_from(args)
        result = request(path, cmd, timeout=timeout, **cmd_args)
    except ControlError as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    if args.command == "dashboard":
        url = result.get("dashboard_url")
        if getattr(args, "json", False):
            print(json.dumps({"url": url}))
        elif url:
            print(url)
        else:
            print("the dashboard is off: set node.dashboard_listen = \"127.0.0.1:8470\" in the "
                  "config, then restart gossipd", file=sys.stderr)
        return 0 if url else 1
    if cmd == "provenance.seal":
        return ledger_files.export_ledger(result, args.file[0], getattr(args, "json", False))
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2))
    else:
        print(render_result(cmd, result))
    # A command the daemon ran but that did not succeed (an exchange that failed) is exit 1.
    return 1 if cmd == "average-now" and not result["ok"] else 0


if __name__ == "__main__":
    sys.exit(main())
