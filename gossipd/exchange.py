"""One push-pull averaging exchange over a stream, both roles.

Wire flow (protocol/PROTOCOL.md): initiator -> Hello, responder -> Hello, then both stream their
encrypted parameters (ParamsStart + chunks) concurrently and read the other's. Sending and reading
at the same time matters: yamux resets a sender whose peer stops reading for 5 s, so
write-all-then-read deadlocks on large models. With provenance, each Hello carries the sender's
side of the receipt, including the hash of the parameters it is about to send
(gossipd/receipts.py), and each side's ReceiptSig goes just ahead of its parameters.

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
- Receipts (when both Hellos carry receipt info): we hash what we will send before our Hello
  (a large vector in a worker thread) and commit to it there; once both Hellos are in, the
  whole receipt is known, so we sign and send our ReceiptSig first on our half of the swap,
  and read and check the peer's first on the other half. The peer's data is hashed piece by
  piece as it arrives (a large vector in a worker thread) and must match the hash it
  committed to. No merge before the peer's signature verifies and its parameters match. The
  record is then written (one write, no fsync; gossipd/provenance.py fsyncs it from a thread):
  no waiting for the disk on the exchange's path. A node with provenance whose peer's Hello
  carries no receipt info still sends its parameters (the peer may merge them) but merges
  nothing: NoReceipt.
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

from gossipd import param_hashes
from gossipd.netapi import MessageStream, Stream, Transport, TransportError
from gossipd.param_hashes import ReceivedHash, hash_vector
from gossipd.provenance import Provenance
from gossipd.receipts import (
    Announcement,
    ExchangeFacts,
    Signing,
    announce,
    check_params,
    check_signature,
    sign,
)
from protocol.errors import ParamsRejected, ProtocolError, UnexpectedMessage
from protocol.messages import (
    AVG_PROTOCOL_ID,
    ErrorMsg,
    Hello,
    Message,
    ReceiptInfo,
    encode_message,
)
from protocol.quant import decode, encode
from protocol.replay import ReplayCheck
from protocol.session import AveragingSession
from protocol.tensors import all_finite


class PeerRefused(Exception):
    """The peer answered with an ErrorMsg instead of taking part."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"peer refused: {code}: {message}")
        self.code = code


class NoReceipt(PeerRefused):
    """We keep a ledger and the peer's Hello carried no receipt info: it will not sign, so its
    update is not merged (not a protocol violation: the peer simply runs without provenance)."""

    def __init__(self) -> None:
        super().__init__("no-receipt", "the peer keeps no ledger and signs no receipt; its "
                         "update is not merged")


class NothingToSend(PeerRefused):
    """Our own vector is not finite (a diverged model, or a testbed attack that overflowed):
    the exchange ends before anything is sent. Not the peer's fault: no strike."""

    def __init__(self) -> None:
        super().__init__("local", "our parameters are not finite; nothing was sent")




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
    # (peer id, sent, remote) -> a reason to refuse the remote vector, or None; checked after
    # the parameters arrive and before the receipt is signed (gossipd/robust.py)
    check_remote: Callable[[str, np.ndarray, np.ndarray], str | None] | None = None
    # preferred over merge_remote when set: the same, with the peer id first
    merge_from: Callable[[str, np.ndarray, np.ndarray, int], None] | None = None
    # testbeds only (averaging.attack): what this node sends instead of its snapshot
    tamper: Callable[[np.ndarray], np.ndarray] | None = None


@dataclass(frozen=True)
class ExchangeOutcome:
    peer_id: str
    remote_step: int
    bytes_sent: int
    bytes_received: int
    # Time the receipt added to the exchange: hashing our vector before the Hello, signing,
    # checking the peer's signature, and waiting for the hash of its data after the last chunk.
    receipt_s: float = 0.0
    # Of the exchange's time, what the ledger took: queueing its record (the event loop writes
    # it once the stream is closed, and the fsync thread seals it: Provenance.write_soon).
    ledger_s: float = 0.0


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


