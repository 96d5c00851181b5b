#!/usr/bin/env python3
"""Exchange throughput: gossipd's averaging exchange over libp2p against the same exchange over
plain TCP, and training speed while exchanges run.

    scripts/bench_exchange.py [--sizes 1,10,100] [--repeat 5] [--train-seconds 6] [--json]

Two OS processes on 127.0.0.1: this one (the initiator) and a peer it starts (`--serve`, the
responder). Separate processes, not two trio tasks in one, because each node of a real exchange
has its own interpreter: in one process both ends would share one GIL and one event loop, and
the Python costs of both sides would add up on one core.

For each payload size (MiB of float32 parameters, both directions at once, push-pull), the two
paths run alternately in the same two processes, --repeat times each:

  * libp2p: gossipd.exchange.initiate/respond over gossipd.transport (TCP + Noise + yamux, one
    connection, one stream per exchange) - what the daemon does;
  * tcp: the same initiate/respond (same Hello handshake, framing, secretstream encryption and
    merge) over a plain trio TCP socket, one connection per exchange.

MB/s = payload bytes per direction (10**6 bytes per second) / wall time of initiate(), handshake
and merge included; best of --repeat. ratio = libp2p MB/s / tcp MB/s (target >= 0.5 at 100 MiB).
CPU s = process CPU time (time.process_time) of both processes for one exchange, mean of the
runs. Each run checks that both sides end at the pair's mean, bit-identical.

Training: a ModelRunner driving the digits-mlp Trainer in this process, --train-seconds each
with three loads running back to back with the peer: none; exchanges of the runner's own
parameters, merged into training with the runner's merge rule (the daemon's case, always an
exchange in flight); exchanges of 10 MiB of other parameters (a large exchange in flight all the
time). steps/s is measured between chunk completions after a warm-up (JIT). --train-sps sets
the runner's pace (default 1000 steps/s, 50x the daemon's default and a few per cent of what one
core does unpaced); a pace above what the machine can do (e.g. 100000) measures unpaced
throughput instead, where training (XLA uses both cores), the exchanges and the peer process
compete for the same two cores. Target: with/without >= 0.95 for the runner's own exchanges.

Exit status 0 whether or not the targets are met (this is a measurement); 1 when an exchange
failed or ended at the wrong parameters.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import math
import os
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import trio  # noqa: E402

from gossipd import exchange  # noqa: E402
from gossipd.mixing import merge  # noqa: E402
from gossipd.netapi import Stream, TransportError  # noqa: E402
from gossipd.transport import Libp2pTransport, open_transport  # noqa: E402
from protocol.messages import AVG_PROTOCOL_ID  # noqa: E402

MIB = 1 << 20
SEEDS = (bytes([0x11]) * 32, bytes([0x22]) * 32)  # initiator, responder
LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
TARGET_RATIO = 0.5
TARGET_SIZE_MIB = 100.0
TARGET_TRAIN_RATIO = 0.95
EXCHANGE_TIMEOUT_S = 120.0
CONTROL_TIMEOUT_S = 60.0
BENCH_SPEC = "bench/f32"


# ------------------------------------------------------------------ the plain TCP path


# Largest recv: trio allocates the whole size up front for every receive_some.
TCP_RECV_MAX = 256 << 10


class TcpStream:
    """gossipd.netapi.Stream over a trio socket: the reference path without libp2p."""

    def __init__(self, sock: trio.SocketStream, remote_peer: str) -> None:
        self._sock = sock
        self._remote = remote_peer

    @property
    def remote_peer(self) -> str:
        return self._remote

    async def send_all(self, data: bytes | bytearray) -> None:
        try:
            await self._sock.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise TransportError(f"tcp write: {exc!r}") from exc

    async def receive_some(self, max_bytes: int) -> bytes:
        try:
            return bytes(await self._sock.receive_some(min(max_bytes, TCP_RECV_MAX)))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise TransportError(f"tcp read: {exc!r}") from exc

    async def aclose(self) -> None:
        await self._sock.aclose()

    async def reset(self) -> None:
        await self._sock.aclose()


class TcpTransport:
    """The part of gossipd.netapi.Transport that exchange.initiate/respond use, over plain TCP to
    one known peer. Peer IDs are those of the libp2p hosts of the same processes."""

    def __init__(self, ids: Libp2pTransport, peer_port: int | None = None) -> None:
        self._ids = ids
        self._port = peer_port

    def peer_id_bytes(self, peer_id: str) -> bytes:
        return self._ids.peer_id_bytes(peer_id)

    async def open_stream(self, peer_id: str, protocol_id: str) -> Stream:
        assert self._port is not None
        sock = await trio.open_tcp_stream("127.0.0.1", self._port)
        return TcpStream(sock, peer_id)


# ------------------------------------------------------------------ models


def bench_params(num_params: int, node: int) -> np.ndarray:
    """Deterministic finite float32 parameters of one node (both processes can rebuild them)."""
    rng = np.random.default_rng([num_params, node])
    flat = rng.standard_normal(num_params, dtype=np.float32)
    flat.flags.writeable = False
    return flat


def digest(flat: np.ndarray) -> str:
    return hashlib.blake2b(memoryview(np.ascontiguousarray(flat)).cast("B"),
                           digest_size=16).hexdigest()


@dataclass
class StaticModel:
    """A node whose parameters do not train: merge_remote leaves it at the pair's mean, which
    is kept for checking (outside the timed part) and dropped, so every run starts from the
    same parameters."""

    params: np.ndarray
    spec: str = BENCH_SPEC
    merged: np.ndarray | None = None

    def snapshot(self) -> tuple[np.ndarray, int]:
        return self.params, 1

    def merge_remote(self, sent: np.ndarray, remote: np.ndarray, _step: int) -> None:
        self.merged = merge(self.params, sent, remote, 0.5, out=remote)

    def take_digest(self) -> str | None:
        merged, self.merged = self.merged, None
        return None if merged is None else digest(merged)

    def local(self, transport: Libp2pTransport, seed: bytes) -> exchange.LocalModel:
        return exchange.LocalModel(
            peer_id_bytes=transport.peer_id_bytes(transport.peer_id), seed=seed, spec=self.spec,
            num_params=int(self.params.size), snapshot=self.snapshot,
            apply_remote=lambda _r, _s: None, merge_remote=self.merge_remote,
        )


def expected_digest(num_params: int) -> str:
    a, b = bench_params(num_params, 0), bench_params(num_params, 1)
    return digest(merge(a, a, b, 0.5))


# ------------------------------------------------------------------ line protocol


class Lines:
    """JSON lines over a trio receive stream (the peer's stdin, or its stdout seen from here)."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buf = bytearray()

    async def next(self) -> dict[str, Any]:
        for _ in range(1 << 20):  # bounded: a line is far shorter than a million reads
            end = self._buf.find(b"\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[: end + 1]
                obj: dict[str, Any] = json.loads(line)
                return obj
            data = await self._stream.receive_some(1 << 16)
            if not data:
                raise EOFError("control stream closed")
            self._buf += data
        raise RuntimeError("control line too long")


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------ the peer process


class Probe:
    """Optional instruments around one exchange in one process: cProfile statistics written to
    ``profile``, and with ``memory`` the peak of memory allocated meanwhile (tracemalloc, which
    numpy reports its arrays to)."""

    def __init__(self, profile: str | None = None, memory: bool = False) -> None:
        self._path = profile
        self._prof = cProfile.Profile() if profile else None
        self._memory = memory

    def start(self) -> None:
        if self._memory:
            tracemalloc.start()
        if self._prof is not None:
            self._prof.enable()

    def stop(self) -> int | None:
        if self._prof is not None:
            self._prof.disable()
            self._prof.dump_stats(str(self._path))
        if not self._memory:
            return None
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak


@dataclass
class Served:
    """Outcome of the exchange the peer served, for the initiator to collect."""

    done: trio.Event = field(default_factory=trio.Event)
    cpu: float = 0.0
    peak: int | None = None
    error: str | None = None
    probe: Probe = field(default_factory=Probe)


async def serve() -> None:
    """The responder: a libp2p host and a TCP listener serving exchanges of the current model;
    commands on stdin, one JSON line each."""
    state: dict[str, Any] = {"model": None, "served": Served(), "initiator": None}
    async with open_transport(SEEDS[1], LOOPBACK) as host, trio.open_nursery() as nursery:
        tcp = TcpTransport(host)

        async def run_respond(transport: Any, stream: Stream) -> None:
            served: Served = state["served"]
            model: StaticModel | None = state["model"]
            served.probe.start()
            cpu0 = time.process_time()
            try:
                if model is None:
                    raise RuntimeError("no model configured")
                await exchange.respond(transport, stream, model.local(host, SEEDS[1]),
                                       EXCHANGE_TIMEOUT_S, exchange.ByteCounter())
            except Exception as exc:  # reported to the initiator, which fails the run
                served.error = f"{type(exc).__name__}: {exc}"
            finally:
                served.cpu = time.process_time() - cpu0
                served.peak = served.probe.stop()
                served.done.set()

        async def on_libp2p(stream: Stream) -> None:
            await run_respond(host, stream)

        async def on_tcp(sock: trio.SocketStream) -> None:
            await run_respond(tcp, TcpStream(sock, state["initiator"] or "?"))

        host.set_handler(AVG_PROTOCOL_ID, on_libp2p)
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        nursery.start_soon(trio.serve_listeners, on_tcp, listeners)
        emit({"peer_id": host.peer_id, "addrs": host.listen_addrs(),
              "tcp_port": listeners[0].socket.getsockname()[1]})
        lines = Lines(trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())))
        while True:
            cmd = await lines.next()
            op = cmd.get("op")
            if op == "hello":
                state["initiator"] = cmd["peer_id"]
                emit({"ok": True})
            elif op == "model":
                params = bench_params(int(cmd["n"]), 1)
                state["model"] = StaticModel(params, spec=str(cmd.get("spec", BENCH_SPEC)))
                emit({"ok": True})
            elif op == "arm":
                state["served"] = Served(probe=Probe(cmd.get("profile"), bool(cmd.get("memory"))))
                emit({"ok": True})
            elif op == "result":
                served = state["served"]
                with trio.move_on_after(CONTROL_TIMEOUT_S):
                    await served.done.wait()
                model = state["model"]
                emit({"done": served.done.is_set(), "cpu": served.cpu, "peak": served.peak,
                      "error": served.error,
                      "digest": None if model is None else model.take_digest()})
            elif op == "quit":
                emit({"ok": True})
                nursery.cancel_scope.cancel()
                return
            else:
                emit({"error": f"unknown op {op!r}"})


