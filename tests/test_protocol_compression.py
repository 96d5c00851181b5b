"""Compressed parameter payloads through AveragingSession: bf16 and int8 round trips, mixed
encodings in one exchange, pre-encoded buffers, size bounds and every rejection path."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import quant
from protocol.errors import DecodeError, LimitExceeded, ProtocolError, SpecMismatch
from protocol.messages import ParamsStart
from protocol.tensors import (
    MAX_HEADER_LEN,
    decode_params,
    encode_params,
    params_frame_bound,
    params_header,
    params_plaintext_bound,
    parse_params_header,
)
from tests.test_protocol_streaming import decode_one, pair, receive_all, sealed_stream

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODES = ("none", "bf16", "int8")


def vec(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def transfer(a: Any, b: Any, payload: np.ndarray, step: int = 5, **kw: Any
             ) -> tuple[np.ndarray, int]:
    result = None
    for frame in a.params_frames(payload, step, **kw):
        result = b.receive(decode_one(frame))
    assert result is not None
    return result  # type: ignore[no-any-return]


@pytest.mark.parametrize("n", [1, 2, 255, 256, 257, 70_000, 300_001])
@pytest.mark.parametrize("mode", ["bf16", "int8"])
def test_compressed_round_trip_through_sessions(n: int, mode: str) -> None:
    a, b = pair(n)
    flat = vec(n, n)
    out, step = transfer(a, b, flat, 2**40, encoding=mode)
    assert step == 2**40 and out.dtype == np.float32 and out.flags.writeable
    np.testing.assert_array_equal(out, quant.roundtrip(flat, mode))


@pytest.mark.parametrize("mode", ["bf16", "int8"])
def test_pre_encoded_buffer_is_sent_as_is(mode: str) -> None:
    n = 5000
    a, b = pair(n)
    flat = vec(n) + np.float32(0.25)
    buf = quant.encode(flat, mode)
    out, _ = transfer(a, b, buf, encoding=mode)
    np.testing.assert_array_equal(out, quant.decode(buf, n, mode))


def test_each_side_picks_its_own_encoding() -> None:
    n = 3000
    a, b = pair(n)
    va, vb = vec(n, 1), vec(n, 2)
    fa = list(a.params_frames(va, 1, encoding="int8"))
    fb = list(b.params_frames(vb, 2, encoding="bf16"))
    got_b = receive_all(b, [decode_one(f) for f in fa])
    got_a = receive_all(a, [decode_one(f) for f in fb])
    np.testing.assert_array_equal(got_b[0], quant.roundtrip(va, "int8"))
    np.testing.assert_array_equal(got_a[0], quant.roundtrip(vb, "bf16"))
    assert a.done and b.done


@pytest.mark.parametrize("mode", MODES)
def test_compressed_frames_are_smaller_and_within_bounds(mode: str) -> None:
    n = 1 << 20
    a, _ = pair(n)
    frames = list(a.params_frames(vec(n), 7, encoding=mode))
    total = sum(len(f) for f in frames)
    start = decode_one(frames[0])
    assert isinstance(start, ParamsStart)
    assert start.size == len(params_header(n, 7, quant.WIRE_DTYPES[mode])) \
        + quant.encoded_size(n, mode)
    assert start.size <= params_plaintext_bound(n)
    assert total <= params_frame_bound(n)
    ratio = 4 * n / start.size
    assert ratio > {"none": 0.99, "bf16": 1.99, "int8": 3.9}[mode]


@pytest.mark.parametrize("n", [1, 2, 3, 255, 256, 1000])
@pytest.mark.parametrize("mode", MODES)
def test_headers_and_bounds_for_every_encoding(n: int, mode: str) -> None:
    dtype = quant.WIRE_DTYPES[mode]
    for step in (0, 1, 2**63 - 1):
        header = params_header(n, step, dtype)
        assert len(header) <= MAX_HEADER_LEN
        assert parse_params_header(header, n, dtype) == step
        others = [d for d in quant.WIRE_DTYPES.values() if d != dtype]
        assert all(parse_params_header(header, n, d) is None for d in others)
        blob = encode_params(vec(n), step, mode)
        assert len(blob) <= params_plaintext_bound(n)
        assert blob.startswith(header)
        out, got = decode_params(blob, n)
        assert got == step and out.flags.writeable


def test_general_decoder_accepts_compressed_maps_in_any_key_order() -> None:
    n = 600
    a, b = pair(n)
    flat = vec(n)
    data = quant.encode(flat, "int8").tobytes()
    body = {"data": data, "step": 4, "n": n, "dtype": "i8b256", "extra": 1}
    out, step = receive_all(b, sealed_stream(a, msgpack.packb(body, use_bin_type=True)))
    assert step == 4
    np.testing.assert_array_equal(out, quant.roundtrip(flat, "int8"))


@pytest.mark.parametrize("case", ["dtype", "size-bf16", "size-int8", "nan-scale", "inf-bf16",
                                  "minus-128", "count"])
def test_bad_compressed_payloads_are_typed_errors(case: str) -> None:
    n = 1000
    a, b = pair(n)
    flat = vec(n)
    expected: type[ProtocolError] = DecodeError
    if case == "dtype":
        plaintext = msgpack.packb({"dtype": "<f2", "n": n, "step": 1,
                                   "data": bytes(2 * n)}, use_bin_type=True)
    elif case == "size-bf16":  # the bf16 header with int8-sized data
        plaintext = params_header(n, 1, "bf16")[:-3] + b"\xc5" \
            + quant.encoded_size(n, "int8").to_bytes(2, "big") \
            + quant.encode(flat, "int8").tobytes()
    elif case == "size-int8":
        plaintext = encode_params(flat, 1, "int8") + b"\0"
    elif case == "nan-scale":
        buf = quant.encode(flat, "int8").copy()
        buf[4:8] = np.frombuffer(np.array([np.nan], "<f4").tobytes(), np.uint8)
        plaintext = params_header(n, 1, "i8b256") + buf.tobytes()
    elif case == "inf-bf16":
        buf = quant.encode(flat, "bf16").copy()
        buf[10:12] = [0x80, 0xFF]  # 0xFF80: -Inf
        plaintext = params_header(n, 1, "bf16") + buf.tobytes()
    elif case == "minus-128":
        buf = quant.encode(flat, "int8").copy()
        buf[-1] = 0x80
        plaintext = params_header(n, 1, "i8b256") + buf.tobytes()
    else:
        plaintext = encode_params(vec(n - 1), 1, "bf16")
        expected = SpecMismatch
    with pytest.raises(expected):
        receive_all(b, sealed_stream(a, plaintext))
    assert b.failed


def test_oversized_announcement_is_a_limit_whatever_the_encoding() -> None:
    n = 1000
    _, b = pair(n)
    with pytest.raises(LimitExceeded):
        b.receive(ParamsStart(bytes(24), params_plaintext_bound(n) + 1, 2))


def test_sender_misuse_is_value_error() -> None:
    n = 300
    a, _ = pair(n)
    with pytest.raises(ValueError):
        a.params_frames(vec(n), 1, encoding="fp8")
    with pytest.raises(ValueError):  # a buffer of the wrong size
        a.params_frames(quant.encode(vec(n + 1), "int8"), 1, encoding="int8")
    bad = quant.encode(vec(n), "int8").copy()
    bad[:4] = 0xFF  # NaN scale
    with pytest.raises(ValueError):
        a.params_frames(bad, 1, encoding="int8")
    nan = vec(n)
    nan[3] = np.nan
    with pytest.raises(ValueError):
        a.params_frames(nan, 1, encoding="bf16")
    # Nothing was sent: a correct call still works.
    assert next(iter(a.params_frames(vec(n), 1, encoding="bf16")))


@FUZZ
@given(mode=st.sampled_from(["bf16", "int8"]), data=st.binary(min_size=1, max_size=64),
       at=st.integers(0, 10_000))
def test_corrupted_compressed_plaintext_only_raises_protocol_errors(
        mode: str, data: bytes, at: int) -> None:
    n = 300
    a, b = pair(n)
    plain = bytearray(encode_params(vec(n), 1, mode))
    at %= len(plain)
    plain[at : at + len(data)] = data
    try:
        out, _ = receive_all(b, sealed_stream(a, bytes(plain[: params_plaintext_bound(n)])))
    except ProtocolError:
        return
    assert out.shape == (n,) and np.isfinite(out).all()
