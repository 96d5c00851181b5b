"""The ledger's index, `<state_dir>/ledger.idx`: where the ledger was whole, sealed and fsync'd
at the last start or clean stop, and what a start needs from the records before that point.

Rules:
- Why: a start must not read the whole ledger (a busy node writes ~350,000 records a day). With
  the index it checks only the records after the index's point: their links from the record
  the index names, and the last signature, as it did for the whole file before.
- Written at each start (after the ledger's check and seal) and at each clean stop, by
  writing a temporary file, fsync and rename: an index is whole or absent. A SIGKILL leaves the
  index of the last start, still right (the ledger only grows), and the next start checks
  the records since.
- Trusted only as far as it matches: the record at its offset must have its hash, sequence
  number and a signature, and so must the last record of each kind it names; otherwise (a
  ledger moved aside, cut, restored from a backup, an index from another ledger) the start
  reads the whole file, as without one. It is a cache of the ledger, never a source of truth:
  `gossipctl provenance verify` checks every record, and deleting the file is always safe.
- What a start then does not re-check: damage to records before the index's point (bit rot)
  is found by `verify`, not at start.
- Contents (msgpack): version, the resume point (size, offset, seq, hash), the newest body
  digests (at most KEEP_DIGESTS, 128 KiB), the offset and hash of the last record of each
  kind, and the last ledger head each peer showed (for the next exchange's check).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import msgpack

from gossipd.ledger import KEEP_DIGESTS, KINDS, Ledger, Resume

FILE_NAME = "ledger.idx"
VERSION = 1
MAX_BYTES = 64 << 20  # a sane bound on what is read back (peer heads of many peers)

log = logging.getLogger("gossipd.ledger_index")

Heads = dict[bytes, tuple[int, bytes]]


def index_path(ledger_path: Path) -> Path:
    return ledger_path.with_name(FILE_NAME)


def _h32(v: Any) -> bool:
    return isinstance(v, bytes) and len(v) == 32


def _n(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def read_index(ledger_path: Path) -> tuple[Resume, Heads] | None:
    """The index beside this ledger, or None (missing, unreadable, or not well formed)."""
    path = index_path(ledger_path)
    try:
        if path.stat().st_size > MAX_BYTES:
            return None
        obj = msgpack.unpackb(path.read_bytes(), raw=False, strict_map_key=False)
    except FileNotFoundError:
        return None
    except Exception as exc:  # a damaged index is only a slower start
        log.warning("ledger index %s unreadable (%s); the whole ledger will be read", path, exc)
        return None
    try:
        if obj["v"] != VERSION:
            return None
        size, offset, seq, head = obj["size"], obj["offset"], obj["seq"], obj["hash"]
        digests, kinds, peers = obj["digests"], obj["kinds"], obj["heads"]
        ok = (all(_n(x) for x in (size, offset, seq)) and offset < size and _h32(head)
              and isinstance(digests, list) and len(digests) <= KEEP_DIGESTS
              and all(_h32(d) for d in digests)
              and isinstance(kinds, dict) and all(
                  k in KINDS and isinstance(v, list) and len(v) == 2 and _n(v[0]) and _h32(v[1])
                  for k, v in kinds.items())
              and isinstance(peers, list) and all(
                  isinstance(p, list) and len(p) == 3 and isinstance(p[0], bytes) and _n(p[1])
                  and _h32(p[2]) for p in peers))
    except (KeyError, TypeError):
        ok = False
    if not ok:
        log.warning("ledger index %s is not well formed; the whole ledger will be read", path)
        return None
    resume = Resume(size, offset, seq, head, list(digests),
                    {k: (v[0], v[1]) for k, v in kinds.items()})
    return resume, {p[0]: (p[1], p[2]) for p in peers}


def write_index(ledger: Ledger, heads: Heads) -> bool:
    """Write the index at the ledger's current point, if it is whole, sealed and fsync'd
    (after a start's seal, or `close`); False when it is not, or the write failed (logged: the
    next start is only slower)."""
    point = ledger.resume_point()
    if point is None:
        return False
    blob = msgpack.packb({
        "v": VERSION, "size": point.size, "offset": point.offset, "seq": point.seq,
        "hash": point.hash, "digests": point.digests,
        "kinds": {k: [o, h] for k, (o, h) in point.kinds.items()},
        "heads": [[p, s, h] for p, (s, h) in heads.items()],
    }, use_bin_type=True)
    path = index_path(ledger.path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("ledger index %s not written: %s (the next start reads the whole ledger)",
                    path, exc)
        return False
    return True
