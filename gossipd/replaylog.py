"""The replay table on disk: `<state_dir>/replay.bin`, so a restart does not reopen the window.

Rules:
- A responder's accepted initiator Hello is appended (24 bytes, O_APPEND) before the node answers
  it. A write that returned survives a crash of the process (the kernel holds it); a torn last
  record is ignored at the next start, and its exchange was never answered.
- At start the file is read, records older than the window are dropped, and the file is rewritten
  compacted (write to a temporary file, then rename: never a half-written table). It is compacted
  again whenever it holds more than twice the records still in memory.
- The append runs on the trio thread: it is one small write to the page cache, no fsync, far
  cheaper than the signature check that precedes it.
"""

from __future__ import annotations

import os
from pathlib import Path

from protocol.replay import DEFAULT_CAPACITY, RECORD_LEN, ReplayGuard

FILE_NAME = "replay.bin"
MIN_COMPACT_RECORDS = 4096


class ReplayLog:
    """A ReplayGuard whose accepted entries are persisted; satisfies protocol.replay.ReplayCheck."""

    def __init__(self, path: Path, window_ms: int, now_ms: int,
                 capacity: int = DEFAULT_CAPACITY) -> None:
        self.path = path
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = b""
        self.guard = ReplayGuard.restore(data, now_ms, window_ms, capacity)
        self.restored = len(self.guard)
        self._fd = -1
        self._records = 0
        self._compact()

    def _compact(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        tmp = self.path.with_name(self.path.name + ".tmp")
        dump = self.guard.dump()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, dump)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND, 0o600)
        self._records = len(dump) // RECORD_LEN

    def check(self, exchange_id: bytes, time_ms: int, now_ms: int) -> None:
        self.guard.check(exchange_id, time_ms, now_ms)
        os.write(self._fd, ReplayGuard.record(exchange_id, time_ms))
        self._records += 1
        if self._records > max(MIN_COMPACT_RECORDS, 2 * len(self.guard)):
            self._compact()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
