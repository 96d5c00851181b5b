"""Protocol messages: frozen dataclasses <-> validated wire maps.

Every wire map carries ``"t"`` (the message type) plus the fields listed in
PROTOCOL.md. Validation rules (applied by ``from_wire`` and, on the sending side, by
``to_wire`` so we never emit something a conforming peer would reject):
  * a missing field, a wrong type or a wrong fixed length -> DecodeError;
  * a count or length over the caps below -> LimitExceeded;
  * Hello.version != PROTOCOL_VERSION -> VersionMismatch;
  * unknown ``"t"`` -> DecodeError; unknown *extra keys* are ignored, so a
    minor revision may add optional fields without bumping the version.
``bool`` is never accepted where an int is expected (msgpack keeps them apart).
Sequence fields are normalised to tuples, so messages are immutable and compare
equal regardless of whether a list or tuple was passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import DecodeError, LimitExceeded, VersionMismatch
from .framing import encode_frame

__all__ = [
    "AVG_PROTOCOL_ID",
    "PEERS_PROTOCOL_ID",
    "PROTOCOL_VERSION",
    "ErrorMsg",
    "Hello",
    "Message",
    "ParamsChunk",
    "ParamsStart",
    "PeerRecord",
    "PeersRequest",
    "PeersResponse",
    "ReceiptInfo",
    "ReceiptSig",
    "encode_message",
    "from_wire",
    "to_wire",
]

PROTOCOL_VERSION = 3
AVG_PROTOCOL_ID = "/gossipd/avg/3.0.0"
PEERS_PROTOCOL_ID = "/gossipd/peers/1.0.0"

# Fixed sizes (bytes).
EXCHANGE_ID_LEN = 16
EPH_PUB_LEN = 32
SIG_LEN = 64
SWARM_TAG_LEN = 32
SECRETSTREAM_HEADER_LEN = 24
SECRETSTREAM_ABYTES = 17
# Caps. Changing a cap is a protocol change: peers reject anything above theirs.
MAX_SPEC_LEN = 256  # chars
MAX_NUM_PARAMS = 1 << 30  # 4 GiB of float32 on the wire
MAX_STEP = (1 << 63) - 1
MAX_TIME_MS = (1 << 63) - 1
MAX_VERSION = 0xFFFFFFFF
MAX_CHUNK_PLAINTEXT = 1 << 20  # bytes of plaintext per secretstream chunk
MAX_CHUNKS = 8192
MAX_PARAMS_PLAINTEXT = MAX_CHUNKS * MAX_CHUNK_PLAINTEXT  # 8 GiB, above 4 * MAX_NUM_PARAMS
MAX_ERROR_CODE_LEN = 64
MAX_ERROR_MESSAGE_LEN = 512
MAX_PEER_ID_LEN = 128  # chars of the base58/CID text form
MAX_ADDRS = 8
MAX_ADDR_LEN = 256
MAX_PEERS = 64
MAX_LEDGER_DIGESTS = 4096  # = framing.MAX_CONTAINER_LEN; 128 KiB of digests at most


def _tuple(value: Any) -> Any:
    # Normalise list -> tuple; leave anything else alone so validation reports it.
    return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class ReceiptInfo:
    """Carried in the Hello: what the peer needs to build this exchange's receipt
    (PROTOCOL.md 4.7), all known before the exchange starts: samples trained since our last
    exchange, our ledger head, the seq of the peer's head we last saw (-1: never), and the
    BLAKE3-256 of the float32 parameters we are about to send (a commitment the peer checks
    against what arrives)."""

    samples: int
    head_seq: int
    head_hash: bytes
    seen_seq: int
    params_hash: bytes = bytes(32)


@dataclass(frozen=True)
class Hello:
    version: int
    exchange_id: bytes
    eph_pub: bytes
    sig: bytes
    spec: str
    num_params: int
    step: int
    time_ms: int = 0  # signer's wall clock, ms since the Unix epoch (replay window)
    swarm_tag: bytes = b""  # proof of the swarm secret; empty in swarms without one
    receipt: ReceiptInfo | None = None  # None: the sender keeps no ledger and signs no receipt


@dataclass(frozen=True)
class ParamsStart:
    """Opens the sender's encrypted parameters: the secretstream header, the plaintext size
    and how many ParamsChunk frames follow."""

    header: bytes
    size: int
    chunks: int


@dataclass(frozen=True)
class ParamsChunk:
    """One sealed secretstream chunk (at most 1 MiB of plaintext + 17 bytes)."""

    data: bytes


@dataclass(frozen=True)
class ReceiptSig:
    """Right after the Hellos and before our parameters, the one receipt message each way: our
    signature over the receipt (whole once both Hellos are known), and the body digests of our
    ledger records after the head the peer last saw (proof that our history only grew)."""

    sig: bytes
    digests: Sequence[bytes]

    def __post_init__(self) -> None:
        object.__setattr__(self, "digests", _tuple(self.digests))


@dataclass(frozen=True)
class ErrorMsg:
    code: str
    message: str

    def __post_init__(self) -> None:
        # Sender-side cap: constructing never fails on a long message, it is cut.
        if isinstance(self.message, str) and len(self.message) > MAX_ERROR_MESSAGE_LEN:
            object.__setattr__(self, "message", self.message[:MAX_ERROR_MESSAGE_LEN])


@dataclass(frozen=True)
class PeerRecord:
    peer_id: str
    addrs: Sequence[str]

    def __post_init__(self) -> None:
        object.__setattr__(self, "addrs", _tuple(self.addrs))


@dataclass(frozen=True)
class PeersRequest:
    addrs: Sequence[str]

    def __post_init__(self) -> None:
        object.__setattr__(self, "addrs", _tuple(self.addrs))


@dataclass(frozen=True)
class PeersResponse:
    peers: Sequence[PeerRecord]

    def __post_init__(self) -> None:
        object.__setattr__(self, "peers", _tuple(self.peers))


Message = (Hello | ParamsStart | ParamsChunk | ReceiptSig | ErrorMsg | PeersRequest
           | PeersResponse)

# Wire type tags.
T_HELLO = "hello"
T_PARAMS = "params"
T_CHUNK = "chunk"
T_RECEIPT_SIG = "receipt_sig"
T_ERROR = "error"
T_PEERS_REQUEST = "peers_req"
T_PEERS_RESPONSE = "peers_resp"


# --------------------------------------------------------------------------- encode


def _peer_record_wire(rec: PeerRecord) -> dict[str, Any]:
    return {"peer_id": rec.peer_id, "addrs": list(rec.addrs)}


def _to_wire_unchecked(msg: Message) -> dict[str, Any]:
    if isinstance(msg, Hello):
        body: dict[str, Any] = {
            "t": T_HELLO,
            "version": msg.version,
            "exchange_id": msg.exchange_id,
            "eph_pub": msg.eph_pub,
            "sig": msg.sig,
            "spec": msg.spec,
            "num_params": msg.num_params,
            "step": msg.step,
            "time_ms": msg.time_ms,
            "swarm_tag": msg.swarm_tag,
        }
        if msg.receipt is not None:
            info = msg.receipt
            body["receipt"] = {"samples": info.samples, "head_seq": info.head_seq,
                               "head_hash": info.head_hash, "seen_seq": info.seen_seq,
                               "params_hash": info.params_hash}
        return body
    if isinstance(msg, ParamsStart):
        return {"t": T_PARAMS, "header": msg.header, "size": msg.size, "chunks": msg.chunks}
    if isinstance(msg, ParamsChunk):
        return {"t": T_CHUNK, "data": msg.data}
    if isinstance(msg, ReceiptSig):
        return {"t": T_RECEIPT_SIG, "sig": msg.sig, "digests": list(msg.digests)}
    if isinstance(msg, ErrorMsg):
        return {"t": T_ERROR, "code": msg.code, "message": msg.message}
    if isinstance(msg, PeersRequest):
        return {"t": T_PEERS_REQUEST, "addrs": list(msg.addrs)}
    if isinstance(msg, PeersResponse):
        return {"t": T_PEERS_RESPONSE, "peers": [_peer_record_wire(p) for p in msg.peers]}
    raise TypeError(f"not a protocol message: {type(msg).__name__}")


def to_wire(msg: Message) -> dict[str, Any]:
    """Message -> wire map. Validates with the receiver's rules before returning."""
    body = _to_wire_unchecked(msg)
    from_wire(body)
    return body


