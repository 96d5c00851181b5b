"""Sans-io state machine of one averaging exchange (both roles).

Wire flow on an ``AVG_PROTOCOL_ID`` stream::

    initiator                             responder
      Hello{receipt}  ------------------>  receive_hello()
      receive_hello()  <-----------------  Hello{receipt}
      ParamsStart, ParamsChunk x k  ---->   (both directions concurrently)
                     <-----------------  ParamsStart, ParamsChunk x k
      ReceiptSig  ---------------------->   (both directions concurrently; only when both
                     <-----------------  ReceiptSig     Hellos carried a receipt)
Either side may send ErrorMsg instead of its next message and close.

The receipt info each Hello carries (``receipt=``, PROTOCOL.md 4.7) is all a peer needs to
build the exchange's receipt once the parameters are swapped; the ReceiptSig round itself is
the caller's (gossipd/receipts.py): it is small, and both sides write before they read.

The session never touches a socket: ``hello()``/``params_frames()`` return bytes
to write, ``receive_*()`` take messages the caller decoded with FrameDecoder +
from_wire. Parameters stream: the sender seals one chunk per frame as it goes, the
receiver opens each chunk as it arrives into one buffer of the announced size.
Neither side copies the whole vector: the sender seals slices of the caller's array
(after a short header, protocol.tensors.params_header), the receiver opens chunks
straight into the float32 array it returns.
State rules:
  * each message is sent and received at most once, in the order above; anything
    else raises UnexpectedMessage (also for local misuse of the API);
  * after any ProtocolError from a ``receive_*`` call the session is failed and
    every later call raises UnexpectedMessage: keys of a half-verified handshake
    must never be used.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from .crypto import (
    Buffer,
    Opener,
    Sealer,
    chunk_count,
    ed25519_public_key_from_peer_id,
    ephemeral_from_private,
    new_ephemeral,
    public_key_from_seed,
    sign,
    verify,
    x25519_shared,
)
from .errors import (
    AuthenticationError,
    DecodeError,
    IntegrityError,
    LimitExceeded,
    ProtocolError,
    RemoteError,
    SpecMismatch,
    UnexpectedMessage,
    VersionMismatch,
)
from .framing import DEFAULT_MAX_FRAME
from .handshake import (
    ROLE_INITIATOR,
    ROLE_RESPONDER,
    SWARM_KEY_LEN,
    SessionKeys,
    derive_keys,
    kdf_info,
    signed_transcript,
    swarm_tag,
    swarm_tag_ok,
)
from .messages import (
    EXCHANGE_ID_LEN,
    MAX_CHUNK_PLAINTEXT,
    MAX_CHUNKS,
    MAX_NUM_PARAMS,
    MAX_SPEC_LEN,
    MAX_STEP,
    MAX_TIME_MS,
    PROTOCOL_VERSION,
    SECRETSTREAM_ABYTES,
    ErrorMsg,
    Hello,
    Message,
    ParamsChunk,
    ParamsStart,
    ReceiptInfo,
    encode_message,
    to_wire,
)
from .quant import WIRE_DTYPES, encoded_size
from .replay import ReplayCheck
from .tensors import (
    CHUNK_FRAME_OVERHEAD,
    MAX_HEADER_LEN,
    auto_chunk_size,
    decode_params,
    decode_payload,
    params_plaintext_bound,
    parse_params_header,
    payload_parts,
)

__all__ = ["AveragingSession", "error_frame"]


def error_frame(exc: BaseException) -> bytes:
    """Framed ErrorMsg for ``exc``. Non-protocol errors are reported as
    ``internal`` without their text, so local details never leak to peers."""
    if isinstance(exc, ProtocolError):
        return encode_message(ErrorMsg(code=exc.code, message=str(exc)))
    return encode_message(ErrorMsg(code="internal", message=type(exc).__name__))


class AveragingSession:
    def __init__(
        self,
        *,
        initiator: bool,
        local_peer_id: bytes,
        local_seed: bytes,
        remote_peer_id: bytes,
        spec: str,
        num_params: int,
        step: int,
        exchange_id: bytes | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
        eph_private: bytes | None = None,
        chunk_size: int | None = None,
        time_ms: int = 0,
        swarm_key: bytes | None = None,
        replay: ReplayCheck | None = None,
        receipt: ReceiptInfo | None = None,
    ) -> None:
        """``time_ms`` is the local wall clock (ms since the epoch) at the start of this
        exchange: it goes into our Hello and, for a responder with a ``replay`` guard, is
        the "now" against which the initiator's Hello time is judged. ``swarm_key`` (32
        bytes) is the hashed swarm secret: both Hellos must prove it, and it is mixed into
        the payload keys. ``chunk_size`` (plaintext bytes per ParamsChunk, at most 1 MiB) is
        chosen from the payload size when None (protocol.tensors.auto_chunk_size).
        ``receipt`` goes into our Hello: our side of the exchange's receipt (None: we keep
        no ledger and sign none)."""
        # Local configuration errors are ValueError, not ProtocolError.
        if len(local_seed) != 32:
            raise ValueError("local_seed must be 32 bytes")
        try:
            local_pub = ed25519_public_key_from_peer_id(local_peer_id)
        except AuthenticationError as exc:
            raise ValueError(f"local peer ID: {exc}") from None
        if public_key_from_seed(local_seed) != local_pub:
            raise ValueError("local_seed does not belong to local_peer_id")
        if remote_peer_id == local_peer_id:
            raise ValueError("refusing to average with ourselves")
        if not isinstance(spec, str) or not 1 <= len(spec) <= MAX_SPEC_LEN:
            raise ValueError(f"spec must be a str of 1..{MAX_SPEC_LEN} chars")
        if not 1 <= num_params <= MAX_NUM_PARAMS:
            raise ValueError("num_params out of range")
        if not 0 <= step <= MAX_STEP:
            raise ValueError("step out of range")
        if exchange_id is not None and len(exchange_id) != EXCHANGE_ID_LEN:
            raise ValueError("exchange_id must be 16 bytes")
        if not 0 <= time_ms <= MAX_TIME_MS:
            raise ValueError("time_ms out of range")
        if swarm_key is not None and len(swarm_key) != SWARM_KEY_LEN:
            raise ValueError(f"swarm_key must be {SWARM_KEY_LEN} bytes")
        if chunk_size is not None and not 1 <= chunk_size <= MAX_CHUNK_PLAINTEXT:
            raise ValueError(f"chunk_size must be in 1..{MAX_CHUNK_PLAINTEXT}")
        # A remote ID without an inline Ed25519 key can never authenticate.
        self._remote_pub = ed25519_public_key_from_peer_id(remote_peer_id)

        self._initiator = initiator
        self._local_peer_id = local_peer_id
        self._local_seed = local_seed
        self._remote_peer_id = remote_peer_id
        self._spec = spec
        self._num_params = num_params
        self._step = step
        self._max_frame = max_frame
        self._chunk_size = chunk_size
        self._time_ms = time_ms
        self._swarm_key = swarm_key
        self._replay = replay
        self._receipt = receipt
        self._remote_receipt: ReceiptInfo | None = None
        if initiator and exchange_id is None:
            exchange_id = os.urandom(EXCHANGE_ID_LEN)
        # Responder: an explicit exchange_id is an expectation the Hello must meet.
        self._exchange_id = exchange_id
        self._eph_priv, self._eph_pub = (
            new_ephemeral() if eph_private is None else ephemeral_from_private(eph_private)
        )
        self._keys: SessionKeys | None = None
        self._remote_step: int | None = None
        self._initiator_time_ms: int | None = None
        self._hello_sent = False
        self._hello_received = False
        self._params_sent = False
        self._params_received = False
        self._inbound: _Inbound | None = None
        self._received_plain = False
        self._failed: ProtocolError | None = None

    # ------------------------------------------------------------ properties

    @property
    def initiator(self) -> bool:
        return self._initiator

    @property
    def exchange_id(self) -> bytes | None:
        """None only for a responder that has not yet seen the initiator's Hello."""
        return self._exchange_id

    @property
    def eph_pub(self) -> bytes:
        return self._eph_pub

    @property
    def keys(self) -> SessionKeys | None:
        """Derived directional keys (None before receive_hello); for tests/vectors."""
        return self._keys

    @property
    def remote_peer_id(self) -> bytes:
        return self._remote_peer_id

    @property
    def initiator_time_ms(self) -> int:
        """The initiator's Hello time: what both sides put into the exchange's receipt."""
        if self._initiator_time_ms is None:
            raise UnexpectedMessage("the initiator's time is unknown before both Hellos")
        return self._initiator_time_ms

    @property
    def remote_step(self) -> int:
        if self._remote_step is None:
            raise UnexpectedMessage("remote step is unknown before the peer's Hello")
        return self._remote_step

    @property
    def remote_receipt(self) -> ReceiptInfo | None:
        """The receipt info of the peer's Hello; None before it, or when the peer keeps no
        ledger."""
        return self._remote_receipt

    @property
    def failed(self) -> bool:
        return self._failed is not None

    @property
    def done(self) -> bool:
        """Both Params have been sent and received."""
        return self._params_sent and self._params_received

    # ------------------------------------------------------------ helpers

    def _check_alive(self) -> None:
        if self._failed is not None:
            raise UnexpectedMessage(f"session already failed: {self._failed.code}")

    def _fail(self, exc: ProtocolError) -> ProtocolError:
        self._failed = exc
        return exc

    def _role(self, initiator: bool) -> int:
        return ROLE_INITIATOR if initiator else ROLE_RESPONDER

    # ------------------------------------------------------------ handshake

    def hello(self) -> bytes:
        """Framed Hello. Initiator: first call. Responder: after receive_hello."""
        self._check_alive()
        if self._hello_sent:
            raise UnexpectedMessage("Hello already sent")
        if not self._initiator and not self._hello_received:
            raise UnexpectedMessage("responder must receive the initiator's Hello first")
        assert self._exchange_id is not None  # set in __init__ or receive_hello
        transcript = signed_transcript(
            version=PROTOCOL_VERSION,
            role=self._role(self._initiator),
            exchange_id=self._exchange_id,
            signer_peer_id=self._local_peer_id,
            receiver_peer_id=self._remote_peer_id,
            eph_pub=self._eph_pub,
            spec=self._spec,
            num_params=self._num_params,
            step=self._step,
            time_ms=self._time_ms,
        )
        msg = Hello(
            version=PROTOCOL_VERSION,
            exchange_id=self._exchange_id,
            eph_pub=self._eph_pub,
            sig=sign(self._local_seed, transcript),
            spec=self._spec,
            num_params=self._num_params,
            step=self._step,
            time_ms=self._time_ms,
            swarm_tag=swarm_tag(self._swarm_key, transcript),
            receipt=self._receipt,
        )
        self._hello_sent = True
        return encode_message(msg)

    def receive_hello(self, msg: Hello) -> None:
        self._check_alive()
        try:
            self._receive_hello(msg)
        except ProtocolError as exc:
            raise self._fail(exc) from None

    def _receive_hello(self, msg: Hello) -> None:
        if not isinstance(msg, Hello):
            raise UnexpectedMessage(f"expected Hello, got {type(msg).__name__}")
        to_wire(msg)  # field validation, for Hellos built by hand rather than from_wire
        if self._hello_received:
            raise UnexpectedMessage("Hello already received")
        if self._initiator and not self._hello_sent:
            raise UnexpectedMessage("initiator must send its Hello first")
        if msg.version != PROTOCOL_VERSION:
            raise VersionMismatch(f"peer speaks version {msg.version}")
        if self._exchange_id is not None and msg.exchange_id != self._exchange_id:
            raise AuthenticationError("Hello belongs to another exchange")
        # Verify before judging the claims, so a reported SpecMismatch is authentic.
        transcript = signed_transcript(
            version=msg.version,
            role=self._role(not self._initiator),
            exchange_id=msg.exchange_id,
            signer_peer_id=self._remote_peer_id,
            receiver_peer_id=self._local_peer_id,
            eph_pub=msg.eph_pub,
            spec=msg.spec,
            num_params=msg.num_params,
            step=msg.step,
            time_ms=msg.time_ms,
        )
        verify(self._remote_pub, transcript, msg.sig)
        # The signature proved who sent it; now whether they belong and whether it is fresh.
        if not swarm_tag_ok(self._swarm_key, transcript, msg.swarm_tag):
            if self._swarm_key is None:
                raise AuthenticationError("peer uses a swarm secret and we have none")
            raise AuthenticationError("peer does not hold this swarm's secret")
        if self._replay is not None and not self._initiator:
            self._replay.check(msg.exchange_id, msg.time_ms, self._time_ms)
        if msg.spec != self._spec:
            raise SpecMismatch(f"peer trains {msg.spec!r:.80}, we train {self._spec!r:.80}")
        if msg.num_params != self._num_params:
            raise SpecMismatch(f"peer has {msg.num_params} parameters, we have {self._num_params}")
        shared = x25519_shared(self._eph_priv, msg.eph_pub)
        if self._initiator:
            ids = (self._local_peer_id, self._remote_peer_id)
            ephs = (self._eph_pub, msg.eph_pub)
        else:
            ids = (self._remote_peer_id, self._local_peer_id)
            ephs = (msg.eph_pub, self._eph_pub)
        info = kdf_info(
            version=PROTOCOL_VERSION,
            exchange_id=msg.exchange_id,
            initiator_peer_id=ids[0],
            responder_peer_id=ids[1],
            initiator_eph_pub=ephs[0],
            responder_eph_pub=ephs[1],
            spec=self._spec,
            num_params=self._num_params,
        )
        self._keys = derive_keys(shared, info, self._swarm_key)
        self._exchange_id = msg.exchange_id
        self._remote_step = msg.step
        self._initiator_time_ms = self._time_ms if self._initiator else msg.time_ms
        self._remote_receipt = msg.receipt
        self._hello_received = True

    # ------------------------------------------------------------ parameters

    def _send_key(self, keys: SessionKeys) -> bytes:
        return keys.i2r if self._initiator else keys.r2i

    def _recv_key(self, keys: SessionKeys) -> bytes:
        return keys.r2i if self._initiator else keys.i2r

    def _require_keys(self) -> SessionKeys:
        if self._keys is None or not self._hello_sent:
            raise UnexpectedMessage("Params before both Hellos were exchanged")
        return self._keys

    def params_frames(self, flat: npt.NDArray[Any], step: int, *,
                      encoding: str = "none") -> Iterator[bytes | bytearray]:
        """Framed ParamsStart, then one framed ParamsChunk per chunk, encrypted lazily as the
        caller pulls them, so a sender holds one sealed chunk at a time. Chunks are sealed
        from slices of ``flat`` itself (no serialised copy of the vector), so ``flat`` must not
        change until the last frame is pulled. Arguments, state and frame sizes are checked
        before the first frame is returned.

        ``encoding`` ("none", "bf16", "int8"; PROTOCOL.md 4.4) is this sender's choice. With
        "bf16"/"int8", ``flat`` is either the float32 vector (encoded here, into one buffer of
        the encoded size) or the uint8 buffer ``protocol.quant.encode`` made of it (a sender
        with error feedback encodes itself and sends that buffer as is)."""
        self._check_alive()
        keys = self._require_keys()
        if self._params_sent:
            raise UnexpectedMessage("Params already sent")
        header, data = payload_parts(flat, step, encoding, self._num_params)
        size = len(header) + data.nbytes
        chunk = auto_chunk_size(size) if self._chunk_size is None else self._chunk_size
        count = chunk_count(size, chunk)
        if count > MAX_CHUNKS:
            raise LimitExceeded(f"plaintext needs {count} chunks, cap is {MAX_CHUNKS}")
        largest = min(size, chunk) + SECRETSTREAM_ABYTES + CHUNK_FRAME_OVERHEAD
        if largest > self._max_frame:
            raise LimitExceeded(f"a chunk frame of {largest} bytes exceeds max_frame")
        self._params_sent = True
        sealer = Sealer(self._send_key(keys))
        start = encode_message(ParamsStart(header=sealer.header, size=size, chunks=count))
        return self._chunk_frames(start, sealer, header, data, chunk, count)

    def _chunk_frames(self, start: bytes, sealer: Sealer, header: bytes, data: memoryview,
                      size: int, count: int) -> Iterator[bytes | bytearray]:
        yield start
        h = len(header)
        total = h + data.nbytes
        for i in range(count):
            lo, hi = i * size, min((i + 1) * size, total)
            piece: Buffer
            if lo >= h:
                piece = data[lo - h : hi - h]
            else:  # a chunk holding (part of) the header: one chunk-sized copy per exchange
                joined = bytearray(hi - lo)
                k = min(hi, h) - lo
                joined[:k] = header[lo : lo + k]
                joined[k:] = data[: hi - lo - k]
                piece = joined
            yield chunk_frame(sealer, piece, i == count - 1)

    def params_frame(self, flat: npt.NDArray[Any], step: int, *,
                     encoding: str = "none") -> bytes:
        """All of ``params_frames`` as one bytes object (small models, tests)."""
        return b"".join(self.params_frames(flat, step, encoding=encoding))

    def receive_params_start(self, msg: ParamsStart) -> None:
        self._check_alive()
        try:
            if not isinstance(msg, ParamsStart):
                raise UnexpectedMessage(f"expected ParamsStart, got {type(msg).__name__}")
            to_wire(msg)  # field validation, for messages built by hand rather than from_wire
            keys = self._require_keys()
            if self._inbound is not None or self._params_received:
                raise UnexpectedMessage("ParamsStart already received")
            bound = params_plaintext_bound(self._num_params)
            if msg.size > bound:
                raise LimitExceeded(f"peer announces {msg.size} bytes of parameters, at most "
                                    f"{bound} fit {self._num_params} parameters")
            # Every chunk carries at least one byte and at most MAX_CHUNK_PLAINTEXT.
            if not chunk_count(msg.size, MAX_CHUNK_PLAINTEXT) <= msg.chunks <= msg.size:
                raise DecodeError(f"{msg.chunks} chunks cannot carry {msg.size} bytes")
            self._inbound = _Inbound(Opener(self._recv_key(keys), msg.header), msg.size,
                                     msg.chunks, self._num_params)
        except ProtocolError as exc:
            raise self._fail(exc) from None

    def receive_chunk(self, msg: ParamsChunk) -> tuple[npt.NDArray[np.float32], int] | None:
        """Decrypt one chunk; after the last one, decode -> (flat float32, remote step)."""
        self._check_alive()
        try:
            if not isinstance(msg, ParamsChunk):
                raise UnexpectedMessage(f"expected ParamsChunk, got {type(msg).__name__}")
            to_wire(msg)
            inbound = self._inbound
            if inbound is None:
                raise UnexpectedMessage("ParamsChunk before ParamsStart"
                                        if not self._params_received else "extra ParamsChunk")
            result = inbound.add(msg.data)
            if result is None:
                return None
            flat, step = result
        except ProtocolError as exc:
            raise self._fail(exc) from None
        self._received_plain = inbound.plain
        self._inbound = None
        self._params_received = True
        return flat, step

    def partial_params(self) -> memoryview:
        """While the peer's parameters arrive: the data bytes received so far, when they come
        as plain ``"<f4"`` in the standard layout (what an uncompressed sender sends); empty
        otherwise. Read-only; valid until the next call. A caller may hash them while the rest
        arrives: if ``received_plain`` is then true, the vector returned by the last chunk is
        a float32 view of exactly these bytes, continued to its end."""
        inbound = self._inbound
        return memoryview(b"") if inbound is None else inbound.partial()

    @property
    def received_plain(self) -> bool:
        """The peer's parameters arrived as plain ``"<f4"`` in the standard layout."""
        return self._received_plain

    def receive(self, msg: Message) -> tuple[npt.NDArray[np.float32], int] | None:
        """Dispatch any decoded message: Hello/ParamsStart/non-final chunk -> None, the final
        ParamsChunk -> (flat, step), ErrorMsg -> RemoteError; anything else is
        UnexpectedMessage."""
        self._check_alive()
        if isinstance(msg, Hello):
            self.receive_hello(msg)
            return None
        if isinstance(msg, ParamsStart):
            self.receive_params_start(msg)
            return None
        if isinstance(msg, ParamsChunk):
            return self.receive_chunk(msg)
        if isinstance(msg, ErrorMsg):
            raise self._fail(RemoteError(msg.code, msg.message))
        raise self._fail(UnexpectedMessage(f"{type(msg).__name__} on an averaging stream"))


