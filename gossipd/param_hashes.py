"""Hashing parameter vectors for receipts without stalling the event loop: ours before the
Hello (`hash_vector`), the peer's piece by piece while it streams in (`ReceivedHash`).

Rules: the BLAKE3 binding releases the GIL on large buffers, so a vector of
HASH_IN_THREAD_BYTES or more is hashed in a worker thread; a smaller one on the event loop,
where its hash costs less than a thread hop. The peer's plain "<f4" data is fed to one hash,
in order, as pieces of at least HASH_PIECE_BYTES arrive, so after its last chunk only the
tail is left to hash.
"""

from __future__ import annotations

import math

import numpy as np
import trio

from protocol.receipt import params_hash, params_hasher
from protocol.session import AveragingSession

# A vector of at least this many bytes is hashed in a worker thread (the binding releases the
# GIL; the peer's while it streams in); a smaller one on the event loop: BLAKE3 hashes 4 MiB
# in ~0.7 ms here, less than what a thread hop costs the loop once both cores are busy.
HASH_IN_THREAD_BYTES = 4 << 20
# The peer's data is handed to the hashing thread in pieces of at least this many bytes (each
# piece one hop; the last piece is hashed after the last chunk).
HASH_PIECE_BYTES = 8 << 20


class ReceivedHash:
    """params_hash of what the peer sends, worked out while it streams: plain "<f4" data piece
    by piece as it arrives (in order, in a worker thread) when the vector is large, anything
    else once it is complete (a small vector on the event loop)."""

    def __init__(self) -> None:
        self.digest: bytes | None = None
        self._hasher = params_hasher()
        self._fed = 0
        self._pieces, self._todo = trio.open_memory_channel[memoryview](math.inf)

    async def hash_pieces(self) -> None:
        """A worker of the swap's nursery: feeds the peer's data to the hash, in order."""
        async with self._todo:
            async for piece in self._todo:
                await trio.to_thread.run_sync(self._hasher.update, piece)

    def arrived(self, session: AveragingSession) -> None:
        """After a non-final chunk: hand what arrived since the last piece to the thread."""
        data = session.partial_params()
        if len(data) - self._fed >= HASH_PIECE_BYTES:
            self._pieces.send_nowait(data[self._fed :])
            self._fed = len(data)

    async def complete(self, session: AveragingSession, remote: np.ndarray) -> None:
        """The peer's vector is complete: finish its hash."""
        if session.received_plain and remote.nbytes >= HASH_IN_THREAD_BYTES:
            rest = remote.data.cast("B")[self._fed :]
            if len(rest):
                self._pieces.send_nowait(rest)
            self._pieces.close()
            return  # the digest is taken once hash_pieces is done
        self._pieces.close()
        self._fed = -1  # the pieces (if any) are not the hash: the whole vector is
        self.digest = await hash_vector(remote)

    def result(self) -> bytes:
        if self.digest is None:
            self.digest = self._hasher.digest()
        return self.digest


async def hash_vector(flat: np.ndarray) -> bytes:
    if flat.nbytes >= HASH_IN_THREAD_BYTES:
        return await trio.to_thread.run_sync(params_hash, flat)
    return params_hash(flat)
