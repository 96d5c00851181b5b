#!/usr/bin/env python3
"""Local multi-process testnet: N gossipd processes on 127.0.0.1 (or in network namespaces).

    scripts/testnet.py run --nodes 4 --seconds 90 --partition dirichlet:0.1 --out testnet-out
    scripts/testnet.py run ... --fault kill:3@30 --fault restart:3@50 --fault pause:1@20+15
    scripts/testnet.py up --nodes 3 --dir tn      # start, leave running (tn/testnet.json)
    scripts/testnet.py status --dir tn            # pid, state, step, accuracy, peers per node
    scripts/testnet.py kill|restart|pause|resume NODE --dir tn
    scripts/testnet.py down --dir tn              # stop every node, remove the socket dir
    scripts/testnet.py dashboard --dir tn         # live page of the whole testnet
    scripts/testnet.py run --nodes 4 --seconds 25 --netns --fault partition:0-1/2-3@5+6 --out d
    scripts/testnet.py up --nodes 4 --netns --dir tn; scripts/testnet.py partition 0-1/2-3 \
        --dir tn; scripts/testnet.py heal --dir tn    # (root only, as --netns)

Every node gets its own directory (config.toml, state/ with its key, gossipd.log), a fixed
loopback port and a control socket in a short private temp dir (Unix socket paths are limited to
108 bytes). All nodes start at once; every key and port is fixed beforehand and node 0's address
is every other node's only bootstrap peer (`--bootstrap all`: every other node's), so the rest
must find each other by peer exchange. Readiness is polled over the control sockets (no fixed
sleeps). A restart reuses the node's config, state dir, key and port.

`run`: start, run S seconds while applying the fault schedule, poll every node's parameters every
--sample-every seconds and its history every --report-every seconds, then collect every node's
status and parameters, SIGTERM all nodes (SIGKILL after 15 s, counted as a failure), and write
DIR/summary.json, DIR/timeseries.json, PNG plots and DIR/report.md (scripts/report.py), plus a
table. Exit status 0 when every node started, answered and stopped cleanly (nodes the schedule
killed excepted) and the provenance check passed; 1 otherwise. The provenance check
(scripts/check_ledgers.py): every node's ledger verifies, and every receipt of the run is on
both peers' ledgers, identically signed (summary.json "provenance"; excused: the receipt of an
exchange that a fault or the final stop cut after one side had finished it).

`--netns` (root only; scripts/netns.py): every node runs in a network namespace of its own,
started as `ip netns exec NS python -m gossipd.main ...` (ip execs python, so the pid the testnet
records and signals is gossipd's own), listening on 10.77.0.(I+1) port 4001; the namespaces
hang off one bridge in a namespace of their own and are named gsd<pid>-*, the host's interfaces
and routes are untouched. The testnet talks to the nodes over their Unix control sockets, which
work across network namespaces. Fault actions `partition:GROUPS@S[+D]` (`cut:` is the same;
GROUPS like 0-3/4-7, 0,2/1,3 or 3: each group is cut off from every node outside it) and
`heal@S` (a +D heals by itself D seconds later): packets between the groups are dropped, TCP
connections stall and resume after the heal. summary.json then has "partitions": exchanges
across and within the cut while it was in place and after the heal (from every node's peer
table), and the consensus distance before, during and after it; the table prints them. The
namespaces are removed at the end of the run, also after a failure, Ctrl-C or SIGTERM
(`leftovers.netns_left` lists any that were not); `up --netns` keeps them until `down`, and
`partition GROUPS` / `heal` cut and heal its network. A record of what was made is kept in
DIR/netns.json, so `scripts/netns.py down --state DIR/netns.json` removes a network whose
testnet was SIGKILLed.

The partition measurement (8 nodes, 4/4 for 3 minutes, then 3 minutes healed):

    scripts/testnet.py run --nodes 8 --seconds 420 --partition dirichlet:0.1 --netns \
        --fault partition:0-3/4-7@60+180 --sample-every 5 --ready-timeout 600 --out d

`up` and the commands after it: the nodes run in their own sessions, so they outlive the shell
that started them; DIR/testnet.json records pids, sockets, ports, configs and the seed. A pid is
signalled only while /proc/PID still shows that gossipd process (its start time and --config
path match the record), so a recycled pid is never touched. Exit status 0 ok, 1 a node failed
(not ready, did not stop cleanly, left something behind), 2 usage (no testnet there, bad node).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import heapq
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import netns  # noqa: E402

from gossipd.cli import ControlError, request  # noqa: E402
from gossipd.identity import load_or_create_seed, peer_id_for_seed  # noqa: E402

READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0
STATE_FILE = "testnet.json"
LOCK_FILE = ".testnet.lock"
FAULT_ACTIONS = ("kill", "stop", "restart", "pause", "resume")
NET_ACTIONS = ("partition", "cut", "heal")  # --netns only; cut is partition's other name
NETNS_STATE = "netns.json"
NETNS_PORT = 4001  # every node namespace has its own ports: all nodes listen on this one
# Environment a node must not inherit: a systemd credential or notify socket meant for this shell
# would give every node the same key or send their READY=1 to someone else.
UNINHERITED_ENV = ("CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


# ---------------------------------------------------------------------------------------------
# configs, ports, processes


def _toml_value(v: Any) -> str:
    if isinstance(v, dict):  # [train.options] and the like, as a TOML inline table
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(v)  # JSON scalars and string lists are valid TOML values


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> None:
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise SystemExit(f"testnet: --set expects SECTION.KEY=VALUE, got {item!r}")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        out.setdefault(section, {})[name] = value
    return out


def parse_node_overrides(items: list[str], nodes: int) -> dict[int, dict[str, dict[str, Any]]]:
    """--node-set I:SECTION.KEY=VALUE items as {node: {section: {key: value}}}."""
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for item in items:
        idx, colon, rest = item.partition(":")
        try:
            i = int(idx)
        except ValueError:
            i = -1
        if not colon or not 0 <= i < nodes:
            raise SystemExit(f"testnet: --node-set expects I:SECTION.KEY=VALUE with I in "
                             f"0..{nodes - 1}, got {item!r}")
        for section, values in parse_overrides([rest]).items():
            out.setdefault(i, {}).setdefault(section, {}).update(values)
    return out


def node_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in UNINHERITED_ENV:
        env.pop(name, None)
    # Many nodes share few cores: one compute thread per node keeps them from thrashing.
    env.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    # gossipd itself, then the directory the testnet was started from: a plugin task
    # (train.task = "module:factory") next to the user's data imports as it would for them.
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.getcwd(), env.get("PYTHONPATH", "")])
    return env


def free_ports(n: int) -> list[int]:
    """n distinct TCP ports on 127.0.0.1 that nothing listens on right now. libp2p binds with
    SO_REUSEPORT, so a port shared by two of our nodes would not even fail: keep them distinct."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in ports:
            ports.append(port)
    return ports


def port_listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def node_listening(spec: NodeSpec) -> bool:
    """Whether the node's port is still listened on where the node listens: 127.0.0.1 of the
    host, or its own namespace (False once that namespace is gone)."""
    if spec.netns is None:
        return port_listening(spec.port)
    return netns.listening(spec.netns, spec.port)


@dataclass
class NodeSpec:
    """One node as testnet.json records it."""

    index: int
    dir: str
    config: str
    socket: str
    port: int
    peer_id: str
    addr: str
    pid: int | None = None
    start_ticks: int | None = None  # /proc/PID/stat field 22: tells a recycled pid apart
    state: str = "new"  # running | paused | killed | stopped | exited
    incarnations: int = 0
    netns: str | None = None  # the network namespace it runs in (--netns), None: the host's

    @property
    def log(self) -> Path:
        return Path(self.dir) / "gossipd.log"


