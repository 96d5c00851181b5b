"""One push-pull averaging exchange over a stream, both roles.

Wire flow (protocol/PROTOCOL.md): initiator -> Hello, responder -> Hello, then both stream their
encrypted parameters (ParamsStart + chunks) concurrently and read the other's. Sending and reading
at the same time matters: yamux resets a sender whose peer stops reading for 5 s, so
write-all-then-read deadlocks on large models.

Rules:
- The whole exchange runs under one deadline (averaging.timeout_s): a frozen peer costs at most
  that.
- Any protocol error from the peer is answered with an ErrorMsg naming the problem (best effort),
  and raised to the caller, which counts a failure and a strike; nothing here stops the daemon.
- The parameters sent are a snapshot S taken before the handshake (not copied: the model never
  modifies a vector it handed out). Training goes on meanwhile; the remote vector R is handed to
  `merge_remote(S, R, step)`, which merges it into whatever the local model is by then (the
  runner's rule: C + w * (R - S)), or, for a model without it, to `apply_remote(R, step)`.
- Parameters stream: each chunk is sealed as it is sent and opened as it arrives, straight into
  the receive buffer, so an exchange holds about one model-sized buffer (what it receives).
- Compression (averaging.compression, gossipd/compress.py): the sender encodes its snapshot
  ("bf16"/"int8", through the node's error-feedback hook) and streams the encoded buffer.
  Everything after the swap uses the DEQUANTIZED sent vector S_hat, what the peer actually
  got: the merge C + w * (R_hat - S_hat) and the receipt's sent hash. That keeps the pair's
  sum exact and both receipts agreeing. The receiver always gets float32 from the session,
  whatever encoding the peer chose.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import trio

from gossipd.netapi import MessageStream, Stream, Transport, TransportError
from gossipd.provenance import Provenance
from gossipd.receipts import ExchangeFacts, swap_receipts
from protocol.errors import ProtocolError, UnexpectedMessage
from protocol.messages import AVG_PROTOCOL_ID, ErrorMsg, Hello, Message, encode_message
from protocol.quant import decode, encode
from protocol.receipt import params_hash
from protocol.replay import ReplayCheck
from protocol.session import AveragingSession


class PeerRefused(Exception):
    """The peer answered with an ErrorMsg instead of taking part."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"peer refused: {code}: {message}")
        self.code = code


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class LocalModel:
    """What an exchange needs from the node: identity, model spec, snapshot and mixing hooks,
    the swarm key (None in swarms without a secret) and the replay table of served Hellos.

    `snapshot()` returns a vector nobody modifies while the exchange sends it. When
    `merge_remote` is set it receives (sent snapshot, remote vector, remote step) and
    `apply_remote` is not called; the remote vector is the caller's to keep or overwrite.

    `compression` is the encoding this node sends ("none", "bf16", "int8"); `compress`, when
    set, turns a snapshot into (encoded buffer, dequantized vector) for it, e.g. the node's
    gossipd.compress.ErrorFeedback. Without a hook a compressed mode is plain quantization
    (no error feedback)."""

    peer_id_bytes: bytes
    seed: bytes
    spec: str
    num_params: int
    snapshot: Callable[[], tuple[np.ndarray, int]]
    apply_remote: Callable[[np.ndarray, int], None]
    swarm_key: bytes | None = None
    replay: ReplayCheck | None = None
    wall_ms: Callable[[], int] = field(default=wall_clock_ms)
    merge_remote: Callable[[np.ndarray, np.ndarray, int], None] | None = None
    provenance: Provenance | None = None  # receipts: signed by both, kept in the ledger
    samples_since_exchange: Callable[[], int] = field(default=lambda: 0)
    compression: str = "none"
    compress: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None


@dataclass(frozen=True)
class ExchangeOutcome:
    peer_id: str
    remote_step: int
    bytes_sent: int
    bytes_received: int
    receipt_s: float = 0.0  # time spent on the receipt round and its ledger record


@dataclass
class ByteCounter:
    """Bytes moved by exchanges, success or not, so status shows the real cost."""

    sent: int = 0
    received: int = 0

    def add(self, stream: MessageStream) -> None:
        self.sent += stream.bytes_sent
        self.received += stream.bytes_received


def _expect(msg: Message, kind: type) -> None:
    if isinstance(msg, ErrorMsg):
        raise PeerRefused(msg.code, msg.message)
    if not isinstance(msg, kind):
        raise UnexpectedMessage(f"expected {kind.__name__}, got {type(msg).__name__}")


async def _swap_params(
    ms: MessageStream, session: AveragingSession, frames: Iterator[bytes | bytearray]
) -> tuple[np.ndarray, int]:
    """Stream our parameters out while theirs stream in; the first failure cancels the other
    half. Chunks are sealed as they are sent and opened as they arrive."""
    received: list[tuple[np.ndarray, int]] = []
    errors: list[Exception] = []

    async with trio.open_nursery() as nursery:

        async def guarded(half: Callable[[], Awaitable[None]]) -> None:
            # Errors are collected, not raised, so callers see the plain exception rather
            # than an ExceptionGroup from this nursery.
            try:
                await half()
            except (TransportError, ProtocolError, PeerRefused) as exc:
                errors.append(exc)
                nursery.cancel_scope.cancel()

        async def read() -> None:
            while True:
                msg = await ms.receive()
                if isinstance(msg, ErrorMsg):
                    raise PeerRefused(msg.code, msg.message)
                result = session.receive(msg)
                if result is not None:
                    received.append(result)
                    return

        async def send() -> None:
            for frame in frames:
                await ms.send(frame)

        nursery.start_soon(guarded, send)
        nursery.start_soon(guarded, read)
    if errors:
        raise errors[0]
    return received[0]