@dataclass
class _Receipt:
    """The receipt half of a swap: our ReceiptSig goes out first, the peer's comes in first."""

    signing: Signing
    mine: Announcement
    theirs: ReceiptInfo
    hashes: ReceivedHash = field(default_factory=ReceivedHash)
    their_sig: bytes | None = None
    spent_s: float = 0.0  # checking the peer's signature on the event loop


async def _concurrently(*fns: Callable[[], Awaitable[None]]) -> None:
    """Run fns at once; the first TransportError / ProtocolError / PeerRefused cancels the
    others and is raised as is (callers handle those plain, not in exception groups; anything
    else is a bug and propagates as trio raises it)."""
    errors: list[Exception] = []
    async with trio.open_nursery() as nursery:

        async def guarded(fn: Callable[[], Awaitable[None]]) -> None:
            try:
                await fn()
            except (TransportError, ProtocolError, PeerRefused) as exc:
                errors.append(exc)
                nursery.cancel_scope.cancel()

        for fn in fns:
            nursery.start_soon(guarded, fn)
    if errors:
        raise errors[0]


async def _swap_params(
    ms: MessageStream, session: AveragingSession, frames: Iterator[bytes | bytearray],
    receipt: _Receipt | None = None,
) -> tuple[np.ndarray, int, float]:
    """Stream our parameters out while theirs stream in; the first failure cancels the other
    half. Chunks are sealed as they are sent and opened as they arrive. With ``receipt``, our
    ReceiptSig precedes our parameters, the peer's is read and checked before its parameters,
    and the hash of its data is worked out meanwhile; the float returned is how long that hash
    took after both halves were done (0 without)."""
    received: list[tuple[np.ndarray, int]] = []
    halves_done: list[float] = []

    async def read() -> None:
        if receipt is not None:
            first = await ms.receive()
            t = trio.current_time()
            receipt.their_sig = check_signature(receipt.signing, first, receipt.mine,
                                                receipt.theirs)
            receipt.spent_s += trio.current_time() - t
        while True:
            msg = await ms.receive()
            if isinstance(msg, ErrorMsg):
                raise PeerRefused(msg.code, msg.message)
            result = session.receive(msg)
            if result is not None:
                received.append(result)
                halves_done.append(trio.current_time())
                if receipt is not None:
                    await receipt.hashes.complete(session, result[0])
                return
            if receipt is not None:
                receipt.hashes.arrived(session)

    async def send() -> None:
        if receipt is not None:  # our ReceiptSig and the (small) ParamsStart: one write
            await ms.send(receipt.signing.message + bytes(next(frames)))
        for frame in frames:
            await ms.send(frame)
        halves_done.append(trio.current_time())

    halves = [send, read] if receipt is None else [receipt.hashes.hash_pieces, send, read]
    await _concurrently(*halves)
    waited = trio.current_time() - max(halves_done) if receipt is not None else 0.0
    return received[0][0], received[0][1], waited


async def _send_error(ms: MessageStream, exc: ProtocolError) -> None:
    with contextlib.suppress(TransportError), trio.move_on_after(1):
        await ms.send(encode_message(ErrorMsg(code=exc.code, message=str(exc)[:512])))


def _new_session(
    transport: Transport, peer_id: str, model: LocalModel, step: int, hello: Hello | None,
    mine: Announcement | None = None,
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
        receipt=None if mine is None else mine.info,
    )


@dataclass(frozen=True)
class _Outgoing:
    """What we send, fixed before our Hello: the payload to stream, the dequantized vector it
    decodes to (what the peer gets: the merge and the receipt use it), its hash (provenance
    only) and the time that hash took."""

    payload: np.ndarray
    flat: np.ndarray
    sent_hash: bytes | None
    hash_s: float