def plan_nodes(args: argparse.Namespace, base: Path, sockdir: Path,
               net: netns.Network | None = None) -> list[NodeSpec]:
    """Keys, ports and config files of every node (nothing started yet). With ``net``, node i
    runs in namespace net.ns(i) and listens on net.addr(i), port NETNS_PORT."""
    # Every node's key is made up front: the swarm is closed, its allowlist is all nodes, and
    # every node's address is known before any node starts.
    ids = [peer_id_for_seed(load_or_create_seed(base / f"node{i}" / "state"))
           for i in range(args.nodes)]
    if net is None:
        ports = free_ports(args.nodes)
        hosts = ["127.0.0.1"] * args.nodes
    else:
        ports = [NETNS_PORT] * args.nodes
        hosts = [net.addr(i) for i in range(args.nodes)]
    addrs = [f"/ip4/{h}/tcp/{p}/p2p/{pid}" for h, p, pid in zip(hosts, ports, ids, strict=True)]
    overrides = parse_overrides(args.set)
    per_node = parse_node_overrides(getattr(args, "node_set", []), args.nodes)
    swarm = {"open": True} if args.open_swarm else {
        "members": ids + list(getattr(args, "extra_member", []))}
    specs = []
    for i in range(args.nodes):
        ndir = base / f"node{i}"
        sock = sockdir / f"n{i}.sock"
        if args.bootstrap == "all":
            bootstrap = [a for j, a in enumerate(addrs) if j != i]
        else:
            bootstrap = [] if i == 0 else [addrs[0]]
        sections: dict[str, dict[str, Any]] = {
            "swarm": dict(swarm),
            "node": {"state_dir": str(ndir / "state"), "control_socket": str(sock),
                     "log_level": args.log_level},
            "network": {"listen": [f"/ip4/{hosts[i]}/tcp/{ports[i]}"], "bootstrap": bootstrap,
                        "discovery_interval_s": 1.0},
            "averaging": {"enabled": not args.local_only},
            "train": {"task": args.task, "partition": args.partition, "num_shards": args.nodes,
                      "shard_index": i, "seed": args.seed},
        }
        for section, values in overrides.items():
            sections.setdefault(section, {}).update(values)
        for section, values in per_node.get(i, {}).items():
            sections.setdefault(section, {}).update(values)
        if "data_path" in sections["train"]:  # nodes run in their own dirs: make it absolute
            sections["train"]["data_path"] = str(Path(sections["train"]["data_path"]).resolve())
        write_config(ndir / "config.toml", sections)
        specs.append(NodeSpec(index=i, dir=str(ndir), config=str(ndir / "config.toml"),
                              socket=str(sock), port=ports[i], peer_id=ids[i], addr=addrs[i],
                              netns=None if net is None else net.ns(i)))
    return specs


def launch(spec: NodeSpec, *, own_session: bool) -> subprocess.Popen[bytes]:
    """Start the node's gossipd; its output is appended to its gossipd.log. In a namespace it
    starts as `ip netns exec NS python ...`: ip enters the namespace and execs python, so the
    pid is gossipd's own (proc_state then checks its command line as for any node)."""
    argv = [sys.executable, "-m", "gossipd.main", "--config", spec.config]
    if spec.netns is not None:
        argv = ["ip", "netns", "exec", spec.netns, *argv]
    with open(spec.log, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=node_env(),
            cwd=spec.dir, start_new_session=own_session,
        )
    spec.pid = proc.pid
    spec.start_ticks = proc_start_ticks(proc.pid)
    spec.state = "running"
    spec.incarnations += 1
    return proc


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a process, None if there is none."""
    return _proc_stat_path(Path(f"/proc/{pid}/stat"))


def _proc_stat_path(path: Path) -> tuple[str, int] | None:
    try:
        raw = path.read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # the command name may contain spaces
    return fields[0], int(fields[19])


def _threads_exiting(pid: int) -> bool:
    """True while a thread of pid is still alive. A killed process's leader thread turns into
    a zombie before its last thread has released the shared file table (its listener)."""
    try:
        tids = [t.name for t in Path(f"/proc/{pid}/task").iterdir()]
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    for tid in tids:
        st = _proc_stat_path(Path(f"/proc/{pid}/task/{tid}/stat"))
        if st is not None and st[0] not in ("Z", "X"):
            return True
    return False


def proc_start_ticks(pid: int) -> int | None:
    st = _proc_stat(pid)
    return None if st is None else st[1]


def proc_state(spec: NodeSpec) -> str:
    """'running', 'paused' (stopped by a signal) or 'gone' for the process recorded in spec.
    Gone also covers a zombie, and a pid now used by some other process."""
    if spec.pid is None:
        return "gone"
    st = _proc_stat(spec.pid)
    if st is None or st[1] != spec.start_ticks:
        return "gone"
    if st[0] in ("Z", "X"):
        return "running" if _threads_exiting(spec.pid) else "gone"
    try:
        cmdline = Path(f"/proc/{spec.pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return "gone"
    if b"gossipd.main" not in cmdline or spec.config.encode() not in cmdline:
        return "gone"
    return "paused" if st[0] in ("T", "t") else "running"


def signal_node(spec: NodeSpec, sig: signal.Signals) -> bool:
    """Send sig to the node's process if it is still that gossipd process; True if sent."""
    if spec.pid is None or proc_state(spec) == "gone":
        return False
    try:
        os.kill(spec.pid, sig)
    except ProcessLookupError:
        return False
    return True


def wait_gone(spec: NodeSpec, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while proc_state(spec) != "gone":
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stop_process(spec: NodeSpec, proc: subprocess.Popen[bytes] | None = None) -> bool:
    """SIGCONT + SIGTERM, SIGKILL after STOP_TIMEOUT_S. True if it stopped on SIGTERM."""
    if proc is not None and proc.poll() is not None:
        return True
    signal_node(spec, signal.SIGCONT)  # a stopped process handles SIGTERM only once continued
    if not signal_node(spec, signal.SIGTERM):
        return True
    if proc is not None:
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
            return True
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return False
    if wait_gone(spec, STOP_TIMEOUT_S):
        return True
    signal_node(spec, signal.SIGKILL)
    wait_gone(spec, 5.0)
    return False


def ready_status(spec: NodeSpec) -> dict[str, Any] | None:
    if not Path(spec.socket).exists():
        return None
    try:
        status: dict[str, Any] = request(Path(spec.socket), "status", timeout=5)
    except ControlError:
        return None
    # The status must come from this incarnation, not from a stranger on a reused path.
    return status if status.get("pid") == spec.pid else None


def log_tail(spec: NodeSpec) -> str:
    try:
        return spec.log.read_text(errors="replace")[-2000:]
    except FileNotFoundError:
        return ""


def wait_ready_specs(specs: list[NodeSpec], procs: dict[int, subprocess.Popen[bytes]],
                     deadline: float) -> dict[int, dict[str, Any]]:
    """Poll every node's control socket until it answers status; raise if one exits or the
    deadline passes."""
    pending = {s.index: s for s in specs}
    statuses: dict[int, dict[str, Any]] = {}
    while pending:
        for i, s in list(pending.items()):
            proc = procs.get(i)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"node {i} exited with {proc.returncode}:\n{log_tail(s)}")
            status = ready_status(s)
            if status is not None:
                statuses[i] = status
                del pending[i]
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"nodes {sorted(pending)} not ready in time")
        time.sleep(0.1)
    return statuses


# ---------------------------------------------------------------------------------------------
# run


@dataclass(order=True)
class Fault:
    at: float
    seq: int
    action: str = field(compare=False)
    node: int = field(compare=False)
    duration: float | None = field(default=None, compare=False)
    auto: bool = field(default=False, compare=False)  # the resume that ends a timed pause
    # partition: the groups of nodes (node is -1); heal: none (node -1)
    groups: list[list[int]] | None = field(default=None, compare=False)

    def describe(self) -> str:
        extra = f"+{self.duration:g}" if self.duration is not None else ""
        if self.action == "heal":
            return f"heal@{self.at:g}"
        target = netns.format_groups(self.groups) if self.groups is not None else self.node
        return f"{self.action}:{target}@{self.at:g}{extra}"


def parse_fault(text: str, seq: int) -> Fault:
    """ACTION:NODE@SECONDS[+DURATION], e.g. kill:3@30, restart:3@50, pause:1@20+15; with
    --netns also partition:GROUPS@SECONDS[+DURATION] (cut:... the same; GROUPS such as 0-3/4-7
    or 0,1|2,3) and heal@SECONDS."""
    action, colon, rest = text.partition(":")
    if "@" in action and not colon:  # heal@S
        action, rest = action.partition("@")[0], "@" + action.partition("@")[2]
    target, at_sign, when = rest.partition("@")
    at, plus, duration = when.partition("+")
    action = "partition" if action == "cut" else action
    try:
        if not at_sign or action not in (*FAULT_ACTIONS, *NET_ACTIONS):
            raise ValueError
        groups = None
        node = -1
        if action == "partition":
            groups = netns.parse_groups(target)
        elif action == "heal":
            if target not in ("", "all"):
                raise ValueError
        elif not colon:
            raise ValueError
        else:
            node = int(target)
        fault = Fault(at=float(at), seq=seq, action=action, node=node,
                      duration=float(duration) if plus else None, groups=groups)
    except ValueError:
        raise ValueError(f"--fault expects ACTION:NODE@SECONDS[+DURATION] with ACTION one of "
                         f"{', '.join(FAULT_ACTIONS)}, or (with --netns) "
                         f"partition:GROUPS@SECONDS[+DURATION] and heal@SECONDS, "
                         f"got {text!r}") from None
    if fault.at < 0 or (fault.duration is not None and fault.duration <= 0):
        raise ValueError(f"--fault {text!r}: times must be >= 0, durations > 0")
    if fault.duration is not None and action not in ("pause", "partition"):
        raise ValueError(f"--fault {text!r}: only pause and partition take +DURATION")
    return fault


