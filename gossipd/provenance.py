"""Provenance: what this node's ledger says about its model, and the records it adds.

Rules:
- At start the node records the hash of its local data set and its task config (a `data` record)
  when they differ from the last such record: a model can later be tied to the data that
  trained it without the data leaving the node.
- Every saved checkpoint adds a `checkpoint` record (parameter hash, step).
- Every completed exchange adds a `receipt` record signed by both peers (protocol/receipt.py).
- `lineage()` summarises the ledger for `gossipctl provenance`: contributing peers with their
  exchange and sample counts, the latest exchanges, data and checkpoints.
Appends fsync and `lineage` reads the whole file, so both run in a worker thread, one at a time.
An exchange's receipt is written while its merge runs on the event loop (`record_receipt`'s
`during`), and is on disk (fsync'd) before the exchange returns: the write costs the exchange
only what the merge does not hide, and a node killed mid-append still loses at most that one
torn record.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import trio

from gossipd.ledger import Ledger, Record
from protocol.receipt import ReceiptBody


class Provenance:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._limiter = trio.CapacityLimiter(1)
        # The last ledger head each peer showed us, as our own receipts recorded it.
        self._heads: dict[bytes, tuple[int, bytes]] = {}
        for rec in ledger.read():  # once, at start
            if rec.kind == "receipt":
                self._remember(ReceiptBody.from_bytes(rec.data["body"]))

    def _remember(self, body: ReceiptBody) -> None:
        me = self.ledger.peer_id_bytes
        peer, head = ((body.responder, body.responder_head) if body.initiator == me
                      else (body.initiator, body.initiator_head))
        known = self._heads.get(peer)
        if known is None or head[0] > known[0]:  # concurrent exchanges finish in any order
            self._heads[peer] = head

    def peer_head(self, peer: bytes) -> tuple[int, bytes] | None:
        return self._heads.get(peer)

    async def record_receipt(self, receipt: dict[str, bytes],
                             during: Callable[[], None] | None = None) -> Record:
        """Append a doubly signed receipt (write + fsync in a worker thread). `during`, when
        given, runs on the event loop while the thread writes (the exchange's merge: the
        peer's signature has verified, so merging no longer waits for the disk). Returns once
        the record is on disk, also when `during` raises or the caller is cancelled."""
        async with self._limiter:  # appends stay one at a time, in order
            done = trio.Event()
            result: list[Record | BaseException] = []
            token = trio.lowlevel.current_trio_token()

            def write() -> None:  # in the worker thread
                try:
                    result.append(self.ledger.append("receipt", dict(receipt)))
                except BaseException as exc:  # re-raised on the event loop below
                    result.append(exc)

            # Started here and now (not from a new task), so the write is under way while
            # `during` runs.
            trio.lowlevel.start_thread_soon(write, lambda _: token.run_sync_soon(done.set))
            try:
                if during is not None:
                    during()
            finally:
                with trio.CancelScope(shield=True):
                    await done.wait()
        rec = result[0]
        if isinstance(rec, BaseException):
            raise rec
        self._remember(ReceiptBody.from_bytes(receipt["body"]))
        return rec

    async def append(self, kind: str, data: dict[str, Any]) -> Record:
        return await trio.to_thread.run_sync(self.ledger.append, kind, data,
                                             limiter=self._limiter)

    def record_data_sync(self, data_hash: bytes, samples: int, task_config: dict[str, Any]
                         ) -> Record | None:
        """At start (before the event loop serves peers): a data record unless unchanged."""
        data = {"dataset_hash": data_hash, "samples": samples, "task": task_config}
        last = self.ledger.last_of_kind.get("data")
        if last is not None and last.data == data:
            return None
        return self.ledger.append("data", data)

    async def lineage(self, peer_names: dict[bytes, str], latest: int = 20) -> dict[str, Any]:
        """The summary of `gossipctl provenance`; reads the ledger file in a worker thread."""
        return await trio.to_thread.run_sync(self._lineage, peer_names, latest,
                                             limiter=self._limiter)

    def _lineage(self, peer_names: dict[bytes, str], latest: int) -> dict[str, Any]:
        records = self.ledger.read()
        me = self.ledger.peer_id_bytes
        contributions: Counter[str] = Counter()
        samples: Counter[str] = Counter()
        exchanges: list[dict[str, Any]] = []
        for rec in records:
            if rec.kind != "receipt":
                continue
            body = ReceiptBody.from_bytes(rec.data["body"])
            mine_initiator = body.initiator == me
            other = body.responder if mine_initiator else body.initiator
            name = peer_names.get(other, other.hex())
            contributions[name] += 1
            samples[name] += body.responder_samples if mine_initiator else body.initiator_samples
            exchanges.append({
                "seq": rec.seq, "peer": name, "exchange_id": body.exchange_id.hex(),
                "time_ms": body.time_ms,
                "my_step": body.initiator_step if mine_initiator else body.responder_step,
                "peer_step": body.responder_step if mine_initiator else body.initiator_step,
                "role": "initiator" if mine_initiator else "responder",
            })
        seq, head = self.ledger.head
        return {
            "ledger": str(self.ledger.path),
            "head": {"seq": seq, "hash": head.hex()},
            "records": len(records),
            "receipts": len(exchanges),
            "contributors": [{"peer": p, "exchanges": n, "samples": samples[p]}
                             for p, n in contributions.most_common()],
            "latest_exchanges": exchanges[-latest:],
            "data": [r.as_dict() for r in records if r.kind == "data"][-5:],
            "checkpoints": [r.as_dict() for r in records if r.kind == "checkpoint"][-5:],
        }