def encode_message(msg: Message) -> bytes:
    return encode_frame(to_wire(msg))


# --------------------------------------------------------------------------- decode


def _field(body: dict[str, Any], key: str) -> Any:
    if key not in body:
        raise DecodeError(f"missing field {key!r}")
    return body[key]


def _int(body: dict[str, Any], key: str, lo: int, hi: int) -> int:
    value = _field(body, key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DecodeError(f"field {key!r} must be an int")
    if value < lo:
        raise DecodeError(f"field {key!r} must be >= {lo}")
    if value > hi:
        raise LimitExceeded(f"field {key!r} exceeds {hi}")
    return value


def _bytes_exact(body: dict[str, Any], key: str, size: int) -> bytes:
    value = _field(body, key)
    if not isinstance(value, bytes) or len(value) != size:
        raise DecodeError(f"field {key!r} must be {size} bytes")
    return value


def _str_value(value: Any, what: str, max_len: int, *, nonempty: bool = True) -> str:
    if not isinstance(value, str):
        raise DecodeError(f"{what} must be a str")
    if nonempty and not value:
        raise DecodeError(f"{what} must not be empty")
    if len(value) > max_len:
        raise LimitExceeded(f"{what} longer than {max_len} chars")
    return value


def _list_value(value: Any, what: str, max_items: int) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise DecodeError(f"{what} must be an array")
    if len(value) > max_items:
        raise LimitExceeded(f"{what} has more than {max_items} items")
    return list(value)


def _addrs(value: Any, what: str) -> tuple[str, ...]:
    items = _list_value(value, what, MAX_ADDRS)
    return tuple(_str_value(a, f"{what} item", MAX_ADDR_LEN) for a in items)


def _hello(body: dict[str, Any]) -> Hello:
    # Version first: a future peer may have changed every other field.
    version = _int(body, "version", 0, MAX_VERSION)
    if version != PROTOCOL_VERSION:
        raise VersionMismatch(f"peer speaks version {version}, we speak {PROTOCOL_VERSION}")
    return Hello(
        version=version,
        exchange_id=_bytes_exact(body, "exchange_id", EXCHANGE_ID_LEN),
        eph_pub=_bytes_exact(body, "eph_pub", EPH_PUB_LEN),
        sig=_bytes_exact(body, "sig", SIG_LEN),
        spec=_str_value(_field(body, "spec"), "spec", MAX_SPEC_LEN),
        num_params=_int(body, "num_params", 1, MAX_NUM_PARAMS),
        step=_int(body, "step", 0, MAX_STEP),
        time_ms=_int(body, "time_ms", 0, MAX_TIME_MS),
        swarm_tag=_swarm_tag(body),
        receipt=_receipt_info(body["receipt"]) if "receipt" in body else None,
    )


def _receipt_info(value: Any) -> ReceiptInfo:
    """Hello.receipt: absent (no ledger) or a map; nil or anything else is a decode error."""
    if not isinstance(value, dict):
        raise DecodeError("field 'receipt' must be a map")
    return ReceiptInfo(
        samples=_int(value, "samples", 0, MAX_STEP),
        head_seq=_int(value, "head_seq", 0, MAX_STEP),
        head_hash=_bytes_exact(value, "head_hash", 32),
        seen_seq=_int(value, "seen_seq", -1, MAX_STEP),
        params_hash=_bytes_exact(value, "params_hash", 32),
    )


def _swarm_tag(body: dict[str, Any]) -> bytes:
    value = _field(body, "swarm_tag")
    if not isinstance(value, bytes) or len(value) not in (0, SWARM_TAG_LEN):
        raise DecodeError(f"field 'swarm_tag' must be 0 or {SWARM_TAG_LEN} bytes")
    return value


def _params_start(body: dict[str, Any]) -> ParamsStart:
    return ParamsStart(
        header=_bytes_exact(body, "header", SECRETSTREAM_HEADER_LEN),
        size=_int(body, "size", 1, MAX_PARAMS_PLAINTEXT),
        chunks=_int(body, "chunks", 1, MAX_CHUNKS),
    )


def _params_chunk(body: dict[str, Any]) -> ParamsChunk:
    data = _field(body, "data")
    if not isinstance(data, bytes) or len(data) < SECRETSTREAM_ABYTES:
        raise DecodeError("chunk data must be bytes of at least 17 (ABYTES)")
    if len(data) > MAX_CHUNK_PLAINTEXT + SECRETSTREAM_ABYTES:
        raise LimitExceeded("chunk larger than the 1 MiB plaintext cap")
    return ParamsChunk(data=data)


def _error(body: dict[str, Any]) -> ErrorMsg:
    code = _str_value(_field(body, "code"), "code", MAX_ERROR_CODE_LEN)
    message = _str_value(_field(body, "message"), "message", MAX_ERROR_MESSAGE_LEN, nonempty=False)
    return ErrorMsg(code=code, message=message)


def _peer_record(value: Any) -> PeerRecord:
    if not isinstance(value, dict):
        raise DecodeError("peer record must be a map")
    return PeerRecord(
        peer_id=_str_value(_field(value, "peer_id"), "peer_id", MAX_PEER_ID_LEN),
        addrs=_addrs(_field(value, "addrs"), "addrs"),
    )


def from_wire(body: dict[str, Any]) -> Message:
    """Validate a decoded frame body and build the message it describes."""
    if not isinstance(body, dict):
        raise DecodeError("message must be a map")
    kind = _field(body, "t")
    if kind == T_HELLO:
        return _hello(body)
    if kind == T_PARAMS:
        return _params_start(body)
    if kind == T_CHUNK:
        return _params_chunk(body)
    if kind == T_RECEIPT_SIG:
        digests = _list_value(_field(body, "digests"), "digests", MAX_LEDGER_DIGESTS)
        if not all(isinstance(d, bytes) and len(d) == 32 for d in digests):
            raise DecodeError("digests must be 32-byte bin values")
        return ReceiptSig(sig=_bytes_exact(body, "sig", SIG_LEN), digests=tuple(digests))
    if kind == T_ERROR:
        return _error(body)
    if kind == T_PEERS_REQUEST:
        return PeersRequest(addrs=_addrs(_field(body, "addrs"), "addrs"))
    if kind == T_PEERS_RESPONSE:
        peers = _list_value(_field(body, "peers"), "peers", MAX_PEERS)
        return PeersResponse(peers=tuple(_peer_record(p) for p in peers))
    raise DecodeError(f"unknown message type {kind!r:.40}")
