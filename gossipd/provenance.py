"""Provenance: what this node's ledger says about its model, and the records it adds.

Rules:
- At start the node records the hash of its local data set and its task config (a `data` record)
  when they differ from the last such record: a model can later be tied to the data that
  trained it without the data leaving the node.
- Every saved checkpoint adds a `checkpoint` record (parameter hash, step).
- Every completed exchange adds a `receipt` record signed by both peers (protocol/receipt.py),
  followed by a `refused` record when this node did not merge the peer's parameters.
- `lineage()` summarises the ledger for `gossipctl provenance`: contributing peers with their
  exchange and sample counts, the latest exchanges, data and checkpoints.
- An exchange only queues its receipt (`record_receipt_soon`, a few microseconds) and, once
  its stream is closed, wakes the ledger's writer (`write_soon`), a trio system task that
  writes it at the loop's next turn, so writing the record (~10-50 us, unsigned: the fsync
  thread's seal signs for a whole batch, gossipd/ledger.py) is never part of an exchange's
  time. What a kill can take back is what it can take back mid-append: the record of the
  exchange that just ended, before that turn.
- Each write is one small write of a whole record, no fsync: a killed process loses nothing
  written, and a torn last record is cut at the next start. A worker thread fsyncs behind the
  writes within FSYNC_INTERVAL_S, one fsync for everything written meanwhile (group commit),
  and moves the durable head, which is the head the node shows peers. So the disk's latency
  never sits on an exchange's path, and a power cut can only take back records no peer has
  seen a head of. `append` (checkpoint records) and `flush` write what is queued first, then
  wait for the fsync; `close` writes it too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from gossipd.ledger import Ledger, Record
from gossipd.ledger_index import read_index, write_index
from protocol.crypto import ed25519_public_key_from_peer_id
from protocol.receipt import ReceiptBody

# A receipt waiting for its write: the receipt, its parsed body, why it was refused (or None).
_Queued = tuple[dict[str, bytes], ReceiptBody, str | None]

MAX_KEYS = 4096  # peer keys remembered (more members than that: the cache starts over)
# Records written are fsync'd within this long (at once for `append`/`flush`): the most a power
# cut can take back, and how far the head a node announces may trail its last record.
FSYNC_INTERVAL_S = 0.25
PROGRESS_EVERY = 20_000  # records between progress reports while a ledger is opened

log = logging.getLogger("gossipd.provenance")


def _remember(heads: dict[bytes, tuple[int, bytes]], me: bytes, body: ReceiptBody) -> None:
    """Keep the newest head the peer of this receipt showed."""
    peer, head = ((body.responder, body.responder_head) if body.initiator == me
                  else (body.initiator, body.initiator_head))
    _keep_newest(heads, peer, head)


def _keep_newest(heads: dict[bytes, tuple[int, bytes]], peer: bytes,
                 head: tuple[int, bytes]) -> None:
    known = heads.get(peer)
    if known is None or head[0] > known[0]:  # concurrent exchanges finish in any order
        heads[peer] = head


class _Waiter:
    """Set from the fsync thread, awaited on the event loop."""

    def __init__(self) -> None:
        self.event = trio.Event()
        self.token: trio.lowlevel.TrioToken | None = None
        self.error: BaseException | None = None

    def done(self, error: BaseException | None) -> None:
        self.error = error
        assert self.token is not None
        self.token.run_sync_soon(self.event.set)

    async def wait(self) -> None:
        with trio.CancelScope(shield=True):  # the fsync is under way anyway
            await self.event.wait()
        if self.error is not None:
            raise self.error


class Provenance:
    @classmethod
    def open(cls, path: Path, seed: bytes, peer_id_bytes: bytes,
             progress: Callable[[int], None] | None = None,
             every: int = PROGRESS_EVERY) -> Provenance:
        """Open the ledger and learn the peers' heads from it in the same pass; `progress`
        hears the number of records checked every `every` records (a long ledger takes a
        while: ~40 us a record here)."""
        index = read_index(path)  # where the last start or clean stop left it, if it matches
        heads: dict[bytes, tuple[int, bytes]] = {}
        checked = 0

        def see(rec: Record) -> None:
            nonlocal checked
            if rec.kind == "receipt":
                _remember(heads, peer_id_bytes, ReceiptBody.from_bytes(rec.data["body"]))
            checked += 1
            if progress is not None and checked % every == 0:
                progress(checked)

        ledger = Ledger(path, seed, peer_id_bytes, on_record=see,
                        resume=index[0] if index is not None else None)
        if index is not None and ledger.resumed:  # the heads of the records not read
            for peer, head in index[1].items():
                _keep_newest(heads, peer, head)
        prov = cls(ledger, heads)
        write_index(ledger, prov.heads_snapshot())  # the next start begins here
        return prov

    def __init__(self, ledger: Ledger,
                 heads: dict[bytes, tuple[int, bytes]] | None = None) -> None:
        """`heads`: the peers' heads as the ledger's receipts hold them, when the caller read
        them already (`open`); else they are read here."""
        self.ledger = ledger
        self._limiter = trio.CapacityLimiter(1)  # lineage reads, one at a time
        self._cond = threading.Condition()
        self._waiters: list[_Waiter] = []
        self._dirty = False  # written since the last fsync began
        self._syncing = False
        self._closing = False
        self._thread: threading.Thread | None = None
        self.write_errors = 0
        self._queued: list[_Queued] = []
        self._writer_token: trio.lowlevel.TrioToken | None = None  # the run it serves
        self._lot = trio.lowlevel.ParkingLot()  # where the writer waits for work
        # What writing receipts has cost the event loop: seconds in all, and records written.
        self.write_s = 0.0
        self.records_written = 0
        self._keys: dict[bytes, bytes] = {}
        # The last ledger head each peer showed us, as our own receipts recorded it.
        self._heads: dict[bytes, tuple[int, bytes]] = {} if heads is None else heads
        if heads is None:
            for rec in ledger.iter():  # once, at start (streamed: never all in memory)
                if rec.kind == "receipt":
                    self._remember(ReceiptBody.from_bytes(rec.data["body"]))

    def _remember(self, body: ReceiptBody) -> None:
        _remember(self._heads, self.ledger.peer_id_bytes, body)

    def peer_head(self, peer: bytes) -> tuple[int, bytes] | None:
        return self._heads.get(peer)

    def heads_snapshot(self) -> dict[bytes, tuple[int, bytes]]:
        return dict(self._heads)

    def peer_key(self, peer: bytes) -> bytes:
        """The Ed25519 key in a peer ID, checked once per peer (the point check costs as much
        as a signature); AuthenticationError for an ID without a usable key."""
        key = self._keys.get(peer)
        if key is None:
            if len(self._keys) >= MAX_KEYS:
                self._keys.clear()
            key = self._keys[peer] = ed25519_public_key_from_peer_id(peer)
        return key

    def record_receipt_soon(self, receipt: dict[str, bytes], refused: str | None = None,
                            body: ReceiptBody | None = None) -> None:
        """Queue a doubly signed receipt (and, when we did not merge the peer's parameters, a
        `refused` record saying why) for the ledger's writer task, which `write_soon` wakes
        (the exchange calls it once its stream is closed); `body` is the receipt's parsed body
        when the caller has it."""
        parsed = ReceiptBody.from_bytes(receipt["body"]) if body is None else body
        self._remember(parsed)  # at once: the next exchange with this peer checks against it
        self._queued.append((receipt, parsed, refused))

    def write_soon(self) -> None:
        """Have what is queued written at the event loop's next turn; without a running event
        loop (a tool, a test), now. The fsync follows in the worker thread."""
        if not self._queued:
            return
        try:
            token = trio.lowlevel.current_trio_token()
        except RuntimeError:
            self.write_queued()
            return
        if token is not self._writer_token:  # first use in this run: start its writer
            lot = trio.lowlevel.ParkingLot()
            try:
                trio.lowlevel.spawn_system_task(self._writer, lot,
                                                name="gossipd.provenance.writer")
            except RuntimeError:  # the run is ending (no new tasks): write now instead
                self.write_queued()
                return
            self._writer_token, self._lot = token, lot
        else:
            self._lot.unpark_all()  # (a socket write to wake the loop would cost ~13 us)

    async def _writer(self, lot: trio.lowlevel.ParkingLot) -> None:
        """Write what is queued, then wait to be woken; as long as the run lasts (a system
        task: cancelled when the run ends, and `close` writes what is left)."""
        while True:
            self.write_queued()
            await lot.park()

    def write_queued(self) -> None:
        """Write every queued receipt, one unsigned record each (plus its `refused` record).
        Nothing may escape (it runs in a system task, whose exception would end the run): a
        write that fails is logged and counted, and the exchange itself is done."""
        if not self._queued:
            return
        started = time.perf_counter()
        queued, self._queued = self._queued, []
        written = 0
        for receipt, body, refused in queued:
            try:
                self.ledger.append("receipt", receipt, fsync=False, sign=False)
                written += 1
                if refused is not None:
                    self.ledger.append("refused", {"exchange_id": body.exchange_id,
                                                   "reason": refused[:200]},
                                       fsync=False, sign=False)
                    written += 1
            except Exception as exc:  # OSError (disk full, file closed), or worse: never raise
                self.write_errors += 1
                log.error("ledger %s: could not append a receipt: %s", self.ledger.path, exc)
        self.records_written += written
        self.write_s += time.perf_counter() - started
        if written:
            try:
                self._sync_soon(None)
            except Exception as exc:  # e.g. no thread could be started: logged, not raised
                self.write_errors += 1
                log.error("ledger %s: could not schedule the fsync: %s", self.ledger.path, exc)

    async def append(self, kind: str, data: dict[str, Any]) -> Record:
        """Append one record (after the queued receipts); returns once it is on disk
        (fsync'd)."""
        self.write_queued()
        try:
            rec = self.ledger.append(kind, data, fsync=False)
        except OSError:
            self.write_errors += 1
            raise
        await self.flush()
        return rec

    async def flush(self) -> None:
        """Write what is queued, then wait until every record written is fsync'd."""
        self.write_queued()
        with self._cond:
            if (not self._dirty and not self._syncing
                    and self.ledger.durable_head[0] >= self.ledger.head[0]):
                return
        waiter = _Waiter()
        self._sync_soon(waiter)
        await waiter.wait()

    def _sync_soon(self, waiter: _Waiter | None) -> None:
        """Mark the ledger as written since the last fsync. The fsync thread (started on first
        use, then kept) is woken only when the ledger turns dirty or someone waits: waking a
        thread for every record cost the event loop ~0.7 ms an exchange (GIL hand-offs)."""
        with self._cond:
            wake = waiter is not None or not self._dirty
            self._dirty = True
            if waiter is not None:
                waiter.token = trio.lowlevel.current_trio_token()
                self._waiters.append(waiter)
            if self._thread is None:
                self._thread = threading.Thread(target=self._sync_loop, name="ledger-fsync",
                                                daemon=True)
                self._thread.start()
            if wake:
                self._cond.notify()

    def _sync_loop(self) -> None:
        """The fsync thread: once the ledger is dirty, gather writes for up to
        FSYNC_INTERVAL_S (less when someone waits or the node stops), then one fsync for
        all of them; until closed."""
        while True:
            with self._cond:
                self._syncing = False
                while not self._dirty and not self._closing:
                    self._cond.wait()
                if not self._dirty:
                    return  # closing, and nothing left to sync
                deadline = time.monotonic() + FSYNC_INTERVAL_S
                while not self._waiters and not self._closing:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                self._dirty, self._syncing = False, True
                waiters, self._waiters = self._waiters, []
            error: BaseException | None = None
            try:
                self.ledger.sync()
            except OSError as exc:  # disk gone, file closed: said to waiters, logged
                error = exc
                self.write_errors += 1
                log.error("ledger %s: fsync failed: %s", self.ledger.path, exc)
            for waiter in waiters:
                waiter.done(error)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, let the fsync thread finish (bounded), close the file."""
        self.write_queued()
        with self._cond:
            self._closing = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        self.ledger.close()
        write_index(self.ledger, self.heads_snapshot())  # the next start begins here

    async def sealed_extent(self) -> dict[str, Any]:
        """Seal and fsync everything written, then where a whole, sealed copy of the ledger
        ends: its path, the head there and the file's size up to it (for an export)."""
        await self.flush()
        seq, head = self.ledger.durable_head
        return {"path": str(self.ledger.path), "seq": seq, "head": head.hex(),
                "bytes": self.ledger.durable_size}

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
        self.write_queued()
        return await trio.to_thread.run_sync(self._lineage, peer_names, latest,
                                             limiter=self._limiter)

    def _lineage(self, peer_names: dict[bytes, str], latest: int) -> dict[str, Any]:
        """One streaming pass over the ledger (memory flat however long it is). A `refused`
        record follows its receipt, so an exchange listed as merged is corrected when one
        comes."""
        me = self.ledger.peer_id_bytes
        not_merged: Counter[str] = Counter()
        contributions: Counter[str] = Counter()
        samples: Counter[str] = Counter()
        exchanges: deque[dict[str, Any]] = deque(maxlen=latest)
        data: deque[dict[str, Any]] = deque(maxlen=5)
        checkpoints: deque[dict[str, Any]] = deque(maxlen=5)
        records = receipts = 0
        since: int | None = None
        pending: dict[bytes, tuple[str, int, dict[str, Any]]] = {}  # the newest receipts
        for rec in self.ledger.iter():
            records += 1
            since = rec.time_ms if since is None else since
            if rec.kind == "data":
                data.append(rec.as_dict())
            elif rec.kind == "checkpoint":
                checkpoints.append(rec.as_dict())
            elif rec.kind == "refused":
                undo = pending.get(rec.data.get("exchange_id", b""))
                if undo is not None and undo[2]["merged"]:
                    name, n, entry = undo
                    contributions[name] -= 1
                    samples[name] -= n
                    not_merged[name] += 1
                    entry["merged"] = False
            elif rec.kind == "receipt":
                receipts += 1
                body = ReceiptBody.from_bytes(rec.data["body"])
                mine_initiator = body.initiator == me
                other = body.responder if mine_initiator else body.initiator
                name = peer_names.get(other, other.hex())
                n = body.responder_samples if mine_initiator else body.initiator_samples
                contributions[name] += 1
                samples[name] += n
                entry = {
                    "seq": rec.seq, "peer": name, "exchange_id": body.exchange_id.hex(),
                    "time_ms": body.time_ms,
                    "my_step": body.initiator_step if mine_initiator else body.responder_step,
                    "peer_step": body.responder_step if mine_initiator else body.initiator_step,
                    "role": "initiator" if mine_initiator else "responder",
                    "merged": True,
                }
                exchanges.append(entry)
                if len(pending) >= 64:  # its `refused` record comes right after it
                    pending.pop(next(iter(pending)))
                pending[body.exchange_id] = (name, n, entry)
        seq, head = self.ledger.head
        return {
            "ledger": str(self.ledger.path),
            "head": {"seq": seq, "hash": head.hex()},
            "records": records,
            "since_ms": since,  # genesis: initialisation
            "receipts": receipts,
            "contributors": [{"peer": p, "exchanges": n, "samples": samples[p]}
                             for p, n in contributions.most_common() if n > 0],
            "not_merged": dict(not_merged),
            "latest_exchanges": list(exchanges),
            "data": list(data),
            "checkpoints": list(checkpoints),
        }