def parse_faults(args: argparse.Namespace) -> list[Fault]:
    """--fault items and the --kill alias, checked against --nodes; ValueError if bad."""
    faults = [parse_fault(f, i) for i, f in enumerate(args.fault)]
    if args.kill:
        idx, _, at = args.kill.partition("@")
        faults.append(parse_fault(f"kill:{idx}@{at}", len(faults)))
    for f in faults:
        if f.action in NET_ACTIONS:
            if not getattr(args, "netns", False):
                raise ValueError(f"fault {f.describe()}: partitions need --netns")
            if f.groups is not None:
                netns.parse_groups(netns.format_groups(f.groups), args.nodes)
        elif not 0 <= f.node < args.nodes:
            raise ValueError(f"fault {f.describe()}: no node {f.node} "
                             f"(nodes 0..{args.nodes - 1})")
    return faults


@dataclass
class RunNode:
    spec: NodeSpec
    proc: subprocess.Popen[bytes]
    status: dict[str, Any] = field(default_factory=dict)
    params: Any = None
    exit_code: int | None = None
    killed: bool = False  # the last incarnation was SIGKILLed by the schedule
    stopped: bool = False  # the last incarnation was stopped by the schedule (SIGTERM)
    paused: bool = False
    starting: bool = False  # restarted and not answering yet
    started_wall: float | None = None  # history anchor of the current incarnation
    history_t: float = -1.0  # last history sample fetched from the current incarnation
    history: list[dict[str, Any]] = field(default_factory=list)
    early_exits: list[int] = field(default_factory=list)
    inc_start_s: float = 0.0  # run time the current incarnation started at
    rss: list[list[float]] = field(default_factory=list)  # [t, MiB, incarnation] per poll
    unanswered: int = 0  # polls it was up for and did not answer
    metrics: dict[int, dict[str, Any]] = field(default_factory=dict)  # last, per incarnation
    stop_s: float | None = None  # seconds from SIGTERM to exit at the end of the run
    hang_stack: str | None = None  # path of a py-spy dump, if it did not stop in time

    @property
    def index(self) -> int:
        return self.spec.index

    @property
    def up(self) -> bool:
        """Running, answering and not frozen: safe to send a command to."""
        return not (self.killed or self.stopped or self.paused or self.starting) \
            and self.proc.poll() is None


def read_rss_mb(pid: int) -> float | None:
    """Resident memory (VmRSS) of a process in MiB, None if there is none (or a zombie)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return None


def _metric_labels(raw: str) -> dict[str, str]:
    out = {}
    for part in raw.split(","):
        key, _, value = part.partition("=")
        if key:
            out[key.strip()] = value.strip().strip('"')
    return out


def parse_exchange_metrics(text: str) -> dict[str, Any]:
    """From a node's Prometheus text: its exchange outcome counts (both roles) and the
    bucket the longest exchange fell in: max_gt_s < longest <= max_le_s (max_le_s None: beyond
    the top bucket). The daemon exposes durations only as a histogram, so that bound is the
    finest there is."""
    outcomes: dict[str, float] = {}
    buckets: dict[str, list[tuple[float, float]]] = {}
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or "{" not in line:
            continue
        name, _, rest = line.partition("{")
        labels_raw, _, value_raw = rest.rpartition("}")
        try:
            value = float(value_raw.split()[0])
        except (ValueError, IndexError):
            continue
        labels = _metric_labels(labels_raw)
        if name == "gossipd_exchanges_total":
            outcomes[labels.get("outcome", "?")] = outcomes.get(labels.get("outcome", "?"),
                                                                0.0) + value
        elif name == "gossipd_exchange_duration_seconds_bucket":
            edge = labels.get("le", "+Inf")
            buckets.setdefault(labels.get("role", "?"), []).append(
                (math.inf if edge == "+Inf" else float(edge), value))
        elif name == "gossipd_exchange_duration_seconds_count":
            counts[labels.get("role", "?")] = value
    max_le: float | None = 0.0
    max_gt = 0.0
    for role, rows in buckets.items():
        total = counts.get(role, max((v for _, v in rows), default=0.0))
        if total <= 0:
            continue
        rows.sort()
        prev = 0.0
        for bound, cum in rows:
            if cum >= total:
                if bound == math.inf:
                    max_le = None
                elif max_le is not None:
                    max_le = max(max_le, bound)
                max_gt = max(max_gt, prev)
                break
            prev = bound
    return {"outcomes": {k: int(v) for k, v in outcomes.items()},
            "max_gt_s": max_gt, "max_le_s": max_le}


class Collector:
    """Time series of a run: node histories (fetched while each incarnation lives) and polled
    parameter snapshots of all nodes at the same moments."""

    def __init__(self, nodes: list[RunNode], wall0: float) -> None:
        self.nodes = nodes
        self.wall0 = wall0
        self.polls: list[dict[str, Any]] = []

    def pull_history(self, n: RunNode) -> None:
        if not n.up:
            return
        try:
            h = request(Path(n.spec.socket), "history", timeout=5, since=n.history_t)
        except ControlError:
            return
        if n.started_wall is None:
            n.started_wall = float(h["started_wall"])
        for s in h["samples"]:
            n.history_t = max(n.history_t, float(s["t"]))
            n.history.append({**s, "t": round(n.started_wall - self.wall0 + float(s["t"]), 3),
                              "incarnation": n.spec.incarnations})
        self.pull_metrics(n)

    def pull_metrics(self, n: RunNode) -> None:
        """The exchange histogram and outcome counts of the node's current incarnation."""
        if not n.up:
            return
        try:
            m = request(Path(n.spec.socket), "metrics", timeout=5)
        except ControlError:
            return
        n.metrics[n.spec.incarnations] = parse_exchange_metrics(str(m.get("text", "")))

    def sample_rss(self, t: float) -> None:
        for n in self.nodes:
            if n.proc.poll() is not None:
                continue
            mb = read_rss_mb(n.proc.pid)
            if mb is not None:
                n.rss.append([round(t, 2), round(mb, 2), n.spec.incarnations])

    def pull_all(self) -> None:
        for n in self.nodes:
            self.pull_history(n)

    def sample_params(self, t: float) -> None:
        sample: dict[str, Any] = {"t": round(t, 3), "vectors": {}, "steps": {}}
        for n in self.nodes:
            if not n.up:
                continue
            try:
                p = request(Path(n.spec.socket), "params", timeout=3)
            except ControlError:
                n.unanswered += 1
                continue
            sample["vectors"][n.index] = p["data"]
            sample["steps"][n.index] = p["step"]
        if sample["vectors"]:
            self.polls.append(sample)

    def new_incarnation(self, n: RunNode) -> None:
        n.started_wall = None
        n.history_t = -1.0


def poll_status(nodes: list[RunNode]) -> None:
    for n in nodes:
        if not n.up:
            continue
        with contextlib.suppress(ControlError):
            n.status = request(Path(n.spec.socket), "status", timeout=5)


def progress_line(nodes: list[RunNode], elapsed: float) -> str:
    parts = []
    for n in nodes:
        for flag in ("killed", "stopped", "paused", "starting"):
            if getattr(n, flag):
                parts.append(f"n{n.index}: {flag}")
                break
        else:
            s = n.status
            acc = s.get("accuracy")
            parts.append(f"n{n.index}: step {s.get('step', 0)} acc "
                         f"{'-' if acc is None else f'{acc:.3f}'} peers "
                         f"{len(s.get('known_peers', []))} ok {s.get('exchanges_ok', 0)}")
    return f"[{elapsed:5.0f}s] " + " | ".join(parts)


def py_spy() -> str | None:
    """The py-spy next to this Python (the virtualenv's), or on PATH; None if none."""
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def dump_stack(n: RunNode) -> None:
    """py-spy dump of a node that did not stop in time, into its dir (hang-stack.txt)."""
    tool = py_spy()
    if tool is None:
        return
    try:
        r = subprocess.run([tool, "dump", "--pid", str(n.proc.pid)], capture_output=True,
                           text=True, timeout=30)
    except (subprocess.TimeoutExpired, OSError) as exc:
        text = f"py-spy failed: {exc}\n"
    else:
        text = r.stdout + r.stderr
    path = Path(n.spec.dir) / "hang-stack.txt"
    path.write_text(text)
    n.hang_stack = str(path)


def stop_all(nodes: list[RunNode]) -> None:
    t0 = time.monotonic()
    running = []
    for n in nodes:
        if n.proc.poll() is None:
            n.proc.send_signal(signal.SIGCONT)  # a paused node handles SIGTERM once continued
            n.proc.send_signal(signal.SIGTERM)
            running.append(n)
    deadline = t0 + STOP_TIMEOUT_S
    while running and time.monotonic() < deadline:
        for n in list(running):
            if n.proc.poll() is not None:
                n.stop_s = round(time.monotonic() - t0, 2)
                running.remove(n)
        time.sleep(0.05)
    for n in running:  # still there after STOP_TIMEOUT_S: where it hangs, then SIGKILL
        if n.proc.poll() is None:
            dump_stack(n)
            n.proc.kill()
        n.proc.wait()
    for n in nodes:
        n.exit_code = n.proc.returncode


