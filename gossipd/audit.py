"""Audit of several exported ledgers together: what `gossipctl provenance verify A B ...` adds to
checking each file on its own. Pure functions over verified records (gossipd/ledger.py).

Rules:
- Each ledger is verified on its own first (every link and signature, both signatures of every
  receipt); one that does not verify fails the audit and is left out of the rest.
- Receipts between two audited ledgers must be the same bytes on both sides. Copies that differ
  fail the audit (both signed one body: two bodies for one exchange ID is a forgery or a bug).
  A receipt on one side only is reported, not failed: an exchange cut by a crash or a stop ends
  with the side that had finished it (the daemon writes its receipt only once it has the peer's
  signature and parameters). When the other ledger ends before the exchange began, it was
  exported before it: "not covered".
- Heads: every receipt holds the ledger head each peer showed in that exchange (a durable head:
  fsync'd, sealed). The audited ledger of that peer must hold that very record at that seq. A
  different hash there, or a ledger that ends before that seq although its last record is
  later than the exchange, means the peer rewrote or cut its history after showing it: the
  audit fails. A ledger exported before the exchange ("ends earlier") cannot be checked.
- Lineage: a model carries what reached it through chains of exchanges. In time order
  (receipt time: the initiator's Hello), a node that merged its peer's vector (no `refused`
  record of that exchange in its ledger; peers without an audited ledger are taken to merge)
  takes on every node that had reached the peer before. For each audited node: every node that
  reached its model, the first time, and how many exchanges the shortest chain took (1 =
  directly), with the data sets that node recorded (hash and samples of each `data` record):
  the model tied to the data that trained it, without the data. Influence is not weight: a
  node reached through one exchange long ago counts as much as a direct partner; the counts
  say how close.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gossipd.identity import base58
from gossipd.ledger import Record
from protocol.receipt import ReceiptBody


@dataclass
class Audited:
    """One verified ledger."""

    name: str  # what the user called it (the file name)
    records: list[Record]
    owner: bytes = b""
    receipts: dict[bytes, tuple[ReceiptBody, dict[str, Any]]] = field(default_factory=dict)
    refused: set[bytes] = field(default_factory=set)
    datasets: list[dict[str, Any]] = field(default_factory=list)  # its `data` records, in order

    def __post_init__(self) -> None:
        self.owner = self.records[0].data["peer_id"]
        for rec in self.records:
            if rec.kind == "receipt":
                body = ReceiptBody.from_bytes(rec.data["body"])
                self.receipts[body.exchange_id] = (body, rec.data)
            elif rec.kind == "refused":
                self.refused.add(rec.data.get("exchange_id", b""))
            elif rec.kind == "data" and isinstance(rec.data.get("dataset_hash"), bytes):
                self.datasets.append({"dataset_hash": rec.data["dataset_hash"].hex(),
                                      "samples": rec.data.get("samples"),
                                      "time_ms": rec.time_ms})

    @property
    def last_ms(self) -> int:
        return self.records[-1].time_ms


def _check_head(ledger: Audited, head: tuple[int, bytes], body: ReceiptBody
                ) -> str | None:
    """None when the head the ledger's owner showed in this exchange is in its ledger (or the
    ledger was exported before it); else what is wrong."""
    seq, want = head
    if seq < len(ledger.records):
        if ledger.records[seq].hash == want:
            return None
        return (f"record {seq} is not the one it showed in exchange "
                f"{body.exchange_id.hex()}: its history was rewritten after that exchange")
    if ledger.last_ms > body.time_ms:
        return (f"it showed record {seq} in exchange {body.exchange_id.hex()}, but its ledger "
                f"ends at record {len(ledger.records) - 1}, written later: its history was cut")
    return None


def cross_check(ledgers: Sequence[Audited]) -> dict[str, Any]:
    by_owner = {lg.owner: lg for lg in ledgers}
    matched, differ, one_sided, not_covered = 0, [], [], 0
    rewritten: list[dict[str, str]] = []
    seen: set[bytes] = set()
    heads: set[tuple[bytes, int, bytes]] = set()
    for lg in ledgers:
        for xid, (body, data) in lg.receipts.items():
            for party, head in ((body.initiator, body.initiator_head),
                                (body.responder, body.responder_head)):
                other = by_owner.get(party)
                if other is None or (party, *head) in heads:
                    continue
                heads.add((party, *head))
                problem = _check_head(other, head, body)
                if problem is not None:
                    rewritten.append({"ledger": other.name, "problem": problem})
            peer = body.responder if body.initiator == lg.owner else body.initiator
            other = by_owner.get(peer)
            if other is None or xid in seen:
                continue
            theirs = other.receipts.get(xid)
            if theirs is None:
                if other.last_ms < body.time_ms:  # exported before this exchange
                    not_covered += 1
                else:
                    one_sided.append({"exchange_id": xid.hex(), "on": lg.name,
                                      "missing_on": other.name})
                continue
            seen.add(xid)
            if theirs[1] == data:
                matched += 1
            else:
                differ.append({"exchange_id": xid.hex(), "ledgers": [lg.name, other.name]})
    # The same rewrite is seen from every receipt that shows the head: keep one of each.
    unique = list({(r["ledger"], r["problem"]): r for r in rewritten}.values())
    return {"receipts_matched": matched, "receipts_differ": differ,
            "receipts_one_sided": one_sided, "receipts_not_covered": not_covered,
            "heads_checked": len(heads), "histories_rewritten": unique,
            "ok": not differ and not unique}


def lineage(ledgers: Sequence[Audited]) -> dict[bytes, dict[bytes, tuple[int, int]]]:
    """For each audited owner: {node that reached its model: (first time ms, exchanges in the
    shortest chain)}; the owner itself is not listed. (Its direct partners and how often it
    merged their vectors are in `merged_from`.)"""
    by_owner = {lg.owner: lg for lg in ledgers}
    exchanges: dict[bytes, ReceiptBody] = {}
    for lg in ledgers:
        for xid, (body, _data) in lg.receipts.items():
            exchanges.setdefault(xid, body)
    reached: dict[bytes, dict[bytes, tuple[int, int]]] = {}
    for body in sorted(exchanges.values(), key=lambda b: (b.time_ms, b.exchange_id)):
        a, b = body.initiator, body.responder
        before = {p: dict(reached.get(p, {})) for p in (a, b)}
        for me, peer in ((a, b), (b, a)):
            mine = by_owner.get(me)
            if mine is not None and body.exchange_id in mine.refused:
                continue
            into = reached.setdefault(me, {})
            for node, (_t, hops) in [*before[peer].items(), (peer, (body.time_ms, 0))]:
                if node == me:
                    continue
                known = into.get(node)
                if known is None or hops + 1 < known[1]:
                    into[node] = (known[0] if known else body.time_ms, hops + 1)
    return {lg.owner: reached.get(lg.owner, {}) for lg in ledgers}


def merged_from(ledger: Audited, since_ms: int = 0) -> dict[bytes, int]:
    """How many of each peer's vectors this ledger's owner merged (its own receipts of
    exchanges from `since_ms` on, less those it refused)."""
    counts: dict[bytes, int] = {}
    for xid, (body, _data) in ledger.receipts.items():
        if xid not in ledger.refused and body.time_ms >= since_ms:
            peer = body.responder if body.initiator == ledger.owner else body.initiator
            counts[peer] = counts.get(peer, 0) + 1
    return counts


def audit(named: Sequence[tuple[str, list[Record]]]) -> dict[str, Any]:
    """Cross-check and lineage of ledgers that each verified on their own."""
    ledgers = [Audited(name, records) for name, records in named]
    names = {lg.owner: lg.name for lg in ledgers}
    if len(names) < len(ledgers):
        raise ValueError("two of these ledgers belong to the same node: give one export per "
                         "node (the newest)")
    result = cross_check(ledgers)
    result["owners"] = {lg.name: base58(lg.owner) for lg in ledgers}
    data = {lg.owner: lg.datasets for lg in ledgers}
    result["datasets"] = {lg.name: lg.datasets for lg in ledgers}
    trees = lineage(ledgers)
    result["lineage"] = {}
    for lg in ledgers:
        direct = merged_from(lg)
        result["lineage"][lg.name] = [
            {"peer": names.get(p, base58(p)), "peer_id": base58(p), "first_ms": t, "hops": h,
             "merged": direct.get(p, 0), "audited": p in names, "datasets": data.get(p, [])}
            for p, (t, h) in sorted(trees[lg.owner].items(), key=lambda kv: (kv[1][1], kv[1][0]))]
    return result
