"""The streaming parameter path: frames sealed from the caller's array, chunks opened straight
into the returned float32 array, no whole-payload copies; and the buffer-level crypto it uses."""

from __future__ import annotations

import os
import tracemalloc
from typing import Any

import msgpack
import numpy as np
import pytest

from protocol.crypto import Opener, Sealer, peer_id_from_ed25519_public_key, public_key_from_seed
from protocol.errors import DecodeError, IntegrityError, SpecMismatch
from protocol.framing import FrameDecoder
from protocol.messages import (
    MAX_CHUNK_PLAINTEXT,
    ParamsChunk,
    ParamsStart,
    encode_message,
    from_wire,
)
from protocol.session import AveragingSession
from protocol.tensors import (
    AUTO_CHUNK_MIN,
    auto_chunk_size,
    encode_params,
    params_header,
    parse_params_header,
)

SEEDS = (b"\x01" * 32, b"\x02" * 32)
IDS = [peer_id_from_ed25519_public_key(public_key_from_seed(s)) for s in SEEDS]
MIB = 1 << 20


def pair(n: int, **kw: Any) -> tuple[AveragingSession, AveragingSession]:
    a, b = (AveragingSession(initiator=i == 0, local_peer_id=IDS[i], local_seed=SEEDS[i],
                             remote_peer_id=IDS[1 - i], spec="stream", num_params=n, step=3,
                             **kw) for i in (0, 1))
    for sender, receiver in ((a, b), (b, a)):
        receiver.receive(decode_one(sender.hello()))
    return a, b


def decode_one(frame: bytes | bytearray) -> Any:
    dec = FrameDecoder()
    dec.feed(frame)
    body = dec.next_frame()
    assert body is not None and dec.buffered == 0
    return from_wire(body)


def transfer(a: AveragingSession, b: AveragingSession, flat: np.ndarray, step: int = 5
             ) -> tuple[np.ndarray, int]:
    result = None
    for frame in a.params_frames(flat, step):
        result = b.receive(decode_one(frame))
    assert result is not None
    return result


@pytest.mark.parametrize(("n", "chunk_size"), [
    (n, c) for n in (1, 2, 3, 5, 1000, 70_000, 300_000)
    for c in (None, 1, 16, 4096, MAX_CHUNK_PLAINTEXT) if c is None or 4 * n // c < 8000
])
def test_round_trip_into_a_native_writable_array(n: int, chunk_size: int | None) -> None:
    a, b = pair(n, chunk_size=chunk_size)
    flat = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    out, step = transfer(a, b, flat, 2**40)
    assert step == 2**40 and out.dtype == np.float32 and out.flags.writeable
    assert out.flags.c_contiguous and out.flags.aligned
    np.testing.assert_array_equal(out, flat)


def test_other_float32_layouts_are_sent_as_little_endian() -> None:
    a, b = pair(6)
    flat = np.arange(12, dtype=">f4")[::2]  # big-endian and strided
    np.testing.assert_array_equal(transfer(a, b, flat)[0], np.arange(12)[::2])