# ------------------------------------------------------------------ the initiator


class Peer:
    """The responder process and its control channel."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        assert proc.stdout is not None and proc.stdin is not None
        self._lines = Lines(proc.stdout)
        self._stdin = proc.stdin

    async def read(self) -> dict[str, Any]:
        with trio.fail_after(CONTROL_TIMEOUT_S):
            return await self._lines.next()

    async def call(self, **cmd: Any) -> dict[str, Any]:
        await self._stdin.send_all((json.dumps(cmd) + "\n").encode())
        return await self.read()


@dataclass
class Run:
    seconds: float
    cpu: float
    ok: bool
    error: str | None = None
    peak: int | None = None  # the larger of the two processes' peaks, with memory=True


async def one_exchange(peer: Peer, transport: Any, peer_id: str, model: StaticModel,
                       host: Libp2pTransport, expect: str, profile: str | None = None,
                       memory: bool = False) -> Run:
    """One exchange, timed; with ``profile`` (a path prefix) both processes write cProfile
    statistics of it to PREFIX.initiator and PREFIX.responder, with ``memory`` both measure
    their peak allocations during it."""
    await peer.call(op="arm", profile=f"{profile}.responder" if profile else None,
                    memory=memory)
    probe = Probe(f"{profile}.initiator" if profile else None, memory)
    probe.start()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    error = None
    try:
        await exchange.initiate(transport, peer_id, model.local(host, SEEDS[0]),
                                EXCHANGE_TIMEOUT_S, exchange.ByteCounter())
    except Exception as exc:  # a failed run is reported, not raised
        error = f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    peak = probe.stop()
    served = await peer.call(op="result")
    error = error or served.get("error") or (None if served.get("done") else "peer not done")
    ok = error is None and model.take_digest() == expect and served.get("digest") == expect
    if error is None and not ok:
        error = "parameters after the exchange differ from the pair's mean"
    peaks = [p for p in (peak, served.get("peak")) if p is not None]
    return Run(seconds, cpu + float(served.get("cpu", 0.0)), ok, error,
               max(peaks) if peaks else None)


def _mb_s(nbytes: int, seconds: float) -> float:
    return nbytes / 1e6 / seconds if seconds > 0 else math.inf


async def measure_size(peer: Peer, host: Libp2pTransport, tcp: TcpTransport, peer_id: str,
                       size_mib: float, repeat: int, profile: str | None = None
                       ) -> dict[str, Any]:
    num_params = max(1, int(size_mib * MIB) // 4)
    await peer.call(op="model", n=num_params, spec=BENCH_SPEC)
    model = StaticModel(bench_params(num_params, 0))
    expect = expected_digest(num_params)
    runs: dict[str, list[Run]] = {"libp2p": [], "tcp": []}
    paths = (("libp2p", host), ("tcp", tcp))
    for i in range(repeat):
        for path, transport in paths:
            prof = f"{profile}-{size_mib:g}MiB-{path}" if profile and i == repeat - 1 else None
            runs[path].append(await one_exchange(peer, transport, peer_id, model, host, expect,
                                                 prof))
    nbytes = 4 * num_params
    row: dict[str, Any] = {"size_mib": size_mib, "bytes_per_direction": nbytes}
    for path, transport in paths:
        mem = await one_exchange(peer, transport, peer_id, model, host, expect, memory=True)
        rs = runs[path]
        good = [r for r in rs if r.ok]
        best = min((r.seconds for r in good), default=math.inf)
        row[f"{path}_s"] = best
        row[f"{path}_mb_s"] = _mb_s(nbytes, best) if good else 0.0
        row[f"{path}_cpu_s"] = sum(r.cpu for r in good) / len(good) if good else None
        row[f"{path}_peak_bytes"] = mem.peak
        row[f"{path}_peak_x"] = mem.peak / nbytes if mem.ok and mem.peak is not None else None
        row[f"{path}_ok"] = len(good) == len(rs) and mem.ok
        row[f"{path}_errors"] = [r.error for r in [*rs, mem] if r.error]
    row["ratio"] = row["libp2p_mb_s"] / row["tcp_mb_s"] if row["tcp_mb_s"] else 0.0
    return row


BULK_TRAIN_MIB = 10.0


async def _next_chunk(runner: Any) -> tuple[int, float]:
    """Wait until the runner completes a chunk of steps: (its step count, the time)."""
    step = runner.status.step
    with trio.fail_after(CONTROL_TIMEOUT_S):
        while runner.status.step == step:  # bounded by the deadline
            await trio.sleep(0.0005)
    return runner.status.step, time.perf_counter()


async def _on_schedule(runner: Any, period: float) -> tuple[int, float]:
    """The next chunk completion that follows the previous one by at least half a period: the
    runner is then on its pace, not catching up after the JIT compilation (which would count
    extra chunks into the measurement)."""
    _, last = await _next_chunk(runner)
    for _ in range(1000):  # bounded; normally the first or second chunk
        step, now = await _next_chunk(runner)
        if now - last >= period / 2:
            return step, now
        last = now
    raise RuntimeError("the runner never settled on its pace")


async def train_rate(host: Libp2pTransport, peer: Peer, peer_id: str, seconds: float,
                     sps: float, load: str) -> dict[str, Any]:
    """Steps/s of a ModelRunner over ``seconds``, measured between chunk completions, while
    ``load`` runs back to back: "none"; "model", exchanges of the runner's own parameters
    merged into training (the daemon's case); "bulk", exchanges of BULK_TRAIN_MIB MiB of other
    parameters (a large model's exchange in flight all the time)."""
    from gossipd.data import Partition, load_shard
    from gossipd.runner import CHUNK_PERIOD_S, ModelRunner
    from gossipd.trainer import Trainer, TrainHyper

    shard = load_shard("digits-mlp", num_shards=2, shard_index=0, partition=Partition("iid"),
                       seed=0)
    trainer = Trainer("digits-mlp", shard, TrainHyper(), seed=0)
    runner = ModelRunner(trainer, sps, 3600.0, 0.5)
    if load == "bulk":
        n = int(BULK_TRAIN_MIB * MIB) // 4
        await peer.call(op="model", n=n, spec=BENCH_SPEC)
        local = StaticModel(bench_params(n, 0)).local(host, SEEDS[0])
    else:
        await peer.call(op="model", n=trainer.num_params, spec=trainer.spec)
        local = exchange.LocalModel(
            peer_id_bytes=host.peer_id_bytes(host.peer_id), seed=SEEDS[0], spec=trainer.spec,
            num_params=trainer.num_params, snapshot=runner.snapshot,
            apply_remote=runner.apply_remote, merge_remote=runner.merge_remote,
        )
    counts = {"ok": 0, "failed": 0}

    async def exchanges() -> None:
        while True:  # until cancelled at the end of the measurement
            try:
                await exchange.initiate(host, peer_id, local, EXCHANGE_TIMEOUT_S,
                                        exchange.ByteCounter())
                counts["ok"] += 1
            except Exception:
                counts["failed"] += 1
                await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run_training)
        await trio.sleep(1.0)  # JIT compilation and the first chunks are not measured
        if load != "none":
            nursery.start_soon(exchanges)
            await trio.sleep(0.5)
        period = math.ceil(sps * CHUNK_PERIOD_S) / sps
        step0, t0 = await _on_schedule(runner, period)
        cpu0, ok0 = time.process_time(), counts["ok"]
        await trio.sleep(seconds)
        step1, t1 = await _next_chunk(runner)
        cpu = time.process_time() - cpu0
        done = counts["ok"] - ok0
        nursery.cancel_scope.cancel()
    elapsed = t1 - t0
    return {"load": load, "steps_per_s": (step1 - step0) / elapsed, "exchanges": done,
            "exchanges_failed": counts["failed"], "exchanges_per_s": done / elapsed,
            "cpu_s": cpu, "seconds": elapsed}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve"]
    async with trio.open_nursery() as nursery:
        proc = await nursery.start(lambda task_status=trio.TASK_STATUS_IGNORED: trio.run_process(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, check=False,
            task_status=task_status))
        peer = Peer(proc)
        try:
            hello = await peer.read()
            async with open_transport(SEEDS[0], LOOPBACK) as host:
                peer_id = hello["peer_id"]
                await peer.call(op="hello", peer_id=host.peer_id)
                with trio.fail_after(CONTROL_TIMEOUT_S):
                    await host.connect(peer_id, hello["addrs"])
                tcp = TcpTransport(host, int(hello["tcp_port"]))
                await measure_size(peer, host, tcp, peer_id, 0.25, 1)  # warm both paths up
                rows = [await measure_size(peer, host, tcp, peer_id, s, args.repeat,
                                           args.profile)
                        for s in args.sizes]
                train: dict[str, Any] | None = None
                if args.train_seconds > 0:
                    runs = {load: await train_rate(host, peer, peer_id, args.train_seconds,
                                                   args.train_sps, load)
                            for load in ("none", "model", "bulk")}
                    base = runs["none"]["steps_per_s"]
                    train = {"sps_pace": args.train_sps, "without": runs["none"],
                             "with": runs["model"], "with_bulk": runs["bulk"],
                             "ratio": runs["model"]["steps_per_s"] / base if base else 0.0,
                             "ratio_bulk": runs["bulk"]["steps_per_s"] / base if base else 0.0}
            await peer.call(op="quit")
        finally:
            with trio.move_on_after(5):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
    return {"rows": rows, "train": train}


# ------------------------------------------------------------------ CLI


def _parse_sizes(text: str) -> list[float]:
    try:
        sizes = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text}") from None
    if not sizes or any(not 0 < s <= 1024 for s in sizes):
        raise argparse.ArgumentTypeError("sizes must be MiB in (0, 1024]")
    return sizes


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=_parse_sizes, default=[1.0, 10.0, 100.0],
                        help="comma-separated payload sizes in MiB (default: 1,10,100)")
    parser.add_argument("--repeat", type=_positive_int, default=5,
                        help="runs per size and path; the best counts for MB/s (default: 5)")
    parser.add_argument("--train-seconds", type=float, default=6.0,
                        help="seconds of training measured without and with exchanges; "
                             "0 skips the training part (default: 6)")
    parser.add_argument("--train-sps", type=float, default=1000.0,
                        help="the runner's training pace in steps/s (default: 1000; the "
                             "daemon's default is 20; 100000 is unpaced here)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object instead of the table")
    parser.add_argument("--profile", metavar="PREFIX",
                        help="write cProfile statistics of the last run of each size and path, "
                             "both processes, to PREFIX-<size>MiB-<path>.initiator/.responder "
                             "(profiled runs are slower; read with python -m pstats)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    return parser


def _fmt_cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _fmt_x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def print_table(report: dict[str, Any]) -> None:
    print(f"{'MiB':>6}  {'libp2p MB/s':>11}  {'tcp MB/s':>8}  {'ratio':>5}  "
          f"{'libp2p CPU s':>12}  {'tcp CPU s':>9}  {'libp2p peak':>11}  {'tcp peak':>8}")
    for row in report["rows"]:
        print(f"{row['size_mib']:>6g}  {row['libp2p_mb_s']:>11.1f}  {row['tcp_mb_s']:>8.1f}  "
              f"{row['ratio']:>5.2f}  {_fmt_cpu(row['libp2p_cpu_s']):>12}  "
              f"{_fmt_cpu(row['tcp_cpu_s']):>9}  {_fmt_x(row['libp2p_peak_x']):>11}  "
              f"{_fmt_x(row['tcp_peak_x']):>8}")
    met = report["target_met"]
    print(f"target ratio >= {TARGET_RATIO} at {TARGET_SIZE_MIB:g} MiB: "
          + ("not measured" if met is None else "met" if met else "NOT met"))
    train = report["train"]
    if train is not None:
        alone, busy, bulk = train["without"], train["with"], train["with_bulk"]
        verdict = "met" if train["ratio"] >= TARGET_TRAIN_RATIO else "NOT met"
        print(f"training, digits-mlp at a pace of {train['sps_pace']:g} steps/s: "
              f"{alone['steps_per_s']:.1f} steps/s without exchanges")
        print(f"  with back-to-back exchanges of its own parameters "
              f"({busy['exchanges_per_s']:.1f}/s, {busy['exchanges_failed']} failed): "
              f"{busy['steps_per_s']:.1f} steps/s, ratio {train['ratio']:.3f} "
              f"(target >= {TARGET_TRAIN_RATIO}: {verdict})")
        print(f"  with back-to-back {BULK_TRAIN_MIB:g} MiB exchanges "
              f"({bulk['exchanges_per_s']:.1f}/s, {bulk['exchanges_failed']} failed): "
              f"{bulk['steps_per_s']:.1f} steps/s, ratio {train['ratio_bulk']:.3f}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.serve:
        trio.run(serve)
        return 0
    report = trio.run(bench, args)
    rows = report["rows"]
    target = [r for r in rows if r["size_mib"] == TARGET_SIZE_MIB]
    report["target_met"] = bool(target[0]["ratio"] >= TARGET_RATIO) if target else None
    report.update(repeat=args.repeat, target_ratio=TARGET_RATIO,
                  target_size_mib=TARGET_SIZE_MIB, target_train_ratio=TARGET_TRAIN_RATIO)
    ok = all(r["libp2p_ok"] and r["tcp_ok"] for r in rows)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    for row in rows:
        for path in ("libp2p", "tcp"):
            for err in row[f"{path}_errors"]:
                print(f"{path} {row['size_mib']:g} MiB: {err}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