# Map prefix of a ParamsChunk body, {"t": "chunk", "data": <bin>}, as encode_message writes it.
_CHUNK_BODY_PREFIX = b"\x82\xa1t\xa5chunk\xa4data"


def chunk_frame(sealer: Sealer, piece: Buffer, final: bool) -> bytearray:
    """The framed ParamsChunk of ``piece`` sealed with ``sealer``: the same bytes as
    ``encode_message(ParamsChunk(data=sealer.push(piece, final)))``, sealed straight into the
    frame buffer."""
    sealed_len = memoryview(piece).nbytes + SECRETSTREAM_ABYTES
    if sealed_len < 1 << 8:
        bin_header = b"\xc4" + sealed_len.to_bytes(1, "big")
    elif sealed_len < 1 << 16:
        bin_header = b"\xc5" + sealed_len.to_bytes(2, "big")
    else:
        bin_header = b"\xc6" + sealed_len.to_bytes(4, "big")
    body_len = len(_CHUNK_BODY_PREFIX) + len(bin_header) + sealed_len
    prefix = body_len.to_bytes(4, "big") + _CHUNK_BODY_PREFIX + bin_header
    frame = bytearray(len(prefix) + sealed_len)
    frame[: len(prefix)] = prefix
    sealer.push_into(piece, final, memoryview(frame)[len(prefix) :])
    return frame