async def _prepare(model: LocalModel, flat: np.ndarray) -> _Outgoing:
    """Tamper (testbeds), refuse to send a non-finite vector, compress, and with provenance
    hash what the peer will receive: its Hello commits to that hash."""
    if model.tamper is not None:
        flat = model.tamper(flat)
    if not all_finite(flat):
        raise NothingToSend
    payload, flat = _compressed(model, flat)  # from here on `flat` is what the peer receives
    if model.provenance is None:
        return _Outgoing(payload, flat, None, 0.0)
    t = trio.current_time()
    digest = await hash_vector(flat)
    return _Outgoing(payload, flat, digest, trio.current_time() - t)


def _announce(transport: Transport, peer_id: str, model: LocalModel,
              out: _Outgoing) -> Announcement | None:
    """Our side of the receipt, for our Hello (None without provenance)."""
    if model.provenance is None or out.sent_hash is None:
        return None
    return announce(model.provenance, transport.peer_id_bytes(peer_id),
                    model.samples_since_exchange(), out.sent_hash)


def _compressed(model: LocalModel, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(payload to stream, dequantized vector it decodes to) of the snapshot ``flat``."""
    if model.compression == "none":
        return flat, flat
    if model.compress is not None:
        return model.compress(flat)
    payload = encode(flat, model.compression)
    return payload, decode(payload, int(flat.size), model.compression)


async def _finish(
    ms: MessageStream, session: AveragingSession, model: LocalModel, out: _Outgoing, step: int,
    mine: Announcement | None = None,
) -> ExchangeOutcome:
    """Both roles, once keys exist: swap encrypted parameters (with provenance, each side's
    ReceiptSig ahead of them), check them, then mix theirs into ours."""
    flat = out.flat
    frames = session.params_frames(out.payload, step, encoding=model.compression)
    theirs = session.remote_receipt
    provenance = model.provenance if mine is not None and theirs is not None else None
    receipt: _Receipt | None = None
    t_receipt = out.hash_s
    if provenance is not None and mine is not None and theirs is not None:
        t = trio.current_time()
        assert session.exchange_id is not None
        facts = ExchangeFacts(
            initiator=session.initiator, exchange_id=session.exchange_id,
            local_peer=model.peer_id_bytes, remote_peer=session.remote_peer_id,
            time_ms=session.initiator_time_ms, local_step=step,
            remote_step=session.remote_step)
        receipt = _Receipt(sign(facts, provenance, mine, theirs), mine, theirs)
        t_receipt += trio.current_time() - t
    remote, remote_step, waited = await _swap_params(ms, session, frames, receipt)
    if mine is not None and theirs is None:
        raise NoReceipt
    refused: str | None = None
    try:
        if receipt is not None:
            t_receipt += waited + receipt.spent_s
            check_params(receipt.theirs, receipt.hashes.result())
            if remote_step != session.remote_step:
                raise ParamsRejected("the parameters' step differs from the peer's Hello")
        if model.check_remote is not None:
            reason = model.check_remote(ms.stream.remote_peer, flat, remote)
            if reason is not None:
                refused = f"parameters refused: {reason}"
                raise ParamsRejected(refused)
    except ProtocolError as exc:
        if refused is not None and receipt is not None and provenance is not None:
            # Both signed a receipt of what was sent: keep it, and say it was not merged.
            assert receipt.their_sig is not None
            provenance.record_receipt_soon(receipt.signing.receipt(receipt.their_sig),
                                           refused=refused, body=receipt.signing.fields)
        await _send_error(ms, exc)
        raise
    if model.merge_from is not None:
        model.merge_from(ms.stream.remote_peer, flat, remote, remote_step)
    elif model.merge_remote is not None:
        model.merge_remote(flat, remote, remote_step)
    else:
        model.apply_remote(remote, remote_step)
    ledger_s = 0.0
    if receipt is not None and provenance is not None:
        assert receipt.their_sig is not None
        t = trio.current_time()
        provenance.record_receipt_soon(receipt.signing.receipt(receipt.their_sig),
                                       body=receipt.signing.fields)
        ledger_s = trio.current_time() - t
    return ExchangeOutcome(ms.stream.remote_peer, remote_step, ms.bytes_sent, ms.bytes_received,
                           t_receipt, ledger_s)


def _overlap(model: LocalModel) -> bool:
    """Hash our vector while the stream opens (initiator) or the peer's Hello is on its way
    (responder): worth it when the hash runs in a worker thread (provenance, a large model)."""
    return (model.provenance is not None
            and 4 * model.num_params >= param_hashes.HASH_IN_THREAD_BYTES)


@dataclass
class _Snapshot:
    """Our side of an exchange before the Hello: the snapshot's step and what we send."""

    step: int = 0
    out: _Outgoing | None = None

    async def take(self, model: LocalModel) -> None:
        flat, self.step = model.snapshot()
        self.out = await _prepare(model, flat)


async def initiate(
    transport: Transport, peer_id: str, model: LocalModel, timeout: float, counter: ByteCounter
) -> ExchangeOutcome:
    """Average with `peer_id`. Raises TransportError, ProtocolError, PeerRefused or TooSlowError."""
    with trio.fail_after(timeout):
        ours = _Snapshot()
        streams: list[Stream] = []

        async def open_stream() -> None:
            streams.append(await transport.open_stream(peer_id, AVG_PROTOCOL_ID))

        try:
            if _overlap(model):
                await _concurrently(open_stream, lambda: ours.take(model))
            else:
                await open_stream()
        except BaseException:
            for s in streams:
                await _close(s)
            raise
        stream = streams[0]
        ms = MessageStream(stream)
        try:
            if ours.out is None:
                await ours.take(model)
            assert ours.out is not None
            step, out = ours.step, ours.out
            mine = _announce(transport, peer_id, model, out)
            session = _new_session(transport, peer_id, model, step, None, mine)
            await ms.send(session.hello())
            reply = await ms.receive()
            try:
                _expect(reply, Hello)
                assert isinstance(reply, Hello)
                session.receive_hello(reply)
            except ProtocolError as exc:
                await _send_error(ms, exc)
                raise
            return await _finish(ms, session, model, out, step, mine)
        finally:
            counter.add(ms)
            await _close(stream)
            _write_record_soon(model)


async def respond(
    transport: Transport, stream: Stream, model: LocalModel, timeout: float, counter: ByteCounter
) -> ExchangeOutcome:
    """Serve one exchange started by `stream.remote_peer`. Raises like `initiate`."""
    ms = MessageStream(stream)
    try:
        with trio.fail_after(timeout):
            ours = _Snapshot()
            firsts: list[Message] = []

            async def read_hello() -> None:
                firsts.append(await ms.receive())

            if _overlap(model):
                await _concurrently(read_hello, lambda: ours.take(model))
            else:
                await read_hello()
            first = firsts[0]
            try:
                _expect(first, Hello)
                assert isinstance(first, Hello)
                if ours.out is None:
                    await ours.take(model)
                assert ours.out is not None
                step, out = ours.step, ours.out
                mine = _announce(transport, stream.remote_peer, model, out)
                session = _new_session(transport, stream.remote_peer, model, step, first, mine)
                session.receive_hello(first)
            except ProtocolError as exc:
                await _send_error(ms, exc)
                raise
            await ms.send(session.hello())
            return await _finish(ms, session, model, out, step, mine)
    finally:
        counter.add(ms)
        await _close(stream)
        _write_record_soon(model)


def _write_record_soon(model: LocalModel) -> None:
    """The exchange is over, its stream closed: now the ledger may write its record (at the
    loop's next turn; waking the writer earlier would put the write before the close)."""
    if model.provenance is not None:
        model.provenance.write_soon()


async def _close(stream: Stream) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(1):
        await stream.aclose()
