"""gossipctl's provenance commands that work on ledger files: `export` (copy a running node's
sealed ledger), `verify FILE` (one ledger, offline) and `verify A B ...` (several together:
gossipd/audit.py). No daemon is needed except to seal before an export.

Exit status: 0 verified (exported and verified), 1 a ledger does not verify or the audit found
a problem, 2 usage (two ledgers of one node).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def export_ledger(extent: dict[str, Any], out: str, as_json: bool) -> int:
    """`gossipctl provenance export OUT`: the daemon has sealed and fsync'd its ledger
    (`extent`: path and sealed size); copy the file up to that size, which is a whole, sealed
    ledger even while the node keeps appending, then verify the copy. Exit 0 exported and
    verified, 1 not."""
    src, size, dest = Path(extent["path"]), int(extent["bytes"]), Path(out)
    try:
        with open(src, "rb") as f:
            blob = f.read(size)
    except OSError as exc:
        print(f"gossipctl: cannot read the ledger {src}: {exc}; run gossipctl as the daemon's "
              "user (e.g. sudo -u gossipd gossipctl provenance export OUT)", file=sys.stderr)
        return 1
    if len(blob) != size:
        print(f"gossipctl: the ledger {src} is shorter ({len(blob)} bytes) than the daemon "
              f"sealed ({size}); was it moved or cut?", file=sys.stderr)
        return 1
    try:
        with open(dest, "xb") as f:  # never overwrite: an export is evidence
            f.write(blob)
    except OSError as exc:
        print(f"gossipctl: cannot write {dest}: {exc} (an existing file is never overwritten: "
              "choose another name)", file=sys.stderr)
        return 1
    code = verify_ledger(str(dest), as_json, quiet=not as_json)
    if code == 0 and not as_json:
        print(f"exported {src} up to its sealed head {extent['seq']} "
              f"({extent['head'][:16]}, {size} bytes) to {dest}; verified")
    return code


def verify_ledger(path: str, as_json: bool, quiet: bool = False) -> int:
    """`gossipctl provenance verify FILE`: offline, no daemon. Exit 0 verified, 1 not."""
    from gossipd.ledger import LedgerError, verify_file
    from protocol.receipt import ReceiptBody

    try:
        records = verify_file(Path(path))
    except (LedgerError, OSError) as exc:
        if as_json:
            print(json.dumps({"ok": False, "error": str(exc)}))
        else:
            print(f"gossipctl: ledger does NOT verify: {exc}", file=sys.stderr)
        return 1
    receipts = [ReceiptBody.from_bytes(r.data["body"]) for r in records if r.kind == "receipt"]
    owner = records[0].data["peer_id"].hex()
    result = {"ok": True, "records": len(records), "receipts": len(receipts),
              "owner": owner, "head": records[-1].hash.hex()}
    if as_json:
        print(json.dumps(result))
    elif not quiet:
        print(f"ledger verified: {len(records)} records, {len(receipts)} receipts signed by both "
              f"peers, every link and signature good; head {result['head'][:16]}")
    return 0


def audit_ledgers(paths: list[str], as_json: bool) -> int:
    """`gossipctl provenance verify A B ...`: each ledger on its own, then together (gossipd/
    audit.py): receipts identical on both sides, every head a peer showed still in its ledger,
    and who reached each model. Exit 0 all good, 1 not."""
    from gossipd.audit import audit
    from gossipd.ledger import LedgerError, Record, verify_file

    verified: list[tuple[str, list[Record]]] = []
    failed: dict[str, str] = {}
    for path in paths:
        try:
            verified.append((path, verify_file(Path(path))))
        except (LedgerError, OSError) as exc:
            failed[path] = str(exc)
    try:
        result: dict[str, Any] = audit(verified) if verified else {"ok": True}
    except ValueError as exc:
        print(f"gossipctl: {exc}", file=sys.stderr)
        return 2
    result["ok"] = bool(result["ok"]) and not failed
    result["ledgers_failed"] = failed
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print(render_audit(result, verified))
    return 0 if result["ok"] else 1


def render_audit(r: dict[str, Any], verified: list[tuple[str, list[Any]]]) -> str:
    lines = [f"verified   {name}: {len(recs)} records, owner {r['owners'][name]}"
             for name, recs in verified]
    lines += [f"FAILED     {path}: {why}" for path, why in r["ledgers_failed"].items()]
    if not verified:
        return "\n".join(lines)
    lines.append(f"receipts   {r['receipts_matched']} on both sides, identically signed; "
                 f"{len(r['receipts_differ'])} differ; {len(r['receipts_one_sided'])} on one "
                 f"side only (an exchange cut by a crash or stop); "
                 f"{r['receipts_not_covered']} newer than the other side's export")
    lines += [f"DIFFER     exchange {d['exchange_id']}: {' and '.join(d['ledgers'])} hold "
              "different bodies" for d in r["receipts_differ"]]
    lines.append(f"heads      {r['heads_checked']} heads shown in exchanges checked against "
                 f"the ledgers they came from: "
                 f"{'all there' if not r['histories_rewritten'] else 'HISTORY REWRITTEN'}")
    lines += [f"REWRITTEN  {h['ledger']}: {h['problem']}" for h in r["histories_rewritten"]]
    for name, reached in r["lineage"].items():
        direct = sum(1 for x in reached if x["hops"] == 1)
        own = _datasets(r["datasets"][name])
        lines.append(f"lineage    {name}{f' (data {own})' if own else ''}: {len(reached)} "
                     f"nodes reached its model, {direct} directly")
        for x in reached:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(x["first_ms"] / 1000))
            via = (f"directly, {x['merged']} vectors merged" if x["hops"] == 1
                   else f"through {x['hops']} exchanges")
            data = _datasets(x["datasets"])
            lines.append(f"             {x['peer']:<20} first {when}, {via}"
                         + (f"; data {data}" if data else "")
                         + ("" if x["audited"] else " (ledger not given)"))
    lines.append("audit " + ("passed" if r["ok"] else "FAILED"))
    return "\n".join(lines)


def _datasets(records: list[dict[str, Any]]) -> str:
    """The last two data sets a ledger recorded, short."""
    return ", ".join(f"{d['dataset_hash'][:16]} ({d['samples']} samples)" for d in records[-2:])
