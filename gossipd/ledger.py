"""The provenance ledger: an append-only, hash-chained, signed log in `<state_dir>/ledger.bin`.

Record layout on disk (all integers big-endian):

    u32(len(body)) || body || hash[32] || sig[64]
    body = msgpack {"seq": int, "prev": bin[32], "kind": str, "time_ms": int, "data": map}
    hash = BLAKE2b-256(person="gossipd/ledger\\0\\0", data=prev || BLAKE2b-256(body))
    sig  = Ed25519 signature of the node's identity key over hash, or 64 zero bytes (unsigned)

Rules:
- Record 0 is `genesis` (prev = 32 zero bytes) and names the node; every later record's `prev`
  is the previous record's hash and its `seq` is one more. Changing, removing, reordering or
  inserting a record breaks a link or a signature; `verify_file` names the first bad record.
- Group signing: receipt records are written unsigned (signing is half a record's cost, and an
  exchange writes one), and `sync` seals them: before each fsync, when the last record is
  unsigned, it appends a signed `seal` record, whose signature covers every record before it
  through the chain. So the last record of a ledger is always signed when synced, a durable
  (announced) head is always signed, and verification refuses a ledger whose last record is
  not. A killed process leaves an unsigned tail (nothing written is lost); the next start
  checks the links and the last signature and seals it. Until then those records are as safe
  as the file: at most FSYNC_INTERVAL_S of them (gossipd/provenance.py), the ones a power
  cut could take back anyway. Genesis, data and checkpoint records are signed as written.
- Hashing the body's digest rather than the body lets a node prove to a peer that its ledger
  only grew since the head the peer last saw: it sends the body digests of the newer records and
  the peer folds them onto the old head (`fold`); a rewritten history cannot reach the new head.
- Appends are whole records written with one write each to an O_APPEND descriptor, fsync'd at
  once or later (`sync`: one fsync for everything written since, e.g. from another thread).
  A crash mid-append leaves a torn tail, which `open()` detects (short read, bad hash) and
  cuts off: only that record is lost, never an earlier one. `durable_head` is the head as of
  the last fsync: what the node shows peers, so a power cut can never take back a head a peer
  has seen (a killed process loses nothing written: the kernel holds it).
- Kinds: genesis, receipt (an exchange receipt signed by both peers: protocol/receipt.py),
  checkpoint (parameter hash and step), data (hash of the local data set and task config),
  peer-head (a peer's ledger head as the peer itself signed it), refused (right after a
  receipt whose parameters this node did not merge: the exchange id and why), seal (no data:
  its signature signs the records before it).
- File I/O: the daemon appends on the event loop (one small write, no fsync: ~10-30
  microseconds unsigned) and seals and fsyncs from a worker thread (gossipd/provenance.py);
  reads happen at start and for `gossipctl provenance`, streamed over a memory map (never a
  list of every record). A start reads only the records after the point its index names
  (`Resume`, gossipd/ledger_index.py) when the file matches it, else all. Appends (the loop's,
  the thread's seal) take the write lock; the state both read (heads, digests) is guarded by
  a lock.
- Bytes per exchange: one receipt record (~660 bytes: a fixed-size receipt body and two
  signatures), plus at most ~390 for a `refused` record (reason cut at 200 characters) when
  the peer's vector was not merged, plus at most one seal (182 bytes), and seals come at most
  once every FSYNC_INTERVAL_S however fast exchanges are.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from protocol.crypto import (
    Signer,
    ed25519_public_key_from_peer_id,
    public_key_from_seed,
    sign,
    verify,
)
from protocol.errors import AuthenticationError, ProtocolError
from protocol.framing import safe_unpackb

FILE_NAME = "ledger.bin"
PERSON = b"gossipd/ledger\x00\x00"
ZERO = bytes(32)
KINDS = ("genesis", "receipt", "checkpoint", "data", "peer-head", "refused", "seal")
UNSIGNED = bytes(64)  # the sig of a record that a later signed record covers
MAX_BODY = 64 * 1024
_LEN = struct.Struct(">I")
_TAIL = 32 + 64
# Digests a node can send a peer to prove its ledger only grew (= protocol MAX_LEDGER_DIGESTS).
KEEP_DIGESTS = 4096


class LedgerError(Exception):
    """A ledger that does not verify; the message names the record and what is wrong."""


@dataclass(frozen=True)
class Record:
    seq: int
    prev: bytes
    kind: str
    time_ms: int
    data: dict[str, Any]
    hash: bytes
    sig: bytes
    digest: bytes  # BLAKE2b-256 of the body

    @property
    def signed(self) -> bool:
        return self.sig != UNSIGNED

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "prev": self.prev.hex(), "kind": self.kind,
                "time_ms": self.time_ms, "data": _hexify(self.data), "hash": self.hash.hex()}


def _hexify(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _hexify(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_hexify(v) for v in value]
    return value


def body_digest(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=32).digest()


def link(prev: bytes, digest: bytes) -> bytes:
    return hashlib.blake2b(prev + digest, digest_size=32, person=PERSON).digest()


def record_hash(prev: bytes, body: bytes) -> bytes:
    return link(prev, body_digest(body))


def fold(head: bytes, digests: list[bytes]) -> bytes:
    """The head a ledger at `head` reaches after records with these body digests."""
    for d in digests:
        head = link(head, d)
    return head


def encode_record(seed: bytes | Signer | None, seq: int, prev: bytes, kind: str, time_ms: int,
                  data: dict[str, Any]) -> tuple[bytes, Record]:
    """The bytes to append for one new record, and the record (signed with the identity seed,
    or faster with a Signer made of it; None: unsigned, for a later seal to cover)."""
    if kind not in KINDS:
        raise ValueError(f"unknown ledger record kind {kind!r}")
    body: bytes = msgpack.packb({"seq": seq, "prev": prev, "kind": kind, "time_ms": time_ms,
                                 "data": data}, use_bin_type=True)
    if len(body) > MAX_BODY:
        raise ValueError(f"ledger record of {len(body)} bytes exceeds {MAX_BODY}")
    digest = body_digest(body)
    h = link(prev, digest)
    sig = (UNSIGNED if seed is None else seed.sign(h) if isinstance(seed, Signer)
           else sign(seed, h))
    return (_LEN.pack(len(body)) + body + h + sig,
            Record(seq, prev, kind, time_ms, data, h, sig, digest))


def _decode_body(body: bytes, where: str) -> tuple[int, bytes, str, int, dict[str, Any]]:
    try:
        obj = safe_unpackb(body)
    except ProtocolError as exc:
        raise LedgerError(f"{where}: undecodable body: {exc}") from None
    if not isinstance(obj, dict):
        raise LedgerError(f"{where}: body is not a map")
    seq, prev, kind = obj.get("seq"), obj.get("prev"), obj.get("kind")
    time_ms, data = obj.get("time_ms"), obj.get("data")
    if (not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(prev, bytes)
            or len(prev) != 32 or kind not in KINDS or not isinstance(time_ms, int)
            or not isinstance(data, dict)):
        raise LedgerError(f"{where}: malformed record fields")
    return seq, prev, str(kind), time_ms, data


def iter_records(blob: bytes | mmap.mmap, pos: int = 0
                 ) -> Iterator[tuple[int, int, Record | None]]:
    """(offset, end, record) for each whole record from byte `pos` on; (offset, end, None)
    where a damaged or torn record starts (nothing after it is trusted)."""
    while pos < len(blob):
        if pos + _LEN.size > len(blob):
            yield pos, len(blob), None
            return
        (n,) = _LEN.unpack_from(blob, pos)
        end = pos + _LEN.size + n + _TAIL
        if n > MAX_BODY or end > len(blob):
            yield pos, len(blob), None
            return
        body = blob[pos + _LEN.size : pos + _LEN.size + n]
        h = blob[pos + _LEN.size + n : pos + _LEN.size + n + 32]
        sig = blob[end - 64 : end]
        try:
            seq, prev, kind, time_ms, data = _decode_body(body, f"record at byte {pos}")
        except LedgerError:
            yield pos, end, None
            return
        if record_hash(prev, body) != h:
            yield pos, end, None
            return
        yield pos, end, Record(seq, prev, kind, time_ms, data, h, sig, body_digest(body))
        pos = end


def _owner_key(records: list[Record], peer_id_bytes: bytes | None) -> bytes:
    if not records:
        raise LedgerError("empty ledger: no genesis record")
    genesis = records[0]
    if genesis.kind != "genesis" or genesis.seq != 0 or genesis.prev != ZERO:
        raise LedgerError("record 0 is not a genesis record")
    owner = genesis.data.get("peer_id")
    if not isinstance(owner, bytes) or (peer_id_bytes is not None and owner != peer_id_bytes):
        raise LedgerError("genesis does not name this ledger's owner")
    try:
        return ed25519_public_key_from_peer_id(owner)
    except AuthenticationError as exc:
        raise LedgerError(f"genesis names an unusable peer ID: {exc}") from None


def _check_link(i: int, rec: Record, prev: bytes) -> None:
    """Record i must carry sequence number i and link to the hash before it."""
    if rec.seq != i:
        raise LedgerError(f"record {i}: sequence number {rec.seq} (removed or reordered)")
    if rec.prev != prev:
        raise LedgerError(f"record {i}: does not link to record {i - 1}")


def _check_links(records: list[Record]) -> None:
    prev = ZERO
    for i, rec in enumerate(records):
        _check_link(i, rec, prev)
        prev = rec.hash


def _last_signed(records: list[Record]) -> int:
    """Index of the last signed record (genesis always is)."""
    for i in range(len(records) - 1, -1, -1):
        if records[i].signed:
            return i
    raise LedgerError("record 0: genesis is not signed")


def verify_records(records: list[Record], peer_id_bytes: bytes | None = None) -> None:
    """Links, sequence numbers and every signature of a whole ledger, genesis first, and both
    signatures of every receipt; LedgerError naming the first record that fails. Unsigned
    records are covered by the next signed one (through the chain); the last must be signed.
    The signer is the peer named in genesis (or `peer_id_bytes` when given, which genesis must
    then match)."""
    from protocol.receipt import verify_receipt

    key = _owner_key(records, peer_id_bytes)
    _check_links(records)
    last = _last_signed(records)
    if last != len(records) - 1:
        raise LedgerError(
            f"records {last + 1}-{len(records) - 1} are not sealed: nothing signed covers them "
            f"(appended without the owner's key, or copied from a running node less than "
            f"a second after they were written: use `gossipctl provenance export`, which "
            f"seals first, or stop the node first)")
    for i, rec in enumerate(records):
        if not rec.signed:
            if rec.kind in ("genesis", "seal"):
                raise LedgerError(f"record {i}: an unsigned {rec.kind} record")
        else:
            try:
                verify(key, rec.hash, rec.sig)
            except AuthenticationError:
                raise LedgerError(f"record {i}: bad signature (forged or altered)") from None
        if rec.kind == "receipt":
            try:
                verify_receipt(rec.data)
            except ProtocolError as exc:
                raise LedgerError(f"record {i}: receipt does not verify: {exc}") from None


@contextmanager
def _mapped(path: Path) -> Iterator[bytes | mmap.mmap]:
    """The file's bytes without reading them all into memory (b"" when empty or missing).
    Ledgers are only ever cut at open, before anything maps them."""
    if not path.exists() or path.stat().st_size == 0:
        yield b""
        return
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        yield m


def iter_file(path: Path) -> Iterator[Record]:
    """The whole records of a ledger file, one at a time (memory stays flat however long the
    ledger); stops at a torn or damaged record."""
    with _mapped(path) as blob:
        for _offset, _end, rec in iter_records(blob):
            if rec is None:
                return
            yield rec


@dataclass
class _Scan:
    """What opening a ledger keeps of it: no list of records."""

    count: int = 0
    good: int = 0  # byte offset where the whole records end
    genesis: Record | None = None
    last: Record | None = None
    last_offset: int = 0  # where the last record starts
    last_signed: int = -1  # index of the last signed record
    last_signed_record: Record | None = None
    last_of_kind: dict[str, Record] = field(default_factory=dict)
    kind_offsets: dict[str, int] = field(default_factory=dict)
    digests: deque[bytes] = field(default_factory=lambda: deque(maxlen=KEEP_DIGESTS))


@dataclass(frozen=True)
class Resume:
    """Where a ledger was whole, sealed and fsync'd when its index was written
    (gossipd/ledger_index.py): a start checks only the records after it."""

    size: int  # bytes up to and including the record below
    offset: int  # where that record (the sealed head then) starts
    seq: int
    hash: bytes
    digests: list[bytes]  # the newest body digests up to it
    kinds: dict[str, tuple[int, bytes]]  # the last record of each kind: offset, hash


def _record_at(blob: bytes | mmap.mmap, offset: int, want: bytes) -> tuple[Record, int] | None:
    """The whole record at `offset` when its hash is `want`, and where it ends."""
    for _o, end, rec in iter_records(blob, offset):
        return (rec, end) if rec is not None and rec.hash == want else None
    return None


def _resumed(blob: bytes | mmap.mmap, r: Resume) -> _Scan | None:
    """The scan state at an index's point, every record it names found as named; None when
    the file does not match it (then the whole file is scanned)."""
    if len(blob) < r.size:
        return None
    head = _record_at(blob, r.offset, r.hash)
    genesis = next(iter_records(blob), (0, 0, None))[2]
    if head is None or head[1] != r.size or head[0].seq != r.seq or not head[0].signed \
            or genesis is None:
        return None
    scan = _Scan(count=r.seq + 1, good=r.size, genesis=genesis, last=head[0],
                 last_offset=r.offset, last_signed=r.seq, last_signed_record=head[0])
    for kind, (offset, want) in r.kinds.items():
        found = _record_at(blob, offset, want)
        if found is None or found[0].kind != kind:
            return None
        scan.last_of_kind[kind], scan.kind_offsets[kind] = found[0], offset
    scan.digests.extend(r.digests[-KEEP_DIGESTS:])
    return scan


def _scan(path: Path, on_record: Callable[[Record], None] | None = None,
          resume: Resume | None = None) -> tuple[_Scan, bool]:
    """One pass over a ledger file: links and sequence numbers checked as it goes (as
    `_check_link`), the last records of each kind and the newest digests kept, each whole
    record handed to `on_record`. A bad record followed by more bytes is damage (LedgerError);
    a bad last record is a torn append (not handed on). With `resume`, and a file that matches
    it, only the records after its point; returns whether it did that."""
    with _mapped(path) as blob:
        scan = _resumed(blob, resume) if resume is not None else None
        resumed = scan is not None
        scan = scan if scan is not None else _Scan()
        prev = scan.last.hash if scan.last is not None else ZERO
        size = len(blob)
        for offset, end, rec in iter_records(blob, scan.good):
            if rec is None:
                if end < size:
                    raise LedgerError(
                        f"{path}: record at byte {offset} is damaged and more records follow; "
                        f"this is not a torn append. Keep the file for inspection (gossipctl "
                        f"provenance verify) and move it aside to start a new ledger")
                break
            i = scan.count
            _check_link(i, rec, prev)
            prev = rec.hash
            if i == 0:
                scan.genesis = rec
            if rec.signed:
                scan.last_signed, scan.last_signed_record = i, rec
            scan.last_of_kind[rec.kind], scan.kind_offsets[rec.kind] = rec, offset
            scan.digests.append(rec.digest)
            if on_record is not None:
                on_record(rec)
            scan.last, scan.last_offset, scan.count, scan.good = rec, offset, i + 1, end
    return scan, resumed


def _verify_own(scan: _Scan, peer_id_bytes: bytes) -> None:
    """What a node checks of its own ledger at start, after `_scan` checked the links of the
    records it read: genesis names this node, and the last signed record's signature holds.
    Its hash commits to every record before it, so a record changed without the key breaks a
    link or that signature; re-checking every signature (and receipt, checked when it was
    received) would make a start cost grow with the ledger. Unsigned records after it (a
    killed process's tail) are the node's to seal."""
    assert scan.genesis is not None
    key = _owner_key([scan.genesis], peer_id_bytes)
    rec = scan.last_signed_record
    if rec is None:
        raise LedgerError("record 0: genesis is not signed")
    try:
        verify(key, rec.hash, rec.sig)
    except AuthenticationError:
        raise LedgerError(f"record {scan.last_signed}: bad signature") from None


def read_records(path: Path) -> tuple[list[Record], int]:
    """The whole records of a ledger file, and the byte offset where they end. Only the last
    record can be torn (appends are whole records); a bad record with more bytes after it is
    damage, not a crash: LedgerError, and nothing is cut."""
    blob = path.read_bytes() if path.exists() else b""
    records: list[Record] = []
    good = 0
    for offset, end, rec in iter_records(blob):
        if rec is None:
            if end < len(blob):
                raise LedgerError(
                    f"{path}: record at byte {offset} is damaged and more records follow; "
                    f"this is not a torn append. Keep the file for inspection (gossipctl "
                    f"provenance verify) and move it aside to start a new ledger")
            break
        records.append(rec)
        good = end
    return records, good


def verify_file(path: Path) -> list[Record]:
    """Read and verify an exported or live ledger file. A torn tail is an error here: an
    exported ledger must be whole."""
    blob = path.read_bytes()
    records: list[Record] = []
    for offset, _end, rec in iter_records(blob):
        if rec is None:
            raise LedgerError(f"{path}: damaged or truncated record at byte {offset}")
        records.append(rec)
    verify_records(records)
    return records


class Ledger:
    """This node's ledger: opened (and repaired) at start, appended to as the node works.

    Memory stays bounded however long the node runs: only the head, the last record of each
    kind and the body digests of the newest KEEP_DIGESTS records (up to twice that many
    between trims) are held; `read()` gets the records from the file (in a worker thread when
    the event loop is running)."""

    def __init__(self, path: Path, seed: bytes, peer_id_bytes: bytes,
                 on_record: Callable[[Record], None] | None = None,
                 resume: Resume | None = None) -> None:
        """Open (and repair) the ledger; `on_record` sees every whole record of the file as
        it is read (one pass for whoever needs them too, e.g. Provenance.open). With `resume`
        (the ledger's index) only the records after its point are read, when the file
        matches it; `resumed` says whether it did."""
        self.path = path
        self.signer = Signer(seed)
        self.peer_id_bytes = peer_id_bytes
        if public_key_from_seed(seed) != ed25519_public_key_from_peer_id(peer_id_bytes):
            raise ValueError("ledger seed does not belong to the peer ID")
        size = path.stat().st_size if path.exists() else 0
        scan, self.resumed = _scan(path, on_record, resume)  # streamed: no list of records
        good = scan.good
        self.dropped_bytes = size - good
        self._size = good
        if self.dropped_bytes:
            with open(path, "r+b") as f:  # cut the torn tail: only that record is lost
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())
        if scan.last is not None:
            _verify_own(scan, peer_id_bytes)
        last = scan.last
        self._head = (last.seq, last.hash) if last is not None else (-1, ZERO)
        self._durable = self._head
        self._durable_size = good
        self._sealed = last is None or last.signed  # the last record is signed
        # Unsigned records a killed process left after its last seal (sealed below).
        self.sealed_at_open = 0 if self._sealed else scan.count - 1 - scan.last_signed
        self._lock = threading.Lock()  # the state below, read from any thread
        self._write_lock = threading.Lock()  # appends: the event loop's, the fsync thread's seal
        self.last_of_kind: dict[str, Record] = scan.last_of_kind
        self._kind_offsets = scan.kind_offsets
        self._last_offset = scan.last_offset
        self.checked_at_open = scan.count - (resume.seq + 1 if self.resumed and resume else 0)
        self._digests = list(scan.digests)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        if last is None:
            self.append("genesis", {"peer_id": peer_id_bytes})
        elif not self._sealed:  # a killed process's unsigned tail: ours, checked, sealed now
            self.sync()

    @property
    def head(self) -> tuple[int, bytes]:
        """(seq, hash) of the last record written."""
        return self._head

    @property
    def durable_head(self) -> tuple[int, bytes]:
        """(seq, hash) of the last record fsync'd: the head to show peers."""
        return self._durable

    @property
    def durable_size(self) -> int:
        """Bytes of the file up to and including the durable head: a sealed, whole ledger
        (what `gossipctl provenance export` copies)."""
        with self._lock:
            return self._durable_size

    def __len__(self) -> int:
        return self._head[0] + 1

    def read(self) -> list[Record]:
        return read_records(self.path)[0]

    def iter(self) -> Iterator[Record]:
        """The records on disk one at a time (a long ledger is never all in memory)."""
        return iter_file(self.path)

    def append(self, kind: str, data: dict[str, Any], time_ms: int | None = None, *,
               fsync: bool = True, sign: bool = True) -> Record:
        """Write one record (one write to the O_APPEND descriptor) and, unless told not to,
        fsync it. With fsync=False the record survives a killed process (the kernel has it)
        but not a power cut until the next `sync`; with sign=False it is written unsigned, for
        the next `sync` to seal."""
        with self._write_lock:
            rec = self._append_locked(kind, data, time_ms, sign)
        if fsync:
            self.sync()
        return rec

    def _append_locked(self, kind: str, data: dict[str, Any], time_ms: int | None,
                       sign: bool) -> Record:
        seq, prev = self._head[0] + 1, self._head[1]
        now = time.time_ns() // 1_000_000 if time_ms is None else time_ms
        raw, rec = encode_record(self.signer if sign else None, seq, prev, kind, now, data)
        os.write(self._fd, raw)
        with self._lock:
            self._kind_offsets[kind] = self._last_offset = self._size
            self._size += len(raw)
            self._head = (rec.seq, rec.hash)
            self._sealed = sign
            self.last_of_kind[kind] = rec
            self._digests.append(rec.digest)
            if len(self._digests) >= 2 * KEEP_DIGESTS:  # trimmed now and then, not per record
                del self._digests[:-KEEP_DIGESTS]
        return rec

    def seal(self) -> tuple[int, bytes]:
        """Make the last record a signed one: when it is not, append a `seal` record (its
        signature covers every record before it). Returns the head; any thread."""
        return self._seal()[0]

    def _seal(self) -> tuple[tuple[int, bytes], int]:
        """seal(), and the file's size at that head."""
        with self._write_lock:
            if not self._sealed:
                self._append_locked("seal", {}, None, True)
            return self._head, self._size

    def sync(self) -> tuple[int, bytes]:
        """Seal and fsync everything written so far and move the durable head there; returns
        it. Safe to call from another thread than the writer's (fsync covers every completed
        write)."""
        fd = self._fd
        if fd < 0:  # closed: close() synced everything written
            return self._durable
        head, size = self._seal()
        os.fsync(fd)
        with self._lock:
            if head[0] > self._durable[0]:
                self._durable, self._durable_size = head, size
            return self._durable

    def digests_since(self, seq: int, upto: int | None = None) -> list[bytes] | None:
        """Body digests of the records after `seq` up to and including `upto` (default: the
        head): what a peer that saw our head at `seq` needs to check that the head we showed
        it now (`upto`) only extends it. None when they are older than the KEEP_DIGESTS kept."""
        with self._lock:
            upto = self._head[0] if upto is None else upto
            first_kept = self._head[0] + 1 - len(self._digests)
            start = max(seq + 1, 0)
            if start < first_kept or upto - start + 1 > KEEP_DIGESTS:
                return None
            return self._digests[start - first_kept : upto - first_kept + 1]

    def resume_point(self) -> Resume | None:
        """Where the ledger is whole, sealed and fsync'd now, for its index; None while
        records written since the last fsync are not (take it after `sync` or `close`)."""
        with self._lock:
            if self._durable != self._head or not self._sealed:
                return None
            return Resume(self._size, self._last_offset, self._head[0], self._head[1],
                          self._digests[-KEEP_DIGESTS:],
                          {k: (self._kind_offsets[k], r.hash)
                           for k, r in self.last_of_kind.items()})

    @property
    def size_bytes(self) -> int:
        """Bytes of the ledger file."""
        return self._size

    def close(self) -> None:
        """Seal and fsync what was written and close the file."""
        if self._fd >= 0:
            self.seal()
            fd, self._fd = self._fd, -1
            os.fsync(fd)
            os.close(fd)
            self._durable, self._durable_size = self._head, self._size