def decode_params(data: str) -> Any:
    import numpy as np

    return np.frombuffer(base64.b64decode(data), dtype="<f4").copy()


class Evaluator:
    """Test accuracy of parameter vectors, computed in this process after the nodes stopped
    (so that evaluating does not take CPU from the nodes during the run)."""

    def __init__(self, args: argparse.Namespace) -> None:
        from gossipd.tasks import TaskContext
        from gossipd.trainer import make_trainer

        # The nodes' own task and [train] overrides: a plugin task evaluates the same way,
        # imported from where the testnet was started (as the nodes import it).
        if os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())
        train = parse_overrides(args.set).get("train", {})
        keys = ("lr", "lr_min", "decay_steps", "batch_size", "momentum", "l2", "hidden")
        hyper: dict[str, Any] = {k: train[k] for k in keys if k in train}
        data_path = train.get("data_path")
        ctx = TaskContext(shard_index=0, num_shards=args.nodes, partition=args.partition,
                          seed=args.seed, data_path=None if data_path is None else
                          Path(data_path).resolve(), options=dict(train.get("options", {})),
                          hyper=hyper)
        self.trainer = make_trainer(args.task, ctx)
        self.metric = self.trainer.metric

    def measure(self, vectors: dict[int, Any]) -> dict[str, Any]:
        from gossipd.mixing import consensus_distance, mean_vector

        vs = list(vectors.values())
        if not vs:
            return {"node_accuracy": {}, "avg_model_accuracy": None, "consensus_distance": None}
        return {
            "node_accuracy": {i: float(self.trainer.evaluate(v)) for i, v in vectors.items()},
            "avg_model_accuracy": float(self.trainer.evaluate(mean_vector(vs))),
            "consensus_distance": float(consensus_distance(vs)),
        }


def leftovers(nodes: list[RunNode]) -> dict[str, Any]:
    """What a finished testnet must not leave behind: processes, socket files, listening ports."""
    alive = [n.proc.pid for n in nodes if n.proc.poll() is None]
    # A SIGKILLed node cannot remove its socket; the daemon replaces such a stale file on its
    # next start. Only sockets of nodes that were asked to stop count as left behind.
    sockets = [n.spec.socket for n in nodes if Path(n.spec.socket).exists() and not n.killed]
    ports = [n.spec.addr for n in nodes if node_listening(n.spec)]
    return {"processes_alive": alive, "sockets_left": sockets, "ports_listening": ports}


def print_table(summary: dict[str, Any]) -> None:
    metric = summary.get("metric", "accuracy")
    worst = "min" if summary.get("higher_is_better", True) else "max"
    print()
    print(f"{'node':<5} {'peer id':<16} {metric[:8]:>8} {'step':>6} {'ex ok':>6} {'ex fail':>7} "
          f"{'sent':>10} {'received':>10} {'exit':>5}")
    for n in summary["nodes"]:
        acc = "-" if n["accuracy"] is None else f"{n['accuracy']:.4f}"
        print(f"{n['index']:<5} {('…' + n['peer_id'][-14:]) if n['peer_id'] else '-':<16} "
              f"{acc:>8} {n['step']:>6} {n['exchanges_ok']:>6} {n['exchanges_failed']:>7} "
              f"{n['bytes_sent']:>10} {n['bytes_received']:>10} {n['exit_code']!s:>5}")
    avg = summary["avg_model_accuracy"]
    print(f"\naveraged-model {metric} {avg if avg is None else f'{avg:.4f}'}   "
          f"mean node {metric} {summary['mean_node_accuracy']:.4f}   "
          f"{worst} node {metric} {summary['min_node_accuracy']:.4f}   "
          f"consensus distance {summary['consensus_distance']:.3g}")
    faults = " ".join(f["fault"] for f in summary["faults"]) or "none"
    print(f"mode {'local-only' if summary['local_only'] else 'gossip'}   "
          f"partition {summary['partition']}   {summary['seconds']} s   faults {faults}   "
          f"leftovers {summary['leftovers']}")


def peer_counts(nodes: list[RunNode]) -> dict[int, dict[int, list[int]]]:
    """Every answering node's peer table as {node: {peer node: [exchanges ok, failed]}} (both
    the exchanges it started and those it served)."""
    index = {n.spec.peer_id: n.index for n in nodes}
    out: dict[int, dict[int, list[int]]] = {}
    for n in nodes:
        if not n.up:
            continue
        try:
            rows = request(Path(n.spec.socket), "peers", timeout=5)
        except ControlError:
            continue
        out[n.index] = {index[r["peer_id"]]: [int(r["exchanges_ok"]), int(r["exchanges_failed"])]
                        for r in rows if r.get("peer_id") in index}
    return out


def count_delta(a: dict[int, dict[int, list[int]]], b: dict[int, dict[int, list[int]]],
                groups: list[list[int]], nodes: int) -> dict[str, int]:
    """Exchanges between snapshots a and b, split into pairs across the cut and pairs within a
    group (the nodes in no group are a group of their own, as in netns.Network.cut); each
    exchange is seen by both its ends. A node that restarted in between counts from zero."""
    group = {i: -1 for i in range(nodes)}
    for k, g in enumerate(groups):
        for i in g:
            group[i] = k
    out = {"cross_ok": 0, "cross_failed": 0, "within_ok": 0, "within_failed": 0}
    for i, peers in b.items():
        for j, (ok_b, failed_b) in peers.items():
            ok_a, failed_a = a.get(i, {}).get(j, [0, 0])
            d_ok = ok_b - ok_a if ok_b >= ok_a else ok_b
            d_failed = failed_b - failed_a if failed_b >= failed_a else failed_b
            kind = "cross" if group[i] != group[j] else "within"
            out[f"{kind}_ok"] += d_ok
            out[f"{kind}_failed"] += d_failed
    return out


