#!/usr/bin/env python3
"""Verify the provenance ledgers of a testnet run and cross-check their receipts.

    scripts/check_ledgers.py testnet-out            (after scripts/testnet.py run --out testnet-out)

For every DIR/node*/state/ledger.bin: every link and signature (a torn last record, left by a
SIGKILL mid-append, is reported and not counted; so is an unsealed tail, the unsigned records a
SIGKILL left after the last seal, which the node seals at its next start: allowed only for a
node named in --killed); then every receipt must appear, byte for byte and identically signed,
in the ledgers of both peers it names (a receipt with a peer that has no ledger in DIR, such as
an outside process, is counted apart). Prints one row per node and the cross-check; `--json`
for scripts. Exit 0 when every ledger verifies and every receipt of a node that was not killed
is found on both sides.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gossipd.audit import Audited, merged_from  # noqa: E402
from gossipd.ledger import LedgerError, Record, iter_records, verify_records  # noqa: E402
from protocol.receipt import ReceiptBody  # noqa: E402


def read(path: Path) -> tuple[list[Record], int]:
    blob = path.read_bytes()
    records: list[Record] = []
    good = 0
    for _offset, end, rec in iter_records(blob):
        if rec is None:
            break
        records.append(rec)
        good = end
    return records, len(blob) - good


def check(out: Path, names: set[str] | None = None, since_ms: int = 0) -> dict[str, Any]:
    """Verify DIR/node*/state/ledger.bin (only the nodes in `names` when given) and cross-check
    the receipts of exchanges started at or after `since_ms` (a testnet run's own, in
    directories a run before it used too)."""
    nodes: dict[str, Any] = {}
    by_exchange: dict[bytes, list[tuple[str, ReceiptBody, dict[str, Any]]]] = defaultdict(list)
    owners: dict[bytes, str] = {}
    for path in sorted(out.glob("node*/state/ledger.bin")):
        name = path.parent.parent.name
        if names is not None and name not in names:
            continue
        records, torn = read(path)
        row: dict[str, Any] = {"records": len(records), "bytes": path.stat().st_size,
                               "torn_bytes": torn, "unsealed": 0, "ok": True, "error": None,
                               "receipts": 0, "merged_from": {}}
        signed = [i for i, r in enumerate(records) if r.signed]
        if signed:
            row["unsealed"] = len(records) - 1 - signed[-1]
        try:
            verify_records(records[: len(records) - row["unsealed"]])
        except LedgerError as exc:
            row.update(ok=False, error=str(exc))
        row["bytes_per_record"] = round(row["bytes"] / max(1, len(records)), 1)
        if records:
            ledger = Audited(name, records)  # its receipts parsed, its refused records
            owners[ledger.owner] = name
            row["receipts"] = len(ledger.receipts)
            row["merged_from"] = merged_from(ledger, since_ms)
            for xid, (body, data) in ledger.receipts.items():
                if body.time_ms >= since_ms:
                    by_exchange[xid].append((name, body, data))
        nodes[name] = row
    for row in nodes.values():  # peers by node name now that every owner is known
        row["merged_from"] = {owners.get(p, p.hex()): n for p, n in row["merged_from"].items()}
    matched, unmatched, outside = 0, [], 0
    for xid, holders in by_exchange.items():
        body = holders[0][1]
        expected = {owners.get(body.initiator, "?"), owners.get(body.responder, "?")}
        if "?" in expected and len(holders) == 1:  # with a peer whose ledger is not here
            outside += 1
            continue
        found_on = {n for n, _b, _d in holders}
        same = all(d == holders[0][2] for _n, _b, d in holders)
        if found_on == expected and len(holders) == 2 and same:
            matched += 1
        else:
            unmatched.append({"exchange_id": xid.hex(), "found_on": sorted(found_on),
                              "expected_on": sorted(expected), "identical": same,
                              "time_ms": body.time_ms})
    return {"nodes": nodes, "receipts_matched": matched, "receipts_unmatched": unmatched,
            "receipts_with_outsiders": outside}


def judge(result: dict[str, Any], killed: set[str],
          windows: Sequence[tuple[int, int]] = ()) -> bool:
    """Whether a check passes; marks what fails. A node in `killed` (its last incarnation was
    SIGKILLed) may have an unsealed tail and may lack the receipt of an exchange it was in
    when it went: its peer finished and kept one. So may any node for an exchange that started
    inside one of `windows` ((first, last) ms: the exchange deadline around a fault, or before
    the final stop, when exchanges under way are cut). Every other receipt must be on both
    peers, identically signed."""
    for u in result["receipts_unmatched"]:
        in_window = any(lo <= u["time_ms"] <= hi for lo, hi in windows)
        u["excused"] = ("a killed node" if set(u["expected_on"]) & killed
                        else "cut by a fault or the stop" if in_window and u["identical"]
                        else None)
    for name, n in result["nodes"].items():
        if n["unsealed"] and name not in killed:
            n.update(ok=False, error=f"{n['unsealed']} records after the last seal (the node "
                                     "was not killed: a clean stop seals its ledger)")
    bad = [u for u in result["receipts_unmatched"] if u["excused"] is None]
    return bool(result["nodes"]) and all(n["ok"] for n in result["nodes"].values()) and not bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="check_ledgers.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="a testnet output directory")
    parser.add_argument("--killed", default="", help="comma-separated node names that were "
                        "SIGKILLed (their last receipt may be torn, their last records unsealed)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = check(args.out)
    ok = judge(result, {k for k in args.killed.split(",") if k})
    bad = [u for u in result["receipts_unmatched"] if u["excused"] is None]
    if args.json:
        print(json.dumps({**result, "ok": bool(ok)}, indent=2))
    else:
        print(f"{'node':<8} {'records':>8} {'receipts':>9} {'bytes':>9} {'B/record':>10} "
              f"{'torn':>5} {'unsealed':>8}  verified")
        for name, n in result["nodes"].items():
            per = f"{n['bytes_per_record']:.0f}"
            print(f"{name:<8} {n['records']:>8} {n['receipts']:>9} {n['bytes']:>9} {per:>10} "
                  f"{n['torn_bytes']:>5} {n['unsealed']:>8}  "
                  f"{'yes' if n['ok'] else 'NO: ' + str(n['error'])}")
        print(f"receipts on both peers, identical: {result['receipts_matched']}; "
              f"unmatched: {len(result['receipts_unmatched'])} "
              f"({len(result['receipts_unmatched']) - len(bad)} involve a killed node)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
