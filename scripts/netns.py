#!/usr/bin/env python3
"""An isolated test network of Linux network namespaces, with partitions that cut and heal.

    scripts/netns.py up --nodes 4 --state /tmp/tn.json     # build it, leave it (root only)
    scripts/netns.py exec --state /tmp/tn.json 0 CMD...    # run CMD inside node 0's namespace
    scripts/netns.py cut 0-1/2-3 --state /tmp/tn.json      # nodes 0,1 and 2,3 cannot talk
    scripts/netns.py heal --state /tmp/tn.json             # one network again
    scripts/netns.py probe 0 1 --state /tmp/tn.json        # can node 0 reach node 1? (exit 0/1)
    scripts/netns.py down --state /tmp/tn.json             # remove all of it
    scripts/netns.py down --prefix gsd1234-                # the same without the state file
    scripts/netns.py list                                  # namespaces that look like ours

Layout: one "bridge" namespace PREFIXbr holding a Linux bridge br0, and one namespace PREFIXnI per
node with an interface eth0 at 10.77.0.(I+1)/24, the end of a veth pair whose other end (vI) is a
port of br0. Every object lives inside a namespace named with a prefix unique to the creating
process (``gsd<pid>-``), so nothing outside those namespaces is created, changed or removed: the
host's own interfaces, addresses and routes are never touched. Deleting a namespace deletes the
interfaces in it and so both ends of its veth pairs.

A partition ``A/B[/C...]`` (groups of node indices such as ``0-3/4-7`` or ``0,2/1,3``; ``|``
works as the separator too; a single group such as ``3`` isolates it from the rest) cuts every
group off from every node outside it; nodes in no group stay together on br0. The cut moves the
bridge ports of each group to a bridge of its own (br1, br2, ... in the bridge namespace; the
first group keeps br0 when every node is in some group). Packets
between groups are then dropped silently, as by a split switch: established TCP connections stall
rather than reset and recover after the heal, which puts every port back on br0. Nothing inside
the node namespaces changes, so a cut and its heal are exactly reversible.

Teardown works from the record: the state file lists every namespace before it is made, so a
network half built, or left by a process that died, is removed by ``down --state``. A Network
used as a context manager (and ``up_network`` in scripts) removes everything on exit, also on an
exception, Ctrl-C, SIGTERM or SIGHUP (turned into SystemExit while the network exists) and at
interpreter exit. ``down`` only ever deletes namespaces whose names start with the recorded
prefix. Needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2's ``ip`` and ``ss``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

SUBNET = "10.77.0"
PREFIX_RE = re.compile(r"^gsd\d+-")
MAX_NODES = 250  # 10.77.0.1 .. 10.77.0.250 in one /24
IP_TIMEOUT_S = 30.0


class NetnsError(Exception):
    """A namespace could not be built, changed or removed (the message says which command)."""


def available() -> str | None:
    """None when namespaces can be built here, else why not (for tests to skip with)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "ss"):
        if shutil.which(tool) is None:
            return f"iproute2's {tool!r} is not installed"
    try:
        r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns list` failed: {exc}"
    if r.returncode != 0:
        return f"`ip netns list` failed: {r.stderr.strip()}"
    return None


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise NetnsError(f"`ip {' '.join(args)}` timed out") from exc
    if check and r.returncode != 0:
        raise NetnsError(f"`ip {' '.join(args)}` failed: {r.stderr.strip()}")
    return r


def list_namespaces() -> list[str]:
    """Names of every named network namespace (``ip netns list``)."""
    out = ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def parse_groups(text: str, nodes: int | None = None) -> list[list[int]]:
    """``0-3/4-7`` or ``0,2|1,3`` -> [[0, 1, 2, 3], [4, 5, 6, 7]]; ValueError if malformed,
    if a node is in two groups or (with ``nodes``) out of range."""
    groups: list[list[int]] = []
    seen: set[int] = set()
    for part in re.split(r"[/|]", text):
        group: list[int] = []
        for item in part.split(","):
            lo, dash, hi = item.strip().partition("-")
            try:
                first, last = int(lo), int(hi if dash else lo)
            except ValueError:
                raise ValueError(f"groups {text!r}: {item!r} is not a node or a range A-B"
                                 ) from None
            if first < 0 or last < first:
                raise ValueError(f"groups {text!r}: bad range {item!r}")
            group += range(first, last + 1)
        for i in group:
            if i in seen:
                raise ValueError(f"groups {text!r}: node {i} is in two groups")
            if nodes is not None and i >= nodes:
                raise ValueError(f"groups {text!r}: no node {i} (nodes 0..{nodes - 1})")
            seen.add(i)
        groups.append(group)
    if not groups or not all(groups):
        raise ValueError(f"groups {text!r}: empty group")
    return groups


def format_groups(groups: Sequence[Sequence[int]]) -> str:
    """[[0, 1, 2, 3], [4, 6]] -> '0-3/4,6' (what parse_groups reads back)."""
    parts = []
    for group in groups:
        runs: list[list[int]] = []
        for i in group:
            if runs and i == runs[-1][1] + 1:
                runs[-1][1] = i
            else:
                runs.append([i, i])
        parts.append(",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs))
    return "/".join(parts)


class Network:
    """One test network: ``nodes`` namespaces on one bridge; see the module docstring."""

    def __init__(self, nodes: int, state_file: Path, prefix: str | None = None) -> None:
        if not 1 <= nodes <= MAX_NODES:
            raise ValueError(f"nodes must be in 1..{MAX_NODES}")
        self.nodes = nodes
        self.state_file = state_file
        self.prefix = prefix or f"gsd{os.getpid()}-"
        if not PREFIX_RE.match(self.prefix):
            raise ValueError(f"prefix {self.prefix!r} does not look like gsd<number>-")
        self.created: list[str] = []  # namespaces, in creation order (as recorded)
        self.groups: list[list[int]] | None = None  # the current cut, None when healed
        self.bridges = 1  # br0 .. br{bridges-1} exist in the bridge namespace
        self.creator_pid = os.getpid()
        self._down = False

    # -- names --
    @property
    def bridge_ns(self) -> str:
        return f"{self.prefix}br"

    def ns(self, i: int) -> str:
        return f"{self.prefix}n{i}"

    def addr(self, i: int) -> str:
        return f"{SUBNET}.{i + 1}"

    def exec_argv(self, i: int, argv: Sequence[str]) -> list[str]:
        """argv that runs ``argv`` inside node i's namespace. ``ip netns exec`` execs the
        command (no fork), so the process started with it has the command's pid."""
        return ["ip", "netns", "exec", self.ns(i), *argv]

    # -- the record --
    def _save(self) -> None:
        data = {"version": 1, "prefix": self.prefix, "nodes": self.nodes,
                "creator_pid": self.creator_pid, "namespaces": self.created,
                "bridges": self.bridges, "groups": self.groups, "subnet": SUBNET}
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.state_file)

    @classmethod
    def load(cls, state_file: Path) -> Network:
        data: dict[str, Any] = json.loads(state_file.read_text())
        net = cls(int(data["nodes"]), state_file, str(data["prefix"]))
        net.created = [str(n) for n in data["namespaces"]]
        net.bridges = int(data.get("bridges", 1))
        net.creator_pid = int(data.get("creator_pid", 0))
        groups = data.get("groups")
        net.groups = None if groups is None else [[int(i) for i in g] for g in groups]
        return net

    def _add_namespace(self, name: str) -> None:
        self.created.append(name)  # recorded before it exists: a crash here still cleans up
        self._save()
        ip("netns", "add", name)

    # -- building --
    def up(self) -> Network:
        """Build the bridge and every node's namespace; on any failure remove what was made."""
        if self.prefix_in_use():
            raise NetnsError(f"namespaces named {self.prefix}* exist already")
        try:
            self._add_namespace(self.bridge_ns)
            br = self.bridge_ns
            ip("-n", br, "link", "add", "br0", "type", "bridge", "stp_state", "0",
               "forward_delay", "0")
            ip("-n", br, "link", "set", "br0", "up")
            ip("-n", br, "link", "set", "lo", "up")
            for i in range(self.nodes):
                ns = self.ns(i)
                self._add_namespace(ns)
                ip("-n", br, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0",
                   "netns", ns)
                ip("-n", br, "link", "set", f"v{i}", "master", "br0")
                ip("-n", br, "link", "set", f"v{i}", "up")
                ip("-n", ns, "addr", "add", f"{self.addr(i)}/24", "dev", "eth0")
                ip("-n", ns, "link", "set", "eth0", "up")
                ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.down()
            raise
        return self

    def prefix_in_use(self) -> list[str]:
        return [n for n in list_namespaces() if n.startswith(self.prefix)]

    # -- partitions --
    def _bridged(self, groups: list[list[int]]) -> list[list[int]]:
        """The node sets on br0, br1, ...: the nodes in no group (if any) keep br0, else the
        first group does."""
        listed = {i for g in groups for i in g}
        rest = [i for i in range(self.nodes) if i not in listed]
        return [rest, *groups] if rest else groups

    def cut(self, groups: Sequence[Sequence[int]]) -> None:
        """Cut every group off from every node outside it; a cut already in place is healed
        first."""
        checked = parse_groups(format_groups(groups), self.nodes)
        if self.groups is not None:
            self.heal()
        br = self.bridge_ns
        bridged = self._bridged(checked)
        for k in range(self.bridges, len(bridged)):
            ip("-n", br, "link", "add", f"br{k}", "type", "bridge", "stp_state", "0",
               "forward_delay", "0")
            ip("-n", br, "link", "set", f"br{k}", "up")
            self.bridges = k + 1
        self.groups = checked
        self._save()
        for k, group in enumerate(bridged[1:], start=1):
            for i in group:
                ip("-n", br, "link", "set", f"v{i}", "master", f"br{k}")

    def heal(self) -> None:
        """Every node on br0 again."""
        if self.groups is None:
            return
        for group in self._bridged(self.groups)[1:]:
            for i in group:
                ip("-n", self.bridge_ns, "link", "set", f"v{i}", "master", "br0")
        self.groups = None
        self._save()

    # -- looking --
    def reachable(self, src: int, dst: int, port: int = 9, timeout: float = 1.0) -> bool:
        """Whether a TCP connect from node src to node dst's address gets an answer (an accept or
        a refusal: either proves the path); a timeout or an unreachable host is False."""
        code = ("import socket,sys\n"
                "s=socket.socket(); s.settimeout(float(sys.argv[3]))\n"
                "try:\n s.connect((sys.argv[1], int(sys.argv[2])))\n"
                "except ConnectionRefusedError: pass\n"
                "except OSError: sys.exit(1)\n")
        argv = self.exec_argv(src, [sys.executable, "-c", code, self.addr(dst), str(port),
                                    str(timeout)])
        r = subprocess.run(argv, capture_output=True, timeout=timeout + IP_TIMEOUT_S)
        return r.returncode == 0

    def listening(self, i: int, port: int) -> bool:
        """Whether something in node i's namespace listens on TCP ``port``."""
        return listening(self.ns(i), port)

    # -- teardown --
    def down(self) -> list[str]:
        """Delete every recorded namespace (and so every interface and bridge in them); return
        the namespaces of ours still listed afterwards (empty when all is gone)."""
        existing = set(list_namespaces())
        for name in reversed(self.created):
            if name.startswith(self.prefix) and name in existing:
                ip("netns", "delete", name, check=False)
        left = self.prefix_in_use()
        if not left:
            self.created = []
            self.groups = None
            self._down = True
            with contextlib.suppress(FileNotFoundError):
                self.state_file.unlink()
        return left

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()


def listening(namespace: str, port: int) -> bool:
    """Whether something in ``namespace`` listens on TCP ``port`` (False if it is gone)."""
    if namespace not in list_namespaces():
        return False
    r = subprocess.run(["ss", "-N", namespace, "-Hltn", f"sport = :{port}"],
                       capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    return r.returncode == 0 and bool(r.stdout.strip())


def down_prefix(prefix: str) -> list[str]:
    """Delete every namespace whose name starts with ``prefix`` (gsd<number>-); what is left."""
    if not PREFIX_RE.match(prefix):
        raise ValueError(f"prefix {prefix!r} does not look like gsd<number>-")
    for name in list_namespaces():
        if name.startswith(prefix):
            ip("netns", "delete", name, check=False)
    return [n for n in list_namespaces() if n.startswith(prefix)]


@contextlib.contextmanager
def up_network(nodes: int, state_file: Path, prefix: str | None = None) -> Iterator[Network]:
    """Build a network and remove it on leaving, whatever the reason: an exception, Ctrl-C,
    SIGTERM or SIGHUP (both raise SystemExit in the main thread meanwhile), or interpreter
    exit."""
    net = Network(nodes, state_file, prefix)
    previous: dict[signal.Signals, Any] = {}

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous[sig] = signal.signal(sig, on_signal)
    atexit.register(net.down)
    try:
        net.up()
        yield net
    finally:
        try:
            left = net.down()
            if left:
                print(f"netns: could not remove {left}", file=sys.stderr)
        finally:
            atexit.unregister(net.down)
            for sig, handler in previous.items():
                signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------------


def _state_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state", type=Path, required=True, help="the network's state file")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="netns.py", description=__doc__.split("\n\n")[0]
                                     if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("up", help="build a network of N namespaces and leave it")
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--state", type=Path,
                   help="state file (default: a new one in the temp dir, printed)")
    p = sub.add_parser("cut", help="partition into groups, e.g. 0-3/4-7")
    p.add_argument("groups")
    _state_arg(p)
    p = sub.add_parser("heal", help="undo the partition")
    _state_arg(p)
    p = sub.add_parser("probe", help="exit 0 if node SRC reaches node DST, else 1")
    p.add_argument("src", type=int)
    p.add_argument("dst", type=int)
    _state_arg(p)
    p = sub.add_parser("exec", help="run a command inside node I's namespace "
                       "(exec --state FILE I CMD...)")
    _state_arg(p)
    p.add_argument("node", type=int)
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p = sub.add_parser("down", help="remove a network (by its state file or its prefix)")
    p.add_argument("--state", type=Path)
    p.add_argument("--prefix")
    sub.add_parser("list", help="namespaces named like ours (gsd<pid>-*)")
    args = parser.parse_args(argv)
    if args.command == "list":
        for name in list_namespaces():
            if PREFIX_RE.match(name):
                print(name)
        return 0
    why = available()
    if why is not None:
        print(f"netns: {why}", file=sys.stderr)
        return 2
    if args.command == "up":
        state = args.state or Path(tempfile.mkdtemp(prefix="gsd-netns-")) / "netns.json"
        net = Network(args.nodes, state.resolve())
        net.up()
        print(f"netns: {args.nodes} namespaces {net.ns(0)}..{net.ns(args.nodes - 1)} on "
              f"bridge namespace {net.bridge_ns}; addresses {net.addr(0)}.."
              f"{net.addr(args.nodes - 1)}; state {net.state_file}")
        return 0
    if args.command == "down":
        if args.state is not None:
            left = Network.load(args.state).down()
        elif args.prefix is not None:
            left = down_prefix(args.prefix)
        else:
            parser.error("down needs --state or --prefix")
        print(f"netns: removed; left {left}" if left else "netns: removed")
        return 1 if left else 0
    net = Network.load(args.state)
    if args.command == "cut":
        try:
            groups = parse_groups(args.groups, net.nodes)
        except ValueError as exc:
            parser.error(str(exc))
        net.cut(groups)
        print(f"netns: cut {format_groups(groups)}")
        return 0
    if args.command == "heal":
        net.heal()
        print("netns: healed")
        return 0
    if args.command == "probe":
        ok = net.reachable(args.src, args.dst)
        print(f"netns: node {args.src} {'reaches' if ok else 'does not reach'} node {args.dst}")
        return 0 if ok else 1
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("exec needs a command")
    return subprocess.call(net.exec_argv(args.node, cmd))


if __name__ == "__main__":
    sys.exit(main())