class RunState:
    """The fault schedule's effect on the nodes of one run."""

    def __init__(self, nodes: list[RunNode], collector: Collector,
                 net: netns.Network | None = None) -> None:
        self.nodes = nodes
        self.collector = collector
        self.net = net
        self.kill_record: dict[str, Any] | None = None
        self.applied: list[dict[str, Any]] = []
        # one entry per partition: groups, cut/heal times, peer-table snapshots at the cut, at
        # the heal and at the end (turned into exchange counts by partition_reports)
        self.partitions: list[dict[str, Any]] = []

    def _cut(self, fault: Fault, elapsed: float, queue: list[Fault]) -> None:
        assert self.net is not None and fault.groups is not None
        if self.partitions and self.partitions[-1]["healed_at_s"] is None:
            self._heal(elapsed)
        self.net.cut(fault.groups)
        # Snapshots after the cut and before the heal: "during" holds only exchanges that ran
        # while the cut was in place.
        self.partitions.append({"fault": fault.describe(), "groups": fault.groups,
                                "cut_at_s": round(elapsed, 2), "healed_at_s": None,
                                "counts": {"cut": peer_counts(self.nodes)}})
        if fault.duration is not None:
            heapq.heappush(queue, Fault(at=fault.at + fault.duration, seq=fault.seq,
                                        action="heal", node=-1, auto=True))

    def _heal(self, elapsed: float) -> bool:
        assert self.net is not None
        if not self.partitions or self.partitions[-1]["healed_at_s"] is not None:
            return False
        part = self.partitions[-1]
        part["counts"]["heal"] = peer_counts(self.nodes)
        self.net.heal()
        part["healed_at_s"] = round(elapsed, 2)
        return True

    def finish(self) -> None:
        """The end of the run: the last snapshot of the peer tables (the 'after' counts)."""
        if self.partitions:
            end = peer_counts(self.nodes)
            for part in self.partitions:
                part["counts"].setdefault("heal", end)
                part["counts"]["end"] = end

    def _record(self, fault: Fault, elapsed: float, note: str | None = None) -> None:
        entry: dict[str, Any] = {"fault": fault.describe(), "action": fault.action,
                                 "node": fault.node, "at_s": round(elapsed, 1)}
        if fault.groups is not None:  # (node: what report.py prints next to the fault's line)
            entry.update(groups=fault.groups, node=netns.format_groups(fault.groups))
        elif fault.action == "heal":
            entry["node"] = "all"
        if fault.duration is not None:
            entry["duration_s"] = fault.duration
        if fault.auto:
            entry["auto"] = True
        if note:
            entry["skipped"] = note
        self.applied.append(entry)
        print(f"testnet: {fault.describe()} at {elapsed:.0f} s"
              + (f": skipped, {note}" if note else ""), flush=True)

    def apply(self, fault: Fault, elapsed: float, queue: list[Fault]) -> None:
        if fault.action == "partition":
            self._cut(fault, elapsed, queue)
            return self._record(fault, elapsed)
        if fault.action == "heal":
            healed = self._heal(elapsed)
            return self._record(fault, elapsed, None if healed else "no partition in place")
        n = self.nodes[fault.node]
        alive = n.proc.poll() is None and not (n.killed or n.stopped)
        if fault.action == "kill":
            if not alive:
                return self._record(fault, elapsed, "node is not running")
            self.collector.pull_history(n)
            n.proc.kill()  # SIGKILL also ends a stopped process
            n.proc.wait()
            n.killed, n.paused, n.starting = True, False, False
            poll_status(self.nodes)
            if self.kill_record is None:
                self.kill_record = {
                    "node": fault.node, "at_s": round(elapsed, 1),
                    "exchanges_ok_at_kill": {
                        m.index: m.status.get("exchanges_ok", 0) for m in self.nodes
                        if not m.killed},
                    "step_at_kill": {m.index: m.status.get("step", 0) for m in self.nodes
                                     if not m.killed},
                }
        elif fault.action in ("stop", "restart"):
            if alive:
                self.collector.pull_history(n)
                n.paused = False
                if not stop_process(n.spec, n.proc):
                    print(f"testnet: node {n.index} needed SIGKILL to stop", flush=True)
                if n.proc.returncode != 0:
                    n.early_exits.append(n.proc.returncode)
            elif fault.action == "stop":
                return self._record(fault, elapsed, "node is not running")
            if fault.action == "stop":
                n.stopped = True
            else:
                n.proc = launch(n.spec, own_session=False)
                n.inc_start_s = elapsed
                self.collector.new_incarnation(n)
                n.killed = n.stopped = n.paused = False
                n.starting = True
        elif fault.action == "pause":
            if not alive or n.paused or n.starting:
                return self._record(fault, elapsed, "node is not running")
            self.collector.pull_history(n)
            n.proc.send_signal(signal.SIGSTOP)
            n.paused = True
            if fault.duration is not None:
                heapq.heappush(queue, Fault(at=fault.at + fault.duration, seq=fault.seq,
                                            action="resume", node=fault.node, auto=True))
        elif fault.action == "resume":
            if not n.paused:
                return self._record(fault, elapsed, "node is not paused")
            if n.proc.poll() is None:
                n.proc.send_signal(signal.SIGCONT)
            n.paused = False
        self._record(fault, elapsed)
        return None

    def check(self) -> None:
        """Raise if a node exited that the schedule did not stop; mark restarted nodes ready."""
        for n in self.nodes:
            if n.killed or n.stopped:
                continue
            if n.proc.poll() is not None:
                raise RuntimeError(f"node {n.index} exited early with {n.proc.returncode}:\n"
                                   f"{log_tail(n.spec)}")
            if n.starting:
                status = ready_status(n.spec)
                if status is not None:
                    n.status, n.starting = status, False
                    print(f"testnet: node {n.index} is back (pid {n.spec.pid})", flush=True)


def run(args: argparse.Namespace) -> int:
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.netns:
        return run_nodes(args, None)
    why = netns.available()
    if why is not None:
        print(f"testnet: --netns: {why}", file=sys.stderr)
        return 2
    # The namespaces go whatever happens: the nodes in them are stopped first (run_nodes), and
    # up_network removes them on any exit, Ctrl-C and SIGTERM included.
    with netns.up_network(args.nodes, args.out / NETNS_STATE) as net:
        print(f"testnet: network namespaces {net.ns(0)}..{net.ns(args.nodes - 1)} "
              f"({net.addr(0)}..{net.addr(args.nodes - 1)}, bridge in {net.bridge_ns})",
              flush=True)
        return run_nodes(args, net)


def run_nodes(args: argparse.Namespace, net: netns.Network | None) -> int:
    faults = parse_faults(args)
    heapq.heapify(faults)
    sockdir = Path(tempfile.mkdtemp(prefix="gtn-"))
    nodes: list[RunNode] = []
    ok = True
    wall0 = time.time()
    launched_ms = int(wall0 * 1000)  # receipts from before (a reused --out) are not this run's
    stopped_ms: int | None = None
    collector = Collector(nodes, wall0)
    state = RunState(nodes, collector, net)
    try:
        t0 = time.monotonic()
        specs = plan_nodes(args, args.out, sockdir, net)
        nodes += [RunNode(s, launch(s, own_session=False)) for s in specs]
        statuses = wait_ready_specs(specs, {n.index: n.proc for n in nodes},
                                    t0 + args.ready_timeout)
        for n in nodes:
            n.status = statuses[n.index]
        print(f"testnet: {args.nodes} nodes ready in {time.monotonic() - t0:.1f} s; "
              f"running {args.seconds:g} s ({'local-only' if args.local_only else 'gossip'}, "
              f"{args.partition}); logs in {args.out}", flush=True)
        start = time.monotonic()
        collector.wall0 = wall0 = time.time()
        next_report = next_sample = start
        while (elapsed := time.monotonic() - start) < args.seconds:
            while faults and faults[0].at <= elapsed:
                state.apply(heapq.heappop(faults), elapsed, faults)
            state.check()
            now = time.monotonic()
            if now >= next_sample:
                collector.sample_rss(elapsed)
                collector.sample_params(elapsed)
                next_sample += args.sample_every
            if now >= next_report:
                poll_status(nodes)
                collector.pull_all()
                print(progress_line(nodes, elapsed), flush=True)
                next_report += args.report_every
            time.sleep(0.1)
        # The end: a paused node is continued and a restarting one waited for, so that every
        # node the schedule did not take down answers the final collection.
        for n in nodes:
            if n.paused and n.proc.poll() is None:
                n.proc.send_signal(signal.SIGCONT)
                n.paused = False
        deadline = time.monotonic() + args.ready_timeout
        while any(n.starting for n in nodes):
            state.check()
            if time.monotonic() > deadline:
                raise RuntimeError("a restarted node did not come back in time")
            time.sleep(0.1)
        collector.sample_rss(time.monotonic() - start)
        collector.sample_params(time.monotonic() - start)
        collector.pull_all()
        state.finish()
        for n in nodes:
            if not n.up:
                continue
            n.status = request(Path(n.spec.socket), "status", timeout=10)
            n.params = request(Path(n.spec.socket), "params", timeout=10)
    except (RuntimeError, ControlError, netns.NetnsError) as exc:
        print(f"testnet: {exc}", file=sys.stderr)
        ok = False
    finally:
        stopped_ms = int(time.time() * 1000)
        stop_all(nodes)
        left = leftovers(nodes)
        shutil.rmtree(sockdir, ignore_errors=True)
        if net is not None:
            left["netns_left"] = net.down()
    evaluator = Evaluator(args)
    final = {n.index: decode_params(n.params["data"]) for n in nodes if n.params is not None}
    results = evaluator.measure(final) if ok else evaluator.measure({})
    rows = []
    for n in nodes:
        s = n.status
        rows.append({
            "index": n.index, "peer_id": s.get("peer_id"),
            "accuracy": results["node_accuracy"].get(n.index),
            "reported_accuracy": s.get("accuracy"), "step": s.get("step", 0),
            "bytes_sent": s.get("bytes_sent", 0), "bytes_received": s.get("bytes_received", 0),
            "exchanges_ok": s.get("exchanges_ok", 0),
            "exchanges_failed": s.get("exchanges_failed", 0),
            "exchanges_served_ok": s.get("exchanges_served_ok", 0),
            "known_peers": len(s.get("known_peers", [])), "killed": n.killed,
            "stopped": n.stopped, "incarnations": n.spec.incarnations,
            "exit_code": n.exit_code if not (n.killed or n.stopped) else n.proc.returncode,
            "early_exits": n.early_exits, "polls_unanswered": n.unanswered,
            "stop_s": n.stop_s, "hang_stack": n.hang_stack,
            **rss_summary(n, args.seconds), **exchange_summary(n),
        })
    accs = [r["accuracy"] for r in rows if r["accuracy"] is not None]
    # "accuracy" holds the task's score; for a lower-is-better one (perplexity) the worst
    # node is the highest, and min_node_accuracy holds that worst value.
    worst = min if evaluator.trainer.higher_is_better else max
    summary = {
        "nodes": rows, "avg_model_accuracy": results["avg_model_accuracy"],
        "metric": evaluator.metric, "higher_is_better": evaluator.trainer.higher_is_better,
        "consensus_distance": results["consensus_distance"] or 0.0,
        "mean_node_accuracy": sum(accs) / len(accs) if accs else 0.0,
        "min_node_accuracy": worst(accs) if accs else 0.0,
        "local_only": args.local_only, "partition": args.partition, "task": args.task,
        "seed": args.seed, "seconds": args.seconds, "leftovers": left,
        "kill": state.kill_record, "faults": state.applied, "ok": ok,
    }
    clean = all(r["exit_code"] == 0 for r in rows if not r["killed"])
    clean = clean and not any(n.early_exits for n in nodes)
    summary["provenance"] = prov = provenance_check(args.out, nodes, state.applied,
                                                    launched_ms, wall0, stopped_ms)
    summary["ok"] = ok = ok and clean and not any(left.values()) and prov["ok"]
    if net is None:
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    series = timeseries(args, collector, evaluator, state.applied, wall0)
    if net is not None:
        summary["netns"] = {"prefix": net.prefix, "addresses": [net.addr(i)
                                                                for i in range(args.nodes)]}
        summary["partitions"] = partition_reports(state.partitions, series["polls"],
                                                  args.seconds, args.nodes)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    (args.out / "timeseries.json").write_text(json.dumps(series))
    print_table(summary)
    print_provenance(summary["provenance"])
    for part in summary.get("partitions", []):
        print_partition(part)
    try:
        import report

        written = report.write_report(args.out, summary, series)
    except Exception:
        traceback.print_exc()
        print("testnet: writing the report failed", file=sys.stderr)
        return 1
    print(f"report: {', '.join(str(p.relative_to(args.out)) for p in written)} in {args.out}")
    return 0 if ok else 1