async def _send_error(ms: MessageStream, exc: ProtocolError) -> None:
    with contextlib.suppress(TransportError), trio.move_on_after(1):
        await ms.send(encode_message(ErrorMsg(code=exc.code, message=str(exc)[:512])))


def _new_session(
    transport: Transport, peer_id: str, model: LocalModel, step: int, hello: Hello | None
) -> AveragingSession:
    """The initiator passes hello=None; the responder passes the initiator's Hello."""
    return AveragingSession(
        initiator=hello is None,
        local_peer_id=model.peer_id_bytes,
        local_seed=model.seed,
        remote_peer_id=transport.peer_id_bytes(peer_id),
        spec=model.spec,
        num_params=model.num_params,
        step=step,
        exchange_id=None if hello is None else hello.exchange_id,
        time_ms=model.wall_ms(),
        swarm_key=model.swarm_key,
        replay=model.replay,
    )


def _compressed(model: LocalModel, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(payload to stream, dequantized vector it decodes to) of the snapshot ``flat``."""
    if model.compression == "none":
        return flat, flat
    if model.compress is not None:
        return model.compress(flat)
    payload = encode(flat, model.compression)
    return payload, decode(payload, int(flat.size), model.compression)


async def _finish(
    ms: MessageStream, session: AveragingSession, model: LocalModel, flat: np.ndarray, step: int
) -> ExchangeOutcome:
    """Both roles, once keys exist: swap encrypted parameters, then mix theirs into ours."""
    payload, flat = _compressed(model, flat)  # from here on `flat` is what the peer receives
    frames = session.params_frames(payload, step, encoding=model.compression)
    remote, remote_step = await _swap_params(ms, session, frames)
    receipt = None
    t_receipt = 0.0
    if model.provenance is not None:
        t0 = trio.current_time()
        # No merge before the peer's signature on the receipt verifies (gossipd/receipts.py).
        assert session.exchange_id is not None
        facts = ExchangeFacts(
            initiator=session.initiator, exchange_id=session.exchange_id,
            local_peer=model.peer_id_bytes, remote_peer=session.remote_peer_id,
            time_ms=session.initiator_time_ms, local_step=step, remote_step=remote_step,
            sent_hash=params_hash(flat), received_hash=params_hash(remote))
        receipt = await swap_receipts(ms, facts, model.seed, model.provenance,
                                      model.samples_since_exchange())
        t_receipt = trio.current_time() - t0
    if model.merge_remote is not None:
        model.merge_remote(flat, remote, remote_step)
    else:
        model.apply_remote(remote, remote_step)
    if receipt is not None and model.provenance is not None:
        t0 = trio.current_time()
        with trio.CancelScope(shield=True):  # merged: the record must not be lost to a deadline
            await model.provenance.record_receipt(receipt)
        t_receipt += trio.current_time() - t0
    return ExchangeOutcome(ms.stream.remote_peer, remote_step, ms.bytes_sent, ms.bytes_received,
                           t_receipt)


async def initiate(
    transport: Transport, peer_id: str, model: LocalModel, timeout: float, counter: ByteCounter
) -> ExchangeOutcome:
    """Average with `peer_id`. Raises TransportError, ProtocolError, PeerRefused or TooSlowError."""
    with trio.fail_after(timeout):
        stream = await transport.open_stream(peer_id, AVG_PROTOCOL_ID)
        ms = MessageStream(stream)
        try:
            flat, step = model.snapshot()
            session = _new_session(transport, peer_id, model, step, None)
            await ms.send(session.hello())
            reply = await ms.receive()
            try:
                _expect(reply, Hello)
                assert isinstance(reply, Hello)
                session.receive_hello(reply)
            except ProtocolError as exc:
                await _send_error(ms, exc)
                raise
            return await _finish(ms, session, model, flat, step)
        finally:
            counter.add(ms)
            await _close(stream)


async def respond(
    transport: Transport, stream: Stream, model: LocalModel, timeout: float, counter: ByteCounter
) -> ExchangeOutcome:
    """Serve one exchange started by `stream.remote_peer`. Raises like `initiate`."""
    ms = MessageStream(stream)
    try:
        with trio.fail_after(timeout):
            first = await ms.receive()
            try:
                _expect(first, Hello)
                assert isinstance(first, Hello)
                flat, step = model.snapshot()
                session = _new_session(transport, stream.remote_peer, model, step, first)
                session.receive_hello(first)
            except ProtocolError as exc:
                await _send_error(ms, exc)
                raise
            await ms.send(session.hello())
            return await _finish(ms, session, model, flat, step)
    finally:
        counter.add(ms)
        await _close(stream)


async def _close(stream: Stream) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(1):
        await stream.aclose()
