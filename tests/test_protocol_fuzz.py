"""Hypothesis fuzzing: hostile input only ever raises ProtocolError subclasses.

Budgets are modest (max_examples per test) so the whole protocol suite stays well
under 30 s on two cores; no deadline, because CI machines vary.
"""

from __future__ import annotations

import contextlib
import itertools
import struct
from typing import Any

import msgpack
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.crypto import open_sealed, peer_id_from_ed25519_public_key, public_key_from_seed
from protocol.errors import ProtocolError
from protocol.framing import FrameDecoder, encode_frame
from protocol.messages import Message, ParamsChunk, ParamsStart, from_wire, to_wire
from protocol.session import AveragingSession
from protocol.tensors import decode_params, encode_params

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SEED_A, SEED_B = b"\x01" * 32, b"\x02" * 32
ID_A = peer_id_from_ed25519_public_key(public_key_from_seed(SEED_A))
ID_B = peer_id_from_ed25519_public_key(public_key_from_seed(SEED_B))
N = 4

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.binary(max_size=40)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
type_tags = st.sampled_from(
    ["hello", "params", "chunk", "error", "peers_req", "peers_resp", "x"]
)
field_names = st.sampled_from(
    [
        "version",
        "exchange_id",
        "eph_pub",
        "sig",
        "spec",
        "num_params",
        "step",
        "header",
        "size",
        "chunks",
        "data",
        "time_ms",
        "swarm_tag",
        "code",
        "message",
        "addrs",
        "peers",
        "peer_id",
    ]
)
bodies = st.builds(
    lambda t, fields: {"t": t, **fields},
    type_tags,
    st.dictionaries(field_names, values, max_size=8),
)


def keyed_pair() -> tuple[AveragingSession, AveragingSession]:
    common: dict[str, Any] = {"spec": "fuzz", "num_params": N, "step": 0, "chunk_size": 8}
    a = AveragingSession(
        initiator=True, local_peer_id=ID_A, local_seed=SEED_A, remote_peer_id=ID_B, **common
    )
    b = AveragingSession(
        initiator=False, local_peer_id=ID_B, local_seed=SEED_B, remote_peer_id=ID_A, **common
    )
    dec = FrameDecoder()
    dec.feed(a.hello())
    body = dec.next_frame()
    assert body is not None
    hello = from_wire(body)
    b.receive_hello(hello)  # type: ignore[arg-type]
    dec.feed(b.hello())
    body = dec.next_frame()
    assert body is not None
    a.receive_hello(from_wire(body))  # type: ignore[arg-type]
    return a, b


def drain(dec: FrameDecoder) -> list[dict[str, Any]]:
    out = []
    while (frame := dec.next_frame()) is not None:
        out.append(frame)
    return out


@FUZZ
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=5))
def test_frame_decoder_arbitrary_bytes(data: bytes, cuts: list[int]) -> None:
    dec = FrameDecoder(max_frame=256)
    points = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    try:
        for lo, hi in itertools.pairwise(points):
            dec.feed(data[lo:hi])
            for body in drain(dec):
                assert isinstance(body, dict)
                with contextlib.suppress(ProtocolError):
                    from_wire(body)
    except ProtocolError:
        pass


@FUZZ
@given(bodies, st.integers(1, 4))
def test_frame_decoder_split_valid_frames(body: dict[str, Any], parts: int) -> None:
    frame = encode_frame(body)
    dec = FrameDecoder()
    step = max(1, len(frame) // parts)
    got: list[dict[str, Any]] = []
    try:
        for i in range(0, len(frame), step):
            dec.feed(frame[i : i + step])
            got.extend(drain(dec))
    except ProtocolError:
        return  # only bodies nested deeper than MAX_DEPTH are refused
    assert len(got) == 1 and dec.buffered == 0


@FUZZ
@given(bodies)
def test_from_wire_arbitrary_maps(body: dict[str, Any]) -> None:
    try:
        msg: Message = from_wire(body)
    except ProtocolError:
        return
    # Whatever is accepted must survive a round trip unchanged.
    assert from_wire(to_wire(msg)) == msg


@FUZZ
@given(st.binary(max_size=200))
def test_decode_params_arbitrary_bytes(blob: bytes) -> None:
    try:
        flat, step = decode_params(blob, N)
    except ProtocolError:
        return
    assert flat.shape == (N,) and step >= 0


@FUZZ
@given(st.dictionaries(st.sampled_from(["dtype", "n", "step", "data"]), values, max_size=4))
def test_decode_params_arbitrary_maps(body: dict[str, Any]) -> None:
    blob = msgpack.packb(body, use_bin_type=True)
    with contextlib.suppress(ProtocolError):
        decode_params(blob, N)


@FUZZ
@given(
    st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=50),
    st.integers(0, 2**63 - 1),
)
def test_params_codec_round_trip(vals: list[float], step: int) -> None:
    flat = np.array(vals, dtype=np.float32)
    out, got_step = decode_params(encode_params(flat, step), len(vals))
    np.testing.assert_array_equal(out, flat)
    assert got_step == step


@FUZZ
@given(st.binary(min_size=24, max_size=24), st.lists(st.binary(max_size=60), max_size=4))
def test_receive_params_arbitrary(header: bytes, chunks: list[bytes]) -> None:
    _, b = keyed_pair()
    try:
        b.receive_params_start(ParamsStart(header, max(1, sum(len(c) - 17 for c in chunks)),
                                           max(1, len(chunks))))
        results = [b.receive_chunk(ParamsChunk(chunk)) for chunk in chunks]
    except ProtocolError:
        return
    assert not any(r is not None for r in results), "random ciphertext must never authenticate"


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 7))
def test_receive_params_bit_flips(position: int, bit: int) -> None:
    a, b = keyed_pair()
    dec = FrameDecoder()
    frame = bytearray(a.params_frame(np.arange(N, dtype=np.float32), 1))
    pos = position % len(frame)
    frame[pos] ^= 1 << bit
    dec.feed(bytes(frame))
    try:
        while (body := dec.next_frame()) is not None:
            if b.receive(from_wire(body)) is not None:
                break
        else:
            return  # a flipped length header left the stream incomplete: never accepted
    except ProtocolError:
        return
    raise AssertionError("a flipped bit must never go unnoticed")


@FUZZ
@given(st.binary(max_size=24), st.lists(st.binary(max_size=40), max_size=3), st.integers(0, 100))
def test_open_sealed_arbitrary(header: bytes, chunks: list[bytes], limit: int) -> None:
    try:
        open_sealed(b"\x00" * 32, header, chunks, limit)
    except ProtocolError:
        return
    raise AssertionError("random ciphertext must never authenticate")


def test_length_header_fuzz_edge() -> None:
    # Every header value above the limit is refused without a body.
    for length in (257, 1 << 20, 2**32 - 1):
        dec = FrameDecoder(max_frame=256)
        dec.feed(struct.pack(">I", length))
        try:
            dec.next_frame()
        except ProtocolError as exc:
            assert exc.code == "frame-too-large"
        else:
            raise AssertionError("oversized header accepted")