def provenance_check(out: Path, nodes: list[RunNode], applied: list[dict[str, Any]],
                     launched_ms: int, start_wall: float, stopped_ms: int | None
                     ) -> dict[str, Any]:
    """Every node's ledger verifies (links, signatures, both signatures of every receipt), and
    every receipt of this run is on both peers' ledgers, identically signed
    (scripts/check_ledgers.py). Excused: the receipt of an exchange a fault or the final stop
    cut, which one side finished and the other did not (started within the exchange deadline
    before a fault, during one, or before the stop), and the unsealed tail of a node whose last
    incarnation was SIGKILLed."""
    import check_ledgers

    from gossipd.config import ConfigError
    from gossipd.config import load as load_config

    try:
        grace_ms = int(max(load_config(Path(n.spec.config)).averaging.timeout_s
                           for n in nodes) * 1000)
    except (ConfigError, OSError, ValueError):
        grace_ms = 10_000
    windows = []
    for f in applied:
        if f.get("skipped"):
            continue
        at_ms = int((start_wall + f["at_s"]) * 1000)
        windows.append((at_ms - grace_ms, at_ms + int(f.get("duration_s", 0) * 1000) + grace_ms))
    if stopped_ms is not None:
        windows.append((stopped_ms - grace_ms, 2**63 - 1))
    result = check_ledgers.check(out, {f"node{n.index}" for n in nodes}, launched_ms)
    killed = {f"node{n.index}" for n in nodes if n.killed}
    ok = check_ledgers.judge(result, killed, windows)
    rows = result["nodes"].values()
    receipts = sum(r["receipts"] for r in rows)
    unmatched = result["receipts_unmatched"]
    return {
        "ok": ok, "ledgers": len(rows), "verified": sum(bool(r["ok"]) for r in rows),
        "errors": {k: r["error"] for k, r in result["nodes"].items() if r["error"]},
        "receipts_matched": result["receipts_matched"],
        "receipts_with_outsiders": result["receipts_with_outsiders"],  # no ledger to check
        "receipts_unmatched": len(unmatched),
        "unmatched_excused": sum(u["excused"] is not None for u in unmatched),
        "unmatched": unmatched[:20],
        # vectors each node merged from each other node during the run (report.py draws it)
        "merged": {k: r["merged_from"] for k, r in result["nodes"].items()},
        "ledger_bytes": sum(r["bytes"] for r in rows),
        "bytes_per_receipt": round(sum(r["bytes"] for r in rows) / max(1, receipts)),
    }


def print_provenance(prov: dict[str, Any]) -> None:
    excused = (f" ({prov['unmatched_excused']} cut by a fault or the stop)"
               if prov["unmatched_excused"] else "")
    print(f"provenance {prov['verified']}/{prov['ledgers']} ledgers verify   "
          f"{prov['receipts_matched']} receipts on both peers, identically signed   "
          f"unmatched {prov['receipts_unmatched']}{excused}   "
          f"{prov['bytes_per_receipt']} ledger bytes per receipt")
    for name, error in prov["errors"].items():
        print(f"provenance {name}: {error}")
    for u in prov["unmatched"]:
        if u["excused"] is None:
            print(f"provenance exchange {u['exchange_id']}: on {u['found_on']}, expected on "
                  f"{u['expected_on']}{'' if u['identical'] else ', the copies differ'}")


def rss_summary(n: RunNode, seconds: float) -> dict[str, Any]:
    """Resident memory of the node: the first sample after a warm-up (the first quarter of its
    last incarnation's time in the run: of the run for a node that never restarted), the last
    and the largest sample, and the growth from the first to the last, in per cent."""
    last_inc = max((int(r[2]) for r in n.rss), default=0)
    rows = [r for r in n.rss if int(r[2]) == last_inc]
    warm = n.inc_start_s + 0.25 * max(0.0, seconds - n.inc_start_s)
    after = [r for r in rows if r[0] >= warm] or rows[-1:]
    if not after:
        return {"rss_first_mb": None, "rss_last_mb": None, "rss_max_mb": None,
                "growth_pct": None, "rss_warm_s": None, "rss_samples": 0}
    first, last = after[0][1], after[-1][1]
    return {"rss_first_mb": first, "rss_last_mb": last,
            "rss_max_mb": max(r[1] for r in n.rss), "rss_warm_s": after[0][0],
            "growth_pct": round(100.0 * (last - first) / first, 2) if first else None,
            "rss_samples": len(n.rss), "rss_incarnation": last_inc,
            "rss_since_s": round(n.inc_start_s, 2)}


def exchange_summary(n: RunNode) -> dict[str, Any]:
    """Exchange durations and outcomes over all the node's incarnations (from its metrics
    histogram: the longest exchange lies in (exchange_max_gt_s, exchange_max_le_s]; None as
    the upper bound: beyond the top bucket), and its last deadline."""
    outcomes: dict[str, int] = {}
    max_le: float | None = 0.0
    max_gt = 0.0
    for m in n.metrics.values():
        for k, v in m["outcomes"].items():
            outcomes[k] = outcomes.get(k, 0) + int(v)
        max_gt = max(max_gt, float(m["max_gt_s"]))
        max_le = None if (max_le is None or m["max_le_s"] is None) else max(max_le,
                                                                             m["max_le_s"])
    return {"exchange_deadline_s": n.status.get("exchange_deadline_s"),
            "exchange_seconds_mean": n.status.get("exchange_seconds_mean"),
            "exchange_max_gt_s": max_gt if n.metrics else None,
            "exchange_max_le_s": max_le if n.metrics else None,
            "exchanges_timed_out": outcomes.get("timeout", 0) if n.metrics else None,
            "exchange_outcomes": outcomes}


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    v = sorted(values)
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


def partition_reports(partitions: list[dict[str, Any]], polls: list[dict[str, Any]],
                      seconds: float, nodes: int) -> list[dict[str, Any]]:
    """Per partition: exchange counts across and within the cut while it was in place and after
    the heal, and the consensus distance (of the polled parameters) before, during and after.

    Windows: "before" the last min(30 s, time to the cut) before the cut; "during" the second
    half of the cut (the split's steady state; "during_max" the whole cut's worst); "after" the
    last min(30 s, time since the heal) of the run. "recovered_after_s": seconds from the heal to
    the first poll at or below the worst "before" value."""
    out = []
    for part in partitions:
        cut = float(part["cut_at_s"])
        healed = part["healed_at_s"]
        heal = float(seconds if healed is None else healed)
        counts = part["counts"]

        def cds(lo: float, hi: float) -> list[float]:
            return [float(p["consensus_distance"]) for p in polls
                    if lo <= p["t"] < hi and p.get("consensus_distance") is not None]

        w_before = min(30.0, cut)
        w_after = min(30.0, max(0.0, seconds - heal))
        before = cds(cut - w_before, cut)
        during_all = cds(cut, heal)
        during = cds(cut + (heal - cut) / 2, heal)
        after = cds(seconds - w_after, math.inf) if healed is not None else []
        recovered = None
        if before and healed is not None:
            level = max(before)
            for p in polls:
                cd = p.get("consensus_distance")
                if p["t"] >= heal and cd is not None and cd <= level:
                    recovered = round(p["t"] - heal, 2)
                    break
        out.append({
            "fault": part["fault"], "groups": part["groups"], "cut_at_s": cut,
            "healed_at_s": healed,
            "exchanges_during": count_delta(counts["cut"], counts["heal"], part["groups"], nodes),
            "exchanges_after": count_delta(counts["heal"], counts["end"], part["groups"], nodes),
            "consensus": {
                "before": _median(before), "during": _median(during),
                "during_max": max(during_all) if during_all else None,
                "after": _median(after), "recovered_after_s": recovered,
                "windows_s": {"before": [cut - w_before, cut],
                              "during": [cut + (heal - cut) / 2, heal],
                              "after": [seconds - w_after, seconds]},
            },
        })
    return out


