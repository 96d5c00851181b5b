"""FrameDecoder / encode_frame: round trips, partial feeds and every error path."""

from __future__ import annotations

import struct

import msgpack
import pytest

from protocol.errors import DecodeError, FrameTooLarge, LimitExceeded, ProtocolError
from protocol.framing import DEFAULT_MAX_FRAME, MAX_DEPTH, FrameDecoder, encode_frame, safe_unpackb


def raw_frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def test_round_trip_single_frame() -> None:
    body = {"t": "x", "n": 1, "b": b"\x00\xff", "l": [1, "a", None, True, 1.5]}
    dec = FrameDecoder()
    dec.feed(encode_frame(body))
    assert dec.next_frame() == body
    assert dec.next_frame() is None
    assert dec.buffered == 0


def test_header_is_big_endian_length_of_body() -> None:
    frame = encode_frame({"a": 1})
    assert frame[:4] == struct.pack(">I", len(frame) - 4)
    assert msgpack.unpackb(frame[4:]) == {"a": 1}


def test_byte_by_byte_feed_and_multiple_frames() -> None:
    bodies = [{"i": i, "pad": b"x" * i} for i in range(5)]
    stream = b"".join(encode_frame(b) for b in bodies)
    dec = FrameDecoder()
    out = []
    for byte in stream:
        dec.feed(bytes([byte]))
        frame = dec.next_frame()
        if frame is not None:
            out.append(frame)
    assert out == bodies
    assert dec.buffered == 0


def test_two_frames_in_one_feed_and_partial_tail() -> None:
    a, b = encode_frame({"a": 1}), encode_frame({"b": 2})
    dec = FrameDecoder()
    dec.feed(a + b[:3])
    assert dec.next_frame() == {"a": 1}
    assert dec.next_frame() is None
    assert dec.buffered == 3
    dec.feed(b[3:])
    assert dec.next_frame() == {"b": 2}


def test_frame_too_large_raised_from_header_alone() -> None:
    dec = FrameDecoder(max_frame=10)
    dec.feed(struct.pack(">I", 11))  # no body at all yet
    with pytest.raises(FrameTooLarge) as info:
        dec.next_frame()
    assert info.value.code == "frame-too-large"
    assert isinstance(info.value, DecodeError)


def test_frame_at_exact_limit_is_accepted() -> None:
    payload = msgpack.packb({"a": b"x" * 20})
    dec = FrameDecoder(max_frame=len(payload))
    dec.feed(raw_frame(payload))
    assert dec.next_frame() == {"a": b"x" * 20}


def test_default_limit() -> None:
    dec = FrameDecoder()
    assert dec.max_frame == DEFAULT_MAX_FRAME == (1 << 20) + 1024  # one 1 MiB chunk fits
    dec.feed(struct.pack(">I", DEFAULT_MAX_FRAME + 1))
    with pytest.raises(FrameTooLarge):
        dec.next_frame()


@pytest.mark.parametrize(
    "payload",
    [
        b"",  # empty frame
        b"\x01",  # int, not a map
        b"\x91\x01",  # array
        b"\xa1a",  # str
        b"\x80\xc0",  # trailing byte after the map
        b"\x81\x01\x01",  # int key
        b"\x81\xc4\x01k\x01",  # bytes key
        b"\x81\xa1t\xd6\xff\x00\x00\x00\x01",  # timestamp ext
        b"\x81\xa1t\xd4\x05\x00",  # fixext 1
        b"\x81\xa1t\xc7\x00\x05",  # ext8 of length 0
        b"\x81\xa1t\xa2\xff\xfe",  # invalid UTF-8 str
        b"\x81\xa1t\xc4\x05ab",  # bin shorter than announced
        b"\xc1",  # reserved byte
        b"\x81\xa1t" + b"\x91" * 10 + b"\x01",  # nested too deep
        b"\x81\xa1t\xdd\xff\xff\xff\xff",  # array32 announcing 4G items
    ],
)
def test_invalid_bodies_raise_decode_error(payload: bytes) -> None:
    dec = FrameDecoder()
    dec.feed(raw_frame(payload))
    with pytest.raises(DecodeError):
        dec.next_frame()


def test_decoder_is_poisoned_after_error() -> None:
    dec = FrameDecoder()
    dec.feed(raw_frame(b"\x01") + encode_frame({"ok": 1}))
    with pytest.raises(DecodeError):
        dec.next_frame()
    with pytest.raises(DecodeError):
        dec.next_frame()
    with pytest.raises(DecodeError):
        dec.feed(b"more")


def test_max_depth_allows_peers_response_shape() -> None:
    body = {"t": "peers_resp", "peers": [{"peer_id": "x", "addrs": ["/a"]}]}
    dec = FrameDecoder()
    dec.feed(encode_frame(body))
    assert dec.next_frame() == body
    too_deep: object = "leaf"
    for _ in range(MAX_DEPTH + 1):
        too_deep = [too_deep]
    with pytest.raises(DecodeError):
        safe_unpackb(msgpack.packb({"x": too_deep}))


def test_safe_unpackb_max_len() -> None:
    with pytest.raises(DecodeError):
        safe_unpackb(msgpack.packb({"b": b"x" * 100}), max_len=10)


def test_encode_frame_rejects_non_str_keys() -> None:
    with pytest.raises(TypeError):
        encode_frame({1: 2})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        encode_frame([1])  # type: ignore[arg-type]


def test_invalid_max_frame() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(max_frame=0)
    with pytest.raises(ValueError):
        FrameDecoder(max_frame=1 << 32)


def test_error_codes_are_stable() -> None:
    from protocol import errors

    expected = {
        "ProtocolError": "protocol",
        "DecodeError": "decode",
        "FrameTooLarge": "frame-too-large",
        "UnexpectedMessage": "unexpected",
        "VersionMismatch": "version",
        "AuthenticationError": "auth",
        "IntegrityError": "integrity",
        "LimitExceeded": "limit",
        "SpecMismatch": "spec",
        "RemoteError": "remote",
    }
    for name, code in expected.items():
        cls = getattr(errors, name)
        assert cls.code == code
        assert issubclass(cls, ProtocolError)
        assert errors.error_for_code(code) is cls
    assert errors.error_for_code("from-the-future") is ProtocolError
    assert issubclass(LimitExceeded, ProtocolError)
