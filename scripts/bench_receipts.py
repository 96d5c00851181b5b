#!/usr/bin/env python3
"""Cost of exchange receipts and of the ledger: gossipd's averaging exchange with provenance
off, with receipts but no ledger records, and with both, side by side in one run, per model
size.

    scripts/bench_receipts.py [--params 4810,100000,1000000,10000000] [--rounds 8]
                              [--delay-ms D] [--json]

Two OS processes on 127.0.0.1 (this one initiates, a peer it starts with `--serve` responds),
one libp2p connection (TCP + Noise + yamux), gossipd.exchange.initiate/respond as the daemon
runs them, synthetic float32 parameters (scripts/bench_exchange.py's). "on": both nodes keep a
ledger (gossipd.ledger in a fresh directory on the --dir file system, fsync included) and every
exchange carries the receipt (signed by both, verified, appended); "receipts": the same
receipts, signed, swapped and checked, but no record written (the ledger's heads stay put);
"off": no provenance. The three modes take turns exchange by exchange (3 x --block exchanges a
round, fewer for large models; --rounds rounds, in orders that vary: `cycle_order`) in the
same warm processes, so load and drift fall on all alike, and every three neighbours give one
paired difference. Before each exchange an untimed pause of SETTLE_S lets both sides finish
what they defer (daemons exchange seconds apart). `--delay-ms D` puts a delay line between the
two (scripts/delay_line.py, a relay in a third process that holds every byte D ms each way, no
bandwidth limit): a link with a round trip of 2D ms, as between machines, which loopback is
not.

Per size: the median wall time of initiate() in each mode; what provenance as a whole costs
(the median paired on - off) and its share of the exchange without it; the initiator's
receipt_s (ExchangeOutcome: the receipt work not hidden behind the parameter stream); and the
ledger's cost three ways: the median paired on - receipts (the exchange with its ledger
against the same exchange without: what the exchange waits for), the ledger's time on the
exchange's path (ExchangeOutcome.ledger_s: queueing the record), and the event loop's time
writing records (Provenance.write_s per exchange, the larger of the two peers': done after the
exchange, in the pause before the next; the seal's signature and the fsync run in a thread:
the ledger's CPU on the loop, stated as a share of the exchange too). Shares are of the
"receipts" exchange time. The acceptance target is under 1% of exchange time; the last lines
say where it is met.
Exit 0 (a measurement); 1 when an exchange failed or ended at the wrong parameters.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import trio  # noqa: E402
from bench_exchange import (  # noqa: E402
    LOOPBACK,
    SEEDS,
    Lines,
    Peer,
    StaticModel,
    bench_params,
    digest,
    emit,
    expected_digest,
)

from gossipd import exchange  # noqa: E402
from gossipd.ledger import Ledger  # noqa: E402
from gossipd.netapi import Stream  # noqa: E402
from gossipd.provenance import Provenance  # noqa: E402
from gossipd.transport import Libp2pTransport, open_transport  # noqa: E402
from protocol.messages import AVG_PROTOCOL_ID  # noqa: E402

DIGITS_PARAMS = 4810  # gossipd's digits-mlp
DEFAULT_PARAMS = (DIGITS_PARAMS, 100_000, 1_000_000, 10_000_000)
TARGET_SHARE = 0.01
SETTLE_S = 0.002  # untimed pause before each exchange (daemons exchange seconds apart)
EXCHANGE_TIMEOUT_S = 120.0
SAMPLES = 320  # what each node reports as trained since its last exchange


def local_model(model: StaticModel, host: Libp2pTransport, seed: bytes,
                provenance: Provenance | None) -> exchange.LocalModel:
    return dataclasses.replace(model.local(host, seed), provenance=provenance,
                               samples_since_exchange=lambda: SAMPLES)


def open_ledger(directory: Path, host: Libp2pTransport, seed: bytes) -> Provenance:
    directory.mkdir(parents=True, exist_ok=True)
    return Provenance(Ledger(directory / "ledger.bin", seed, host.peer_id_bytes(host.peer_id)))


# ------------------------------------------------------------------ the peer process


class ReceiptsOnly(Provenance):
    """The "receipts" mode: receipts signed, swapped and checked as with provenance on (the
    same ledger heads in the Hellos, the same memory of the peer's head, so the same history
    proofs), but never written, so "on" minus this is what the ledger costs an exchange."""

    def __init__(self, full: Provenance) -> None:
        super().__init__(full.ledger)
        self._heads = full._heads  # one memory of peer heads for both modes
        self._keys = full._keys

    def record_receipt_soon(self, receipt: dict[str, bytes], refused: str | None = None,
                            body: Any = None) -> None:
        self._remember(body)


def providers(ledger: Provenance) -> dict[str, Provenance | None]:
    """The provenance each mode runs with (one ledger under both)."""
    return {"off": None, "receipts": ReceiptsOnly(ledger), "on": ledger}


MODES = ("off", "receipts", "on")


@dataclasses.dataclass
class ServedModel(StaticModel):
    """The responder's model: keeps every merged vector (exchanges may overlap: the initiator
    can start the next one while this side still writes its record), checked outside the
    timed part."""

    kept: list[Any] = dataclasses.field(default_factory=list)

    def merge_remote(self, sent: Any, remote: Any, step: int) -> None:
        super().merge_remote(sent, remote, step)
        self.kept.append(self.merged)
        self.merged = None


async def serve(directory: Path) -> None:
    """The responder: serves exchanges of the current model, with or without its ledger."""
    state: dict[str, Any] = {"model": None, "order": list(MODES), "served": 0, "errors": []}
    async with open_transport(SEEDS[1], LOOPBACK) as host, trio.open_nursery() as nursery:
        provenance = open_ledger(directory, host, SEEDS[1])
        modes = providers(provenance)

        async def on_stream(stream: Stream) -> None:
            model: StaticModel | None = state["model"]
            try:
                if model is None:
                    raise RuntimeError("no model configured")
                mode = state["order"][state["served"] % len(MODES)]
                state["served"] += 1  # streams come one at a time, in the initiator's order
                local = local_model(model, host, SEEDS[1], modes[mode])
                await exchange.respond(host, stream, local, EXCHANGE_TIMEOUT_S,
                                       exchange.ByteCounter())
            except Exception as exc:  # reported to the initiator, which fails the run
                state["errors"].append(f"{type(exc).__name__}: {exc}")

        host.set_handler(AVG_PROTOCOL_ID, on_stream)
        emit({"peer_id": host.peer_id, "addrs": host.listen_addrs()})
        lines = Lines(trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())))
        while True:
            cmd = await lines.next()
            op = cmd.get("op")
            if op == "model":
                state["model"] = ServedModel(bench_params(int(cmd["n"]), 1))
                emit({"ok": True})
            elif op == "cycle":  # the modes take turns per exchange, in this order
                state["order"], state["served"] = [str(m) for m in cmd["order"]], 0
                emit({"ok": True})
            elif op == "result":  # after a round: what the responder saw, then forgotten
                await trio.sleep(0.05)  # the last respond() may still be closing its stream
                served: ServedModel = state["model"]
                provenance.write_queued()
                emit({"errors": state["errors"], "digests": [digest(m) for m in served.kept],
                      "ledger_records": len(provenance.ledger),
                      "write_s": provenance.write_s})
                state["errors"], served.kept = [], []
            elif op == "quit":
                await provenance.flush()
                provenance.close()
                emit({"ok": True})
                nursery.cancel_scope.cancel()
                return
            else:
                emit({"error": f"unknown op {op!r}"})


# ------------------------------------------------------------------ the initiator


def tcp_port(addrs: list[str]) -> int:
    """The TCP port of the responder's loopback address."""
    for a in addrs:
        parts = a.split("/")
        if "127.0.0.1" in parts and "tcp" in parts:
            return int(parts[parts.index("tcp") + 1])
    raise ValueError(f"no loopback TCP address in {addrs}")