def print_partition(part: dict[str, Any]) -> None:
    def g(v: float | None) -> str:
        return "-" if v is None else f"{v:.3g}"

    c = part["consensus"]
    rec = c["recovered_after_s"]
    back = "never" if rec is None else f"{rec:g} s after the heal"
    d, a = part["exchanges_during"], part["exchanges_after"]
    print(f"partition {part['fault']}: cut {part['cut_at_s']:g} s, healed "
          f"{'never' if part['healed_at_s'] is None else str(part['healed_at_s']) + ' s'}; "
          f"across the cut: during {d['cross_ok']} ok {d['cross_failed']} failed, after "
          f"{a['cross_ok']} ok {a['cross_failed']} failed; within groups during: "
          f"{d['within_ok']} ok")
    print(f"  consensus distance: before {g(c['before'])}  during {g(c['during'])} "
          f"(max {g(c['during_max'])})  after {g(c['after'])}  back to the pre-cut level: "
          f"{back}")


def timeseries(args: argparse.Namespace, collector: Collector, evaluator: Evaluator,
               faults: list[dict[str, Any]], wall0: float) -> dict[str, Any]:
    """Evaluate the polled parameters (all nodes at the same moments) and bundle the node
    histories: the input of scripts/report.py."""
    polls = []
    num_params = None
    for p in collector.polls:
        vectors = {i: decode_params(d) for i, d in p["vectors"].items()}
        num_params = num_params or len(next(iter(vectors.values())))
        polls.append({"t": p["t"], "steps": p["steps"], **evaluator.measure(vectors)})
    return {
        "nodes": args.nodes, "seconds": args.seconds, "started_wall": wall0,
        "num_params": num_params, "sample_every_s": args.sample_every,
        "local_only": args.local_only, "partition": args.partition,
        "faults": faults, "polls": polls,
        "history": {n.index: n.history for n in collector.nodes},
        "rss_mb": {n.index: n.rss for n in collector.nodes},
    }