def test_chunk_frames_are_the_bytes_encode_message_writes() -> None:
    a, _ = pair(70_000, chunk_size=4096)
    frames = list(a.params_frames(np.ones(70_000, np.float32), 1))
    assert isinstance(decode_one(frames[0]), ParamsStart)
    sizes = set()
    for frame in frames[1:]:
        msg = decode_one(frame)
        assert isinstance(msg, ParamsChunk)
        assert bytes(frame) == encode_message(msg)
        sizes.add(len(msg.data))
    assert max(sizes) == 4096 + 17 and len(frames) == 1 + -(-(280_000 + 40) // 4096)


def test_auto_chunk_size() -> None:
    assert auto_chunk_size(1) == AUTO_CHUNK_MIN
    assert auto_chunk_size(100 * MIB) == MAX_CHUNK_PLAINTEXT
    assert auto_chunk_size(8 * MIB) == MIB // 2
    for size in (MIB + 40, 8 * MIB + 40, 16 * MIB):  # about 16 chunks
        assert 15 <= -(-size // auto_chunk_size(size)) <= 16
    assert auto_chunk_size(auto_chunk_size(1) - 1) == AUTO_CHUNK_MIN  # one chunk
    a, _ = pair(MIB // 4)
    start = decode_one(next(a.params_frames(np.ones(MIB // 4, np.float32), 1)))
    assert isinstance(start, ParamsStart) and start.chunks == 16


def test_params_header_is_the_msgpack_prefix() -> None:
    for n in (1, 5, 100, 70_000):
        for step in (0, 127, 128, 65_536, 2**32, 2**63 - 1):
            header = params_header(n, step)
            full = msgpack.packb({"dtype": "<f4", "n": n, "step": step, "data": b"\0" * 4 * n},
                                 use_bin_type=True)
            assert full == header + b"\0" * 4 * n
            assert parse_params_header(header, n) == step
            assert parse_params_header(header, n + 1) is None
            assert parse_params_header(header[:-1], n) is None
    # a step written in a longer msgpack form than needed is not the standard layout
    assert parse_params_header(params_header(5, 1).replace(b"step\x01", b"step\xcc\x01"), 5) \
        is None


def test_sending_copies_no_payload_and_receiving_allocates_one_vector() -> None:
    n = 4 * MIB  # 16 MiB of parameters
    flat = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    a, b = pair(n)
    tracemalloc.start()
    try:
        frames = a.params_frames(flat, 1)
        for frame in frames:
            b.receive(decode_one(frame))
            del frame
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert b.done is False and a.done is False  # each has only one direction
    # The received vector plus chunk-sized buffers (a frame on each side, the decoder's copy,
    # msgpack's copy of the sealed chunk): nothing else payload-sized.
    assert peak < 4 * n + 5 * MIB


def sealed_stream(a: AveragingSession, plaintext: bytes, chunk: int = 1000
                  ) -> list[ParamsStart | ParamsChunk]:
    """What a sender with a's keys would send for an arbitrary params plaintext."""
    keys = a.keys
    assert keys is not None
    sealer = Sealer(keys.i2r)
    pieces = [plaintext[i : i + chunk] for i in range(0, len(plaintext), chunk)]
    msgs: list[ParamsStart | ParamsChunk] = [ParamsStart(sealer.header, len(plaintext),
                                                         len(pieces))]
    msgs += [ParamsChunk(sealer.push(p, i == len(pieces) - 1)) for i, p in enumerate(pieces)]
    return msgs


def receive_all(b: AveragingSession, msgs: list[ParamsStart | ParamsChunk]) -> Any:
    result = None
    for msg in msgs:
        result = b.receive(msg)
    return result


def test_other_valid_encodings_are_still_accepted() -> None:
    n = 1000
    a, b = pair(n)
    flat = np.arange(n, dtype="<f4")
    body = {"step": 9, "extra": "ignored", "data": flat.tobytes(), "n": n, "dtype": "<f4"}
    out, step = receive_all(b, sealed_stream(a, msgpack.packb(body, use_bin_type=True)))
    assert step == 9
    np.testing.assert_array_equal(out, flat)


@pytest.mark.parametrize("case", ["nan", "count", "short", "long"])
def test_bad_payloads_fail_as_before(case: str) -> None:
    n = 1000
    a, b = pair(n)
    flat = np.arange(n, dtype="<f4")
    if case == "nan":
        flat[500] = np.nan
        plaintext = params_header(n, 1) + flat.tobytes()
    elif case == "count":  # standard layout of one float less
        plaintext = encode_params(np.ones(n - 1, np.float32), 1)
    elif case == "short":  # a size no standard payload of n floats has
        plaintext = encode_params(flat[:10], 1)
    else:  # a trailing byte
        plaintext = params_header(n, 1) + flat.tobytes() + b"\0"
    msgs = sealed_stream(a, plaintext)
    with pytest.raises(SpecMismatch if case in ("count", "short") else DecodeError):
        receive_all(b, msgs)
    assert b.failed


# ------------------------------------------------------------------ buffer-level crypto


def test_push_into_and_pull_into_interoperate_with_push_and_pull() -> None:
    key = os.urandom(32)
    sealer = Sealer(key)
    opener = Opener(key, sealer.header)
    data = np.arange(5000, dtype=np.float32)
    out = bytearray(20_000 + 17)
    assert sealer.push_into(data.data.cast("B"), False, out) == len(out)
    assert opener.pull(bytes(out), False) == data.tobytes()
    sealed = sealer.push(b"last piece", True)
    dst = bytearray(10)
    assert opener.pull_into(memoryview(sealed), True, dst) == 10 and dst == b"last piece"


def test_pull_into_refuses_what_pull_refuses() -> None:
    key = os.urandom(32)
    sealer = Sealer(key)
    a, b = sealer.push(b"one", False), sealer.push(b"two", True)
    dst = bytearray(3)
    with pytest.raises(IntegrityError, match="authentication"):  # reordered
        Opener(key, sealer.header).pull_into(b, True, dst)
    tampered = bytearray(a)
    tampered[-1] ^= 1
    with pytest.raises(IntegrityError):
        Opener(key, sealer.header).pull_into(tampered, False, dst)
    with pytest.raises(IntegrityError, match="truncated"):
        Opener(key, sealer.header).pull_into(a, True, dst)
    opener = Opener(key, sealer.header)
    opener.pull_into(a, False, dst)
    with pytest.raises(IntegrityError, match="FINAL"):
        opener.pull_into(b, False, dst)
    with pytest.raises(IntegrityError):  # dead after an error
        opener.pull_into(b, True, dst)
    with pytest.raises(ValueError, match="too small"):
        Opener(key, sealer.header).pull_into(a, False, bytearray(2))
    with pytest.raises(ValueError, match="too small"):
        Sealer(key).push_into(b"abc", False, bytearray(19))
    with pytest.raises(IntegrityError, match="shorter"):
        Opener(key, sealer.header).pull_into(b"x" * 16, False, dst)


def test_frame_decoder_takes_over_a_bytearray_only_when_asked_and_empty() -> None:
    frame = encode_message(ParamsChunk(b"\x07" * 40))
    dec = FrameDecoder()
    mine = bytearray(frame)
    dec.feed(mine)
    assert dec.next_frame() is not None and mine == frame  # copied
    owned = bytearray(frame + frame[:5])
    dec.feed(owned, take=True)
    assert dec.next_frame() is not None and dec.buffered == 5
    dec.feed(bytearray(frame[5:]), take=True)  # something is buffered: appended
    assert dec.next_frame() is not None and dec.buffered == 0