class _Inbound:
    """The peer's parameters while they arrive: one opener and one buffer of the announced
    plaintext size (bounded by the caller) that every chunk is opened straight into. The buffer
    starts 0-3 bytes in, so that in the standard "<f4" layout (protocol.tensors.params_header,
    then the data) the data lands 4-byte aligned and is returned as a float32 view of the
    buffer. The sender's encoding is only known once the header is open: the announced size
    fixes the header length each encoding would have, and at most one of those headers can
    match (their dtype strings differ). bf16/int8 data is decoded from the buffer into a new
    float32 array; anything else goes to the general decoder and its errors."""

    def __init__(self, opener: Opener, size: int, chunks: int, num_params: int) -> None:
        self._opener = opener
        self._size = size
        self._num_params = num_params
        head_len = size - 4 * num_params
        fits = 0 < head_len <= MAX_HEADER_LEN
        self._offset = -head_len % 4 if fits else 0
        self._plain_start = self._offset + head_len if fits else -1  # where "<f4" data starts
        self._buf = np.empty(self._offset + size, np.uint8)
        self._view = self._buf.data
        self._filled = 0
        self._left = chunks
        self.plain = False  # set by _decode: the data was "<f4" at _plain_start

    def partial(self) -> memoryview:
        """The "<f4" data bytes received so far (empty where the size rules that layout out)."""
        end = self._offset + self._filled
        if self._plain_start < 0 or end <= self._plain_start:
            return memoryview(b"")
        return self._view[self._plain_start : end].toreadonly()

    def add(self, sealed: bytes) -> tuple[npt.NDArray[np.float32], int] | None:
        n = len(sealed) - SECRETSTREAM_ABYTES
        room = self._size - self._filled
        if n < 1 or n > room:
            raise DecodeError(f"chunk of {n} bytes where {room} remain of the announced size")
        self._left -= 1
        last = self._left == 0
        at = self._offset + self._filled
        self._opener.pull_into(sealed, last, self._view[at : at + n])
        self._filled += n
        if not last:
            return None
        if self._filled != self._size:
            raise IntegrityError("stream ended short of the announced size")
        return self._decode()

    def _decode(self) -> tuple[npt.NDArray[np.float32], int]:
        payload = self._buf[self._offset : self._offset + self._size]
        n = self._num_params
        for mode, dtype in WIRE_DTYPES.items():
            h = self._size - encoded_size(n, mode)
            if not 0 < h <= MAX_HEADER_LEN:
                continue
            step = parse_params_header(bytes(payload[:h]), n, dtype)
            if step is not None:
                flat = decode_payload(payload[h:], n, dtype)
                self.plain = mode == "none" and self._offset + h == self._plain_start
                return flat, step
        # Not a standard layout: the general decoder, with its errors.
        return decode_params(bytes(payload), n)