# ---------------------------------------------------------------------------------------------
# up / status / kill / restart / pause / resume / down


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """One testnet command at a time per directory."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_FILE, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load_state(directory: Path) -> dict[str, Any] | None:
    path = directory / STATE_FILE
    if not path.exists():
        return None
    state: dict[str, Any] = json.loads(path.read_text())
    state["nodes"] = [NodeSpec(**n) for n in state["nodes"]]
    return state


def save_state(directory: Path, state: dict[str, Any]) -> None:
    data = {**state, "nodes": [asdict(n) for n in state["nodes"]]}
    tmp = directory / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(directory / STATE_FILE)


def need_state(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    directory = args.dir.resolve()
    state = load_state(directory)
    if state is None:
        print(f"testnet: no testnet in {directory} (no {STATE_FILE}; start one with "
              f"`testnet.py up --dir {args.dir}`)", file=sys.stderr)
        raise SystemExit(2)
    return directory, state


def need_node(state: dict[str, Any], index: int) -> NodeSpec:
    nodes: list[NodeSpec] = state["nodes"]
    if not 0 <= index < len(nodes):
        print(f"testnet: no node {index} (nodes 0..{len(nodes) - 1})", file=sys.stderr)
        raise SystemExit(2)
    return nodes[index]


def cmd_up(args: argparse.Namespace) -> int:
    directory = args.dir.resolve()
    with locked(directory):
        old = load_state(directory)
        if old is not None:
            live = [n.index for n in old["nodes"] if proc_state(n) != "gone"]
            if live:
                print(f"testnet: {directory} already runs nodes {live}; "
                      f"`testnet.py down --dir {args.dir}` first", file=sys.stderr)
                return 1
            old_net = old.get("netns")
            if old_net and Path(old_net).exists():  # a namespace set its nodes left behind
                netns.Network.load(Path(old_net)).down()
        net: netns.Network | None = None
        if args.netns:
            why = netns.available()
            if why is not None:
                print(f"testnet: --netns: {why}", file=sys.stderr)
                return 2
            net = netns.Network(args.nodes, directory / NETNS_STATE)
            net.up()  # recorded in DIR/netns.json from the first namespace on
        sockdir = Path(tempfile.mkdtemp(prefix="gtn-"))
        specs = plan_nodes(args, directory, sockdir, net)
        state: dict[str, Any] = {
            "version": 1, "dir": str(directory), "socket_dir": str(sockdir),
            "seed": args.seed, "task": args.task, "partition": args.partition,
            "local_only": args.local_only, "bootstrap": args.bootstrap,
            "created_wall": time.time(), "down": False, "nodes": specs,
            "netns": None if net is None else str(net.state_file),
        }
        t0 = time.monotonic()
        procs = {}
        try:
            for s in specs:
                procs[s.index] = launch(s, own_session=True)
        finally:
            save_state(directory, state)  # whatever started must be findable by `down`
        try:
            statuses = wait_ready_specs(specs, procs, t0 + READY_TIMEOUT_S)
        except (RuntimeError, KeyboardInterrupt) as exc:
            if net is None and isinstance(exc, KeyboardInterrupt):
                raise  # the nodes are recorded: `down` stops them
            print(f"testnet: {str(exc) or type(exc).__name__}", file=sys.stderr)
            for s in specs:
                stop_process(s, procs[s.index])
                s.state = "stopped"
            shutil.rmtree(sockdir, ignore_errors=True)
            if net is not None:
                net.down()
            state["down"] = True
            save_state(directory, state)
            return 1
        print(f"testnet: {len(specs)} nodes up in {time.monotonic() - t0:.1f} s; "
              f"state in {directory / STATE_FILE}")
        for s in specs:
            print(f"  node {s.index}  pid {s.pid:<7} {s.addr}  socket {s.socket}  "
                  f"shard {statuses[s.index]['shard']}")
        return 0


def node_row(spec: NodeSpec) -> dict[str, Any]:
    live = proc_state(spec)
    row: dict[str, Any] = {"index": spec.index, "pid": spec.pid, "port": spec.port,
                           "peer_id": spec.peer_id, "recorded": spec.state,
                           "process": live, "answering": False,
                           "incarnations": spec.incarnations}
    if live == "running":
        try:
            s = request(Path(spec.socket), "status", timeout=3)
        except ControlError as exc:
            row["error"] = str(exc)
        else:
            row.update(answering=True, step=s["step"], accuracy=s["accuracy"],
                       live_peers=s["live_peers"], known_peers=len(s["known_peers"]),
                       exchanges_ok=s["exchanges_ok"], exchanges_failed=s["exchanges_failed"],
                       uptime_s=s["uptime_s"], training=s["training"])
    return row


def cmd_status(args: argparse.Namespace) -> int:
    directory, state = need_state(args)
    with locked(directory):
        rows = [node_row(n) for n in state["nodes"]]
    if args.json:
        print(json.dumps({"dir": str(directory), "down": state["down"], "nodes": rows},
                         indent=2))
    else:
        print(f"{'node':<5} {'pid':>7} {'process':<8} {'port':>6} {'step':>6} {'accuracy':>8} "
              f"{'peers':>6} {'ex ok':>6} {'ex fail':>7} {'uptime':>7}")
        for r in rows:
            acc = r.get("accuracy")
            up = r.get("uptime_s")
            print(f"{r['index']:<5} {r['pid']!s:>7} {r['process']:<8} {r['port']:>6} "
                  f"{r.get('step', '-')!s:>6} {'-' if acc is None else f'{acc:.4f}':>8} "
                  f"{r.get('live_peers', '-')!s:>6} {r.get('exchanges_ok', '-')!s:>6} "
                  f"{r.get('exchanges_failed', '-')!s:>7} "
                  f"{'-' if up is None else f'{up:.0f}s':>7}")
    # Healthy: every node that should run runs and answers; paused nodes are what was asked.
    bad = [r for r in rows if (r["recorded"] == "running" and not r["answering"])
           or (r["recorded"] == "paused" and r["process"] != "paused")]
    return 1 if bad else 0


def cmd_signal(args: argparse.Namespace) -> int:
    """kill (SIGKILL), pause (SIGSTOP), resume (SIGCONT) one node."""
    directory, state = need_state(args)
    sig, new_state = {"kill": (signal.SIGKILL, "killed"), "pause": (signal.SIGSTOP, "paused"),
                      "resume": (signal.SIGCONT, "running")}[args.command]
    with locked(directory):
        spec = need_node(state, args.node)
        live = proc_state(spec)
        if live == "gone":
            print(f"testnet: node {spec.index} is not running (pid {spec.pid}: "
                  f"{spec.state})", file=sys.stderr)
            return 1
        if not signal_node(spec, sig):
            print(f"testnet: node {spec.index} (pid {spec.pid}) vanished", file=sys.stderr)
            return 1
        want = {"killed": "gone", "paused": "paused", "running": "running"}[new_state]
        deadline = time.monotonic() + 5.0
        while proc_state(spec) != want and time.monotonic() < deadline:
            time.sleep(0.02)
        spec.state = new_state
        save_state(directory, state)
        print(f"testnet: node {spec.index} (pid {spec.pid}) {new_state} ({sig.name})")
        return 0 if proc_state(spec) == want else 1


def cmd_restart(args: argparse.Namespace) -> int:
    directory, state = need_state(args)
    with locked(directory):
        spec = need_node(state, args.node)
        if state.get("down"):
            print("testnet: this testnet is down; `testnet.py up` starts a new one",
                  file=sys.stderr)
            return 1
        clean = True
        if proc_state(spec) != "gone":
            clean = stop_process(spec)
        t0 = time.monotonic()
        proc = launch(spec, own_session=True)
        save_state(directory, state)
        try:
            wait_ready_specs([spec], {spec.index: proc}, t0 + READY_TIMEOUT_S)
        except RuntimeError as exc:
            print(f"testnet: {exc}", file=sys.stderr)
            spec.state = "exited" if proc.poll() is not None else spec.state
            save_state(directory, state)
            return 1
        print(f"testnet: node {spec.index} restarted (pid {spec.pid}, port {spec.port}, "
              f"same key and state dir) and ready in {time.monotonic() - t0:.1f} s"
              + ("" if clean else "; the old process needed SIGKILL"))
        return 0 if clean else 1


def cmd_net(args: argparse.Namespace) -> int:
    """partition GROUPS / heal: cut or heal the network of a testnet started with up --netns."""
    directory, state = need_state(args)
    with locked(directory):
        path = Path(state["netns"]) if state.get("netns") else None
        if path is None or not path.exists() or state.get("down"):
            print("testnet: this testnet has no network namespaces (start it with "
                  "`up --netns`)", file=sys.stderr)
            return 2
        net = netns.Network.load(path)
        if args.command == "heal":
            net.heal()
            print("testnet: healed: one network again")
            return 0
        try:
            groups = netns.parse_groups(args.groups, net.nodes)
        except ValueError as exc:
            print(f"testnet: {exc}", file=sys.stderr)
            return 2
        net.cut(groups)
        print(f"testnet: partitioned into {netns.format_groups(groups)}")
        return 0


def cmd_down(args: argparse.Namespace) -> int:
    directory, state = need_state(args)
    with locked(directory):
        specs: list[NodeSpec] = state["nodes"]
        running = [s for s in specs if proc_state(s) != "gone"]
        for s in running:
            signal_node(s, signal.SIGCONT)
            signal_node(s, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        forced = []
        for s in running:
            if not wait_gone(s, max(0.0, deadline - time.monotonic())):
                signal_node(s, signal.SIGKILL)
                wait_gone(s, 5.0)
                forced.append(s.index)
        for s in specs:
            if s in running:
                s.state = "stopped"
        # A node SIGKILLed earlier leaves its socket file; it is ours to remove with the dir.
        left = {
            "processes_alive": [s.pid for s in specs if proc_state(s) != "gone"],
            "ports_listening": [s.port for s in specs if node_listening(s)],
        }
        shutil.rmtree(state["socket_dir"], ignore_errors=True)
        left["sockets_left"] = [s.socket for s in specs if Path(s.socket).exists()]
        if state.get("netns"):
            path = Path(state["netns"])
            left["netns_left"] = netns.Network.load(path).down() if path.exists() else []
        state["down"] = True
        save_state(directory, state)
    print(f"testnet: stopped {len(running)} node(s)"
          + (f"; SIGKILL needed for {forced}" if forced else "") + f"; leftovers {left}")
    return 0 if not forced and not any(left.values()) else 1


# ---------------------------------------------------------------------------------------------


def _add_node_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--task", default="digits-mlp")
    p.add_argument("--partition", default="iid", help="iid | dirichlet:ALPHA")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--local-only", action="store_true", help="averaging off (the baseline)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a node config key, e.g. averaging.interval_s=0.3")
    p.add_argument("--node-set", action="append", default=[], metavar="I:SECTION.KEY=VALUE",
                   help="override a config key of node I only (after --set), e.g. "
                   "7:averaging.attack=\"signflip\"; repeatable")
    p.add_argument("--extra-member", action="append", default=[], metavar="PEER_ID",
                   help="one more swarm member besides the N nodes (an outside test peer)")
    p.add_argument("--log-level", default="info")
    p.add_argument("--open-swarm", action="store_true",
                   help="no member allowlist (swarm.open = true); default: closed to the N nodes")
    p.add_argument("--bootstrap", choices=("first", "all"), default="first",
                   help="bootstrap peers of each node: node 0 only (default) or all others")
    p.add_argument("--netns", action="store_true",
                   help="run every node in its own network namespace on a private bridge "
                   "(10.77.0.I+1, port 4001; root only; scripts/netns.py): partitions possible")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="testnet.py", description="Run a local multi-process gossipd testnet on 127.0.0.1.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="start N nodes, run S seconds, collect, stop, summarise")
    _add_node_options(p)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--fault", action="append", default=[], metavar="ACTION:NODE@S[+D]",
                   help="at S seconds: kill (SIGKILL), stop (SIGTERM), restart (same key, state "
                   "and port), pause (SIGSTOP; +D: SIGCONT D seconds later) or resume a node; "
                   "with --netns also partition:GROUPS@S[+D] (e.g. partition:0-3/4-7@60+300: "
                   "cut, heal D seconds later; cut: is the same) and heal@S; "
                   "repeatable, e.g. --fault kill:3@30 --fault restart:3@50")
    p.add_argument("--kill", help="SIGKILL node I at S seconds, e.g. 2@20 (= --fault kill:I@S)")
    p.add_argument("--report-every", type=float, default=10.0, help="progress line period (s)")
    p.add_argument("--ready-timeout", type=float, default=READY_TIMEOUT_S,
                   help="seconds every node may take to answer after its start (default "
                   f"{READY_TIMEOUT_S:g}; many nodes on few cores start slowly)")
    p.add_argument("--sample-every", type=float, default=2.0,
                   help="period (s) of the parameter polls behind the accuracy/consensus plots")
    p = sub.add_parser("up", help="start N nodes and leave them running (state in DIR)")
    _add_node_options(p)
    p.add_argument("--dir", type=Path, required=True, help="testnet directory")
    p = sub.add_parser("status", help="pid, state, step, accuracy, peers of every node")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--json", action="store_true")
    for name, text in (("kill", "SIGKILL a node"), ("pause", "SIGSTOP a node"),
                       ("resume", "SIGCONT a paused node"),
                       ("restart", "stop a node if it runs and start it again (same key, "
                        "state dir and port)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("node", type=int)
        p.add_argument("--dir", type=Path, required=True)
    p = sub.add_parser("partition", help="cut the network of an `up --netns` testnet into "
                       "groups, e.g. 0-1/2-3")
    p.add_argument("groups")
    p.add_argument("--dir", type=Path, required=True)
    p = sub.add_parser("heal", help="undo `partition`")
    p.add_argument("--dir", type=Path, required=True)
    p = sub.add_parser("down", help="stop every node of the testnet and remove its sockets "
                       "(and its network namespaces)")
    p.add_argument("--dir", type=Path, required=True)
    p = sub.add_parser("dashboard", help="serve the live testnet page (peer graph, every "
                       "node's curves, the averaged model) for a testnet started with `up`")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--port", type=int, default=0, help="loopback port (default: any free one)")
    args = parser.parse_args(argv)
    if args.command in ("run", "up") and args.nodes < 1:
        parser.error("--nodes must be >= 1")
    if args.command == "run":
        try:
            parse_faults(args)
        except ValueError as exc:
            parser.error(str(exc))
        return run(args)
    if args.command == "up":
        return cmd_up(args)
    if args.command == "status":
        return cmd_status(args)
    if args.command == "restart":
        return cmd_restart(args)
    if args.command == "down":
        return cmd_down(args)
    if args.command in ("partition", "heal"):
        return cmd_net(args)
    if args.command == "dashboard":
        return cmd_dashboard(args)
    return cmd_signal(args)


def cmd_dashboard(args: argparse.Namespace) -> int:
    """The swarm dashboard (gossipd/dashboard.py) over the nodes recorded in DIR/testnet.json;
    prints the URL and serves until Ctrl-C."""
    import trio

    from gossipd.dashboard import run_swarm_dashboard

    _directory, state = need_state(args)
    sockets = {f"n{n.index}": Path(n.socket) for n in state["nodes"]}

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(run_swarm_dashboard, sockets, request, "127.0.0.1",
                                       args.port)
            print(f"testnet dashboard: http://127.0.0.1:{port}/  (Ctrl-C stops it)", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(serve)
    return 0


if __name__ == "__main__":
    sys.exit(main())