def block_size(num_params: int, block: int) -> int:
    """Exchanges per block: --block for small models, fewer where one exchange takes long."""
    return max(2, min(block, int(4e7 // max(num_params, 1))))


def cycle_order(i: int) -> list[str]:
    """Round i's order of the modes: each leads in turn, forwards and backwards, so each
    follows each of the others as often (what ran just before can slow an exchange)."""
    forwards = list(MODES) if i % 2 == 0 else list(reversed(MODES))
    first = (i // 2) % len(MODES)
    return forwards[first:] + forwards[:first]


async def measure(peer: Peer, host: Libp2pTransport, peer_id: str, provenance: Provenance,
                  num_params: int, rounds: int, block: int) -> dict[str, Any]:
    await peer.call(op="model", n=num_params)
    model = StaticModel(bench_params(num_params, 0))
    expect = expected_digest(num_params)
    modes = providers(provenance)
    locals_ = {m: local_model(model, host, SEEDS[0], modes[m]) for m in MODES}
    times: dict[str, list[float]] = {m: [] for m in MODES}
    diffs: dict[str, list[float]] = {"on-off": [], "on-receipts": []}
    receipt_s: list[float] = []
    ledger_s: list[float] = []
    written = {"initiator": 0.0, "responder": 0.0}  # write_s in counted rounds
    errors: list[str] = []
    k = block_size(num_params, block)
    for i in range(rounds + 1):  # round 0 warms every mode up and is not counted
        order = cycle_order(i)
        await peer.call(op="cycle", order=order)
        seen_before = await peer.call(op="result")
        write_before = provenance.write_s
        triple: dict[str, float] = {}
        for j in range(len(MODES) * k):
            mode = order[j % len(MODES)]
            await trio.sleep(SETTLE_S)  # untimed: both sides' deferred work is done
            t0 = time.perf_counter()
            try:
                outcome = await exchange.initiate(host, peer_id, locals_[mode],
                                                  EXCHANGE_TIMEOUT_S, exchange.ByteCounter())
            except Exception as exc:  # a failed run is reported, not raised
                errors.append(f"{mode}: {type(exc).__name__}: {exc}")
                triple = {}
                continue
            seconds = time.perf_counter() - t0
            if model.take_digest() != expect:
                errors.append(f"{mode}: parameters differ from the pair's mean")
            if i == 0:
                continue
            times[mode].append(seconds)
            triple[mode] = seconds
            if mode == "on":
                receipt_s.append(outcome.receipt_s)
                ledger_s.append(outcome.ledger_s)
            if len(triple) == len(MODES):  # three neighbours: drift cancels
                diffs["on-off"].append(triple["on"] - triple["off"])
                diffs["on-receipts"].append(triple["on"] - triple["receipts"])
                triple = {}
        seen = await peer.call(op="result")
        if i > 0:
            written["initiator"] += provenance.write_s - write_before
            written["responder"] += seen["write_s"] - seen_before["write_s"]
        errors += [f"responder: {e}" for e in seen["errors"]]
        errors += ["responder: parameters differ from the pair's mean"
                   for d in seen["digests"] if d != expect]
        if len(seen["digests"]) != len(MODES) * k:
            errors.append(f"responder: {len(seen['digests'])} merges, not {len(MODES) * k}")
    off, rec, on = (statistics.median(times[m]) for m in MODES)
    cost = statistics.median(diffs["on-off"]) if diffs["on-off"] else on - off
    ledger = statistics.median(diffs["on-receipts"]) if diffs["on-receipts"] else on - rec
    n_on = len(times["on"])
    write_ms = {side: w / n_on * 1e3 for side, w in written.items()} if n_on else {}
    return {
        "num_params": num_params, "mib": 4 * num_params / (1 << 20), "exchanges": n_on,
        "off_ms": off * 1e3, "receipts_ms": rec * 1e3, "on_ms": on * 1e3,
        "cost_ms": cost * 1e3, "cost_share": cost / off, "ratio": on / off,
        "receipt_s_ms": statistics.median(receipt_s) * 1e3 if receipt_s else None,
        "ledger_cost_ms": ledger * 1e3, "ledger_cost_share": ledger / rec,
        "ledger_path_ms": statistics.mean(ledger_s) * 1e3 if ledger_s else None,
        "ledger_path_share": statistics.mean(ledger_s) / rec if ledger_s else None,
        "ledger_write_ms": write_ms,
        "ledger_write_share": max(write_ms.values()) / (rec * 1e3) if write_ms else None,
        "ok": not errors, "errors": errors[:10],
    }


async def bench(args: argparse.Namespace, directory: Path) -> list[dict[str, Any]]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", "--dir", str(directory)]
    async with trio.open_nursery() as nursery:
        proc = await nursery.start(lambda task_status=trio.TASK_STATUS_IGNORED: trio.run_process(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, check=False,
            task_status=task_status))
        peer = Peer(proc)
        try:
            hello = await peer.read()
            async with open_transport(SEEDS[0], LOOPBACK) as host:
                provenance = open_ledger(directory / "initiator", host, SEEDS[0])
                peer_id = hello["peer_id"]
                addrs = hello["addrs"]
                if args.delay_ms > 0:  # the relay in a process of its own, like a network
                    relay = await nursery.start(lambda task_status=trio.TASK_STATUS_IGNORED:
                                                trio.run_process(
                        [sys.executable, str(ROOT / "scripts" / "delay_line.py"), "--upstream",
                         str(tcp_port(addrs)), "--delay-ms", str(args.delay_ms)],
                        stdout=subprocess.PIPE, check=False, task_status=task_status))
                    assert relay.stdout is not None
                    port = int((await relay.stdout.receive_some(64)).decode().split()[0])
                    addrs = [f"/ip4/127.0.0.1/tcp/{port}"]
                with trio.fail_after(60):
                    await host.connect(peer_id, addrs)
                rows = [await measure(peer, host, peer_id, provenance, n, args.rounds,
                                      args.block) for n in args.params]
                await provenance.flush()
                provenance.close()
            await peer.call(op="quit")
            nursery.cancel_scope.cancel()  # the delay line's process, if any
        finally:
            with trio.move_on_after(5):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
    return rows


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.2f}%"


def print_table(rows: list[dict[str, Any]], directory: str, delay_ms: float) -> None:
    link = f"delay line {delay_ms:g} ms each way" if delay_ms > 0 else "loopback"
    print(f"# provenance off / receipts only / receipts + ledger, medians; {link}; "
          f"ledgers under {directory}")
    print(f"{'params':>10}  {'n':>4}  {'off ms':>8}  {'rcpt ms':>8}  {'on ms':>8}  "
          f"{'cost %':>7}  {'receipt_s':>9}  {'ledger ms':>9}  {'ledger %':>8}  "
          f"{'path us':>7}  {'path %':>6}  {'write us i/r':>12}  {'write %':>7}")
    for r in rows:
        rs = "-" if r["receipt_s_ms"] is None else f"{r['receipt_s_ms']:.3f}"
        path = "-" if r["ledger_path_ms"] is None else f"{1e3 * r['ledger_path_ms']:.1f}"
        w = r["ledger_write_ms"]
        write = (f"{1e3 * w['initiator']:.0f}/{1e3 * w['responder']:.0f}" if w else "-")
        print(f"{r['num_params']:>10}  {r['exchanges']:>4}  {r['off_ms']:>8.2f}  "
              f"{r['receipts_ms']:>8.2f}  {r['on_ms']:>8.2f}  {_pct(r['cost_share']):>7}  "
              f"{rs:>9}  {r['ledger_cost_ms']:>9.3f}  {_pct(r['ledger_cost_share']):>8}  "
              f"{path:>7}  {_pct(r['ledger_path_share']):>6}  {write:>12}  "
              f"{_pct(r['ledger_write_share']):>7}")
    # "From N on": N and every larger size measured meet it (a single noisy size does not).
    from_on = None
    for r in sorted(rows, key=lambda r: -r["num_params"]):
        if r["cost_share"] >= TARGET_SHARE:
            break
        from_on = r["num_params"]
    print(f"provenance as a whole (receipts + ledger) under {100 * TARGET_SHARE:g}% of exchange "
          "time: " + (f"from {from_on} params on (of those measured)" if from_on is not None
                      else "not at the largest measured size"))
    for key, what in (("ledger_cost_share", "the ledger, on - receipts"),
                      ("ledger_path_share", "the ledger on the exchange's path"),
                      ("ledger_write_share", "the ledger's record writing, after the exchange")):
        shares = [r[key] for r in rows if r[key] is not None]
        if shares:
            worst = max(shares)
            print(f"{what}: at most {100 * worst:.2f}% of exchange time"
                  + (" (under 1%)" if worst < TARGET_SHARE else " (1% or more)"))


def _params(text: str) -> list[int]:
    try:
        values = [int(float(p)) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text}") from None
    if not values or any(not 1 <= v <= 1 << 28 for v in values):
        raise argparse.ArgumentTypeError("parameter counts must be in 1..2^28")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=_params, default=list(DEFAULT_PARAMS),
                        help="comma-separated parameter counts (default: "
                             + ",".join(map(str, DEFAULT_PARAMS)) + ")")
    parser.add_argument("--rounds", type=int, default=8,
                        help="rounds of 3 x --block exchanges per size (default: 8)")
    parser.add_argument("--block", type=int, default=40,
                        help="exchanges per mode and round for small models (default: 40)")
    parser.add_argument("--delay-ms", type=float, default=0.0,
                        help="one-way delay of a relay between the peers (default 0: loopback)")
    parser.add_argument("--dir", help="where the ledgers go (default: a temporary directory)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        trio.run(serve, Path(args.dir) / "responder")
        return 0
    directory = Path(tempfile.mkdtemp(prefix="bench-receipts-", dir=args.dir))
    try:
        rows = trio.run(bench, args, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if args.json:
        print(json.dumps({"rows": rows, "target_share": TARGET_SHARE,
                          "delay_ms": args.delay_ms}, indent=2))
    else:
        print_table(rows, str(directory.parent), args.delay_ms)
    for r in rows:
        for err in r["errors"]:
            print(f"{r['num_params']} params: {err}", file=sys.stderr)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
