"""Message dataclasses <-> wire maps: round trips, validation and caps."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from protocol.errors import DecodeError, LimitExceeded, VersionMismatch
from protocol.framing import FrameDecoder
from protocol.messages import (
    AVG_PROTOCOL_ID,
    MAX_ADDR_LEN,
    MAX_ADDRS,
    MAX_CHUNK_PLAINTEXT,
    MAX_CHUNKS,
    MAX_ERROR_CODE_LEN,
    MAX_ERROR_MESSAGE_LEN,
    MAX_PEER_ID_LEN,
    MAX_PEERS,
    MAX_SPEC_LEN,
    PEERS_PROTOCOL_ID,
    PROTOCOL_VERSION,
    ErrorMsg,
    Hello,
    Message,
    ParamsChunk,
    ParamsStart,
    PeerRecord,
    PeersRequest,
    PeersResponse,
    ReceiptInfo,
    encode_message,
    from_wire,
    to_wire,
)

HELLO = Hello(
    version=PROTOCOL_VERSION,
    exchange_id=b"\x01" * 16,
    eph_pub=b"\x02" * 32,
    sig=b"\x03" * 64,
    spec="mlp",
    num_params=10,
    step=5,
)
PARAMS = ParamsStart(header=b"\x04" * 24, size=100, chunks=2)
CHUNK = ParamsChunk(data=b"\x05" * 40)
ALL: list[Message] = [
    HELLO,
    PARAMS,
    CHUNK,
    ErrorMsg(code="spec", message="nope"),
    ErrorMsg(code="x", message=""),
    PeersRequest(addrs=["/ip4/1.2.3.4/tcp/1"]),
    PeersRequest(addrs=[]),
    PeersResponse(peers=[PeerRecord(peer_id="12D3KooW", addrs=["/ip4/1.2.3.4/tcp/1"])]),
    PeersResponse(peers=[]),
]


def wire(msg: Message, **changes: Any) -> dict[str, Any]:
    body = to_wire(msg)
    body.update(changes)
    return body


def test_constants() -> None:
    assert PROTOCOL_VERSION == 3
    assert AVG_PROTOCOL_ID == "/gossipd/avg/3.0.0"
    assert PEERS_PROTOCOL_ID == "/gossipd/peers/1.0.0"


@pytest.mark.parametrize("msg", ALL, ids=lambda m: type(m).__name__)
def test_round_trip_through_frames(msg: Message) -> None:
    assert from_wire(to_wire(msg)) == msg
    dec = FrameDecoder()
    dec.feed(encode_message(msg))
    body = dec.next_frame()
    assert body is not None
    assert from_wire(body) == msg


def test_lists_and_tuples_compare_equal() -> None:
    assert isinstance(PeersRequest(addrs=["a"]).addrs, tuple)
    assert hash(PeersResponse(peers=[PeerRecord("p", ["a"])])) is not None


def test_type_tags() -> None:
    tags = [to_wire(m)["t"] for m in ALL]
    assert tags[:4] == ["hello", "params", "chunk", "error"]
    assert to_wire(PeersRequest(addrs=[]))["t"] == "peers_req"
    assert to_wire(PeersResponse(peers=[]))["t"] == "peers_resp"


def test_unknown_extra_keys_are_ignored() -> None:
    assert from_wire(wire(HELLO, future_field=[1, 2])) == HELLO


def test_error_message_is_capped_on_construction() -> None:
    msg = ErrorMsg(code="x", message="m" * 2000)
    assert len(msg.message) == MAX_ERROR_MESSAGE_LEN
    assert from_wire(to_wire(msg)) == msg


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"t": "nope"},
        {"t": 5},
        {"t": b"hello"},
        wire(HELLO, exchange_id=b"\x01" * 15),
        wire(HELLO, exchange_id="x" * 16),
        wire(HELLO, eph_pub=b"\x00" * 33),
        wire(HELLO, sig=b""),
        wire(HELLO, spec=""),
        wire(HELLO, spec=b"mlp"),
        wire(HELLO, num_params=0),
        wire(HELLO, num_params=True),
        wire(HELLO, num_params=1.0),
        wire(HELLO, step=-1),
        wire(HELLO, step="1"),
        wire(HELLO, version=True),
        wire(HELLO, version=-1),
        wire(PARAMS, header=b"\x00" * 23),
        wire(PARAMS, chunks=0),
        wire(PARAMS, size=0),
        wire(PARAMS, chunks=True),
        wire(PARAMS, size="10"),
        wire(CHUNK, data=b"\x00" * 16),
        wire(CHUNK, data="x" * 20),
        wire(CHUNK, data=[b"\x00" * 20]),
        {"t": "error", "code": "", "message": ""},
        {"t": "error", "code": "x", "message": None},
        {"t": "error", "code": "x"},
        {"t": "peers_req", "addrs": "/ip4/1.2.3.4"},
        {"t": "peers_req", "addrs": [1]},
        {"t": "peers_req", "addrs": [""]},
        {"t": "peers_resp", "peers": [["p", []]]},
        {"t": "peers_resp", "peers": [{"peer_id": "p"}]},
        {"t": "peers_resp", "peers": [{"peer_id": 1, "addrs": []}]},
        {"t": "peers_resp", "peers": {}},
    ],
)
def test_malformed_bodies_raise_decode_error(body: dict[str, Any]) -> None:
    with pytest.raises(DecodeError):
        from_wire(body)


def test_missing_each_hello_field() -> None:
    for key in to_wire(HELLO):
        body = to_wire(HELLO)
        del body[key]
        with pytest.raises(DecodeError):
            from_wire(body)


def test_non_map_body() -> None:
    with pytest.raises(DecodeError):
        from_wire([1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "body",
    [
        wire(HELLO, spec="s" * (MAX_SPEC_LEN + 1)),
        wire(HELLO, num_params=(1 << 32) + 1),
        wire(HELLO, step=1 << 63),
        wire(PARAMS, chunks=MAX_CHUNKS + 1),
        wire(PARAMS, size=MAX_CHUNKS * MAX_CHUNK_PLAINTEXT + 1),
        wire(CHUNK, data=b"\x00" * (MAX_CHUNK_PLAINTEXT + 18)),
        {"t": "error", "code": "c" * (MAX_ERROR_CODE_LEN + 1), "message": ""},
        {"t": "error", "code": "c", "message": "m" * (MAX_ERROR_MESSAGE_LEN + 1)},
        {"t": "peers_req", "addrs": ["/a"] * (MAX_ADDRS + 1)},
        {"t": "peers_req", "addrs": ["a" * (MAX_ADDR_LEN + 1)]},
        {"t": "peers_resp", "peers": [{"peer_id": "p", "addrs": []}] * (MAX_PEERS + 1)},
        {"t": "peers_resp", "peers": [{"peer_id": "p" * (MAX_PEER_ID_LEN + 1), "addrs": []}]},
        {"t": "peers_resp", "peers": [{"peer_id": "p", "addrs": ["a"] * (MAX_ADDRS + 1)}]},
    ],
)
def test_caps_raise_limit_exceeded(body: dict[str, Any]) -> None:
    with pytest.raises(LimitExceeded):
        from_wire(body)


def test_caps_are_inclusive() -> None:
    req = PeersRequest(addrs=["a" * MAX_ADDR_LEN] * MAX_ADDRS)
    assert from_wire(to_wire(req)) == req
    resp = PeersResponse(peers=[PeerRecord("p" * MAX_PEER_ID_LEN, ["/a"])] * MAX_PEERS)
    assert from_wire(to_wire(resp)) == resp


def test_version_mismatch() -> None:
    # version 1 had a separate ReceiptInfo round, 2 signed after the parameters; 4 is the future
    for other in (1, 2, 4):
        with pytest.raises(VersionMismatch) as info:
            from_wire(wire(HELLO, version=other))
        assert info.value.code == "version"
    # The version is judged before anything else: a v4 Hello may look different.
    with pytest.raises(VersionMismatch):
        from_wire({"t": "hello", "version": 4})


def test_hello_receipt_info() -> None:
    """Hello.receipt: absent means no ledger; a map of the five fields otherwise."""
    info = ReceiptInfo(samples=320, head_seq=7, head_hash=b"\x04" * 32, seen_seq=-1,
                       params_hash=b"\x05" * 32)
    hello = dataclasses.replace(HELLO, receipt=info)
    body = to_wire(hello)
    assert body["receipt"] == {"samples": 320, "head_seq": 7, "head_hash": b"\x04" * 32,
                               "seen_seq": -1, "params_hash": b"\x05" * 32}
    assert from_wire(body) == hello
    assert "receipt" not in to_wire(HELLO) and from_wire(to_wire(HELLO)).receipt is None
    good = body["receipt"]
    for bad, exc in (
        (None, DecodeError), ([], DecodeError),
        ({**good, "head_hash": b"\x04" * 31}, DecodeError),
        ({**good, "seen_seq": -2}, DecodeError), ({**good, "samples": True}, DecodeError),
        ({k: v for k, v in good.items() if k != "head_seq"}, DecodeError),
        ({k: v for k, v in good.items() if k != "params_hash"}, DecodeError),
        ({**good, "params_hash": b"\x05" * 33}, DecodeError),
        ({**good, "head_seq": 1 << 63}, LimitExceeded),
    ):
        with pytest.raises(exc):
            from_wire({**body, "receipt": bad})
    # The v1 receipt round's first message no longer exists.
    with pytest.raises(DecodeError):
        from_wire({"t": "receipt_info", **good})


def test_to_wire_validates_outgoing() -> None:
    with pytest.raises(DecodeError):
        to_wire(Hello(PROTOCOL_VERSION, b"short", b"\x00" * 32, b"\x00" * 64, "s", 1, 0))
    with pytest.raises(LimitExceeded):
        to_wire(PeersRequest(addrs=["a"] * (MAX_ADDRS + 1)))
    with pytest.raises(TypeError):
        to_wire("hello")  # type: ignore[arg-type]
