"""Exhaustive tampering of one sealed parameter stream, as the wire carries it.

Every single bit flip anywhere in the ParamsStart and ParamsChunk frames, every truncation,
every swap of two chunks and every splice of a chunk from another stream is rejected: the
receiver either raises a ProtocolError or never completes. None of them yields parameters.
"""

from __future__ import annotations

import itertools

import numpy as np

from protocol.crypto import peer_id_from_ed25519_public_key, public_key_from_seed
from protocol.errors import ProtocolError
from protocol.framing import FrameDecoder, encode_frame
from protocol.messages import from_wire, to_wire
from protocol.session import AveragingSession

SEED_A, SEED_B = b"\x0a" * 32, b"\x0b" * 32
ID_A = peer_id_from_ed25519_public_key(public_key_from_seed(SEED_A))
ID_B = peer_id_from_ed25519_public_key(public_key_from_seed(SEED_B))
N = 6
VALUES = np.linspace(-1, 1, N, dtype=np.float32)


def keyed_pair() -> tuple[AveragingSession, AveragingSession]:
    """The same exchange every time (injected ephemeral keys and exchange id), so a fresh
    responder for each attempt holds the keys the recorded stream was sealed with."""
    common = {"spec": "tamper", "num_params": N, "step": 3, "chunk_size": 16,
              "exchange_id": b"\x07" * 16}
    a = AveragingSession(initiator=True, local_peer_id=ID_A, local_seed=SEED_A,
                         remote_peer_id=ID_B, eph_private=b"\x31" * 32,
                         **common)  # type: ignore[arg-type]
    b = AveragingSession(initiator=False, local_peer_id=ID_B, local_seed=SEED_B,
                         remote_peer_id=ID_A, eph_private=b"\x32" * 32,
                         **common)  # type: ignore[arg-type]
    for sender, receiver in ((a, b), (b, a)):
        dec = FrameDecoder()
        dec.feed(sender.hello())
        body = dec.next_frame()
        assert body is not None
        receiver.receive(from_wire(body))
    return a, b


def accepted(receiver: AveragingSession, wire: bytes) -> bool:
    """True only if ``wire`` delivered complete parameters to ``receiver``."""
    dec = FrameDecoder()
    try:
        dec.feed(wire)
        while (body := dec.next_frame()) is not None:
            if receiver.receive(from_wire(body)) is not None:
                return True
    except ProtocolError:
        return False
    return False


def frames_of(wire: bytes) -> list[bytes]:
    dec, out = FrameDecoder(), []
    dec.feed(wire)
    while (body := dec.next_frame()) is not None:
        out.append(encode_frame(to_wire(from_wire(body))))
    return out


def test_the_untampered_stream_is_accepted() -> None:
    a, b = keyed_pair()
    assert accepted(b, a.params_frame(VALUES, 1))


def test_every_single_bit_flip_is_rejected() -> None:
    a, _ = keyed_pair()
    wire = a.params_frame(VALUES, 1)
    assert len(frames_of(wire)) >= 4  # start + several chunks
    for pos, bit in itertools.product(range(len(wire)), range(8)):
        tampered = bytearray(wire)
        tampered[pos] ^= 1 << bit
        _, b = keyed_pair()
        assert not accepted(b, bytes(tampered)), f"flip of bit {bit} at byte {pos} accepted"


def test_every_truncation_is_rejected() -> None:
    a, _ = keyed_pair()
    wire = a.params_frame(VALUES, 1)
    for cut in range(len(wire)):
        _, b = keyed_pair()
        assert not accepted(b, wire[:cut]), f"truncation to {cut} bytes accepted"


def test_every_swap_drop_and_duplicate_of_chunks_is_rejected() -> None:
    a, _ = keyed_pair()
    start, *chunks = frames_of(a.params_frame(VALUES, 1))
    variants = []
    for i, j in itertools.combinations(range(len(chunks)), 2):
        swapped = list(chunks)
        swapped[i], swapped[j] = swapped[j], swapped[i]
        variants.append(swapped)
    for i in range(len(chunks)):
        variants.append(chunks[:i] + chunks[i + 1 :])  # dropped (stream then ends short)
        if i < len(chunks) - 1:
            variants.append(chunks[: i + 1] + chunks[i:])  # duplicated
    for variant in variants:
        _, b = keyed_pair()
        assert not accepted(b, start + b"".join(variant))
    # A copy of the last chunk after a complete stream is not tampering with the payload (it
    # was all there and authentic); the session refuses the extra frame.
    _, b = keyed_pair()
    assert accepted(b, start + b"".join(chunks))
    assert not accepted(b, chunks[-1])


def test_every_splice_from_another_stream_is_rejected() -> None:
    a, _ = keyed_pair()
    start, *chunks = frames_of(a.params_frame(VALUES, 1))
    a2, _ = keyed_pair()  # the same keys; a new stream has a new secretstream header
    _, *other = frames_of(a2.params_frame(VALUES[::-1].copy(), 1))
    assert len(other) == len(chunks) and not set(other) & set(chunks)
    for i in range(len(chunks)):
        spliced = list(chunks)
        spliced[i] = other[i]
        _, b = keyed_pair()
        assert not accepted(b, start + b"".join(spliced)), f"splice at chunk {i} accepted"
