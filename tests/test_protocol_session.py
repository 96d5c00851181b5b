"""AveragingSession: two-party round trips and every rejection path."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from protocol.crypto import peer_id_from_ed25519_public_key, public_key_from_seed, seal, sign
from protocol.errors import (
    AuthenticationError,
    DecodeError,
    IntegrityError,
    LimitExceeded,
    RemoteError,
    ReplayDetected,
    SpecMismatch,
    UnexpectedMessage,
    VersionMismatch,
)
from protocol.framing import FrameDecoder
from protocol.handshake import ROLE_INITIATOR, ROLE_RESPONDER, signed_transcript
from protocol.messages import (
    PROTOCOL_VERSION,
    ErrorMsg,
    Hello,
    Message,
    ParamsChunk,
    ParamsStart,
    PeersRequest,
    from_wire,
)
from protocol.replay import ReplayGuard
from protocol.session import AveragingSession, error_frame
from protocol.tensors import params_frame_bound

SEEDS = {name: bytes([i + 1]) * 32 for i, name in enumerate("abc")}
IDS = {n: peer_id_from_ed25519_public_key(public_key_from_seed(s)) for n, s in SEEDS.items()}
N = 7
SPEC = "mlp-test"


def session(me: str, peer: str, *, initiator: bool, **kw: Any) -> AveragingSession:
    args: dict[str, Any] = {"spec": SPEC, "num_params": N, "step": 10 if initiator else 20}
    args.update(kw)
    return AveragingSession(
        initiator=initiator,
        local_peer_id=IDS[me],
        local_seed=SEEDS[me],
        remote_peer_id=IDS[peer],
        **args,
    )


def decode(frame: bytes) -> Message:
    dec = FrameDecoder()
    dec.feed(frame)
    body = dec.next_frame()
    assert body is not None and dec.buffered == 0
    return from_wire(body)


def hello_of(frame: bytes) -> Hello:
    msg = decode(frame)
    assert isinstance(msg, Hello)
    return msg


@dataclasses.dataclass(frozen=True)
class Sealed:
    """A peer's sealed parameters as a whole: what ParamsStart + ParamsChunks carry."""

    header: bytes
    chunks: Sequence[bytes]


def decode_all(frames: bytes) -> list[Message]:
    dec = FrameDecoder()
    dec.feed(frames)
    out = []
    while (body := dec.next_frame()) is not None:
        out.append(from_wire(body))
    assert dec.buffered == 0
    return out


def params_of(frames: bytes) -> Sealed:
    start, *chunks = decode_all(frames)
    assert isinstance(start, ParamsStart) and start.chunks == len(chunks)
    assert all(isinstance(c, ParamsChunk) for c in chunks)
    return Sealed(start.header, [c.data for c in chunks if isinstance(c, ParamsChunk)])


def deliver(s: AveragingSession, sealed: Sealed) -> tuple[np.ndarray, int] | None:
    """Feed ``sealed`` as the wire would carry it; the announced size and count are what the
    chunks hold, so tampering shows up in the crypto, not in the bookkeeping."""
    size = sum(len(c) - 17 for c in sealed.chunks)
    s.receive_params_start(ParamsStart(sealed.header, size, len(sealed.chunks)))
    result = None
    for chunk in sealed.chunks:
        result = s.receive_chunk(ParamsChunk(chunk))
    return result


def receive_params(s: AveragingSession, sealed: Sealed) -> tuple[np.ndarray, int]:
    result = deliver(s, sealed)
    assert result is not None
    return result


def handshake(a: AveragingSession, b: AveragingSession) -> None:
    b.receive_hello(hello_of(a.hello()))
    a.receive_hello(hello_of(b.hello()))


def pair(**kw: Any) -> tuple[AveragingSession, AveragingSession]:
    a, b = session("a", "b", initiator=True, **kw), session("b", "a", initiator=False, **kw)
    handshake(a, b)
    return a, b


def vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(N).astype(np.float32)


def resign(hello: Hello, seed: bytes, signer: bytes, receiver: bytes, role: int) -> Hello:
    """Re-sign ``hello`` as it stands: lets tests craft authentic-but-hostile Hellos."""
    transcript = signed_transcript(
        version=hello.version,
        role=role,
        exchange_id=hello.exchange_id,
        signer_peer_id=signer,
        receiver_peer_id=receiver,
        eph_pub=hello.eph_pub,
        spec=hello.spec,
        num_params=hello.num_params,
        step=hello.step,
        time_ms=hello.time_ms,
    )
    return dataclasses.replace(hello, sig=sign(seed, transcript))


# ------------------------------------------------------------------ happy paths


@pytest.mark.parametrize("chunk_size", [1 << 20, 8, 1])
def test_full_round_trip(chunk_size: int) -> None:
    a = session("a", "b", initiator=True, chunk_size=chunk_size)
    b = session("b", "a", initiator=False, chunk_size=chunk_size)
    assert b.exchange_id is None
    handshake(a, b)
    assert a.exchange_id == b.exchange_id and a.exchange_id is not None
    assert len(a.exchange_id) == 16
    assert a.keys == b.keys and a.keys is not None and a.keys.i2r != a.keys.r2i
    assert (a.remote_step, b.remote_step) == (20, 10)
    va, vb = vec(1), vec(2)
    fa, fb = a.params_frame(va, 11), b.params_frame(vb, 21)  # concurrent sends
    got_a, step_a = receive_params(a, params_of(fb))
    got_b, step_b = receive_params(b, params_of(fa))
    np.testing.assert_array_equal(got_a, vb)
    np.testing.assert_array_equal(got_b, va)
    assert (step_a, step_b) == (21, 11)
    assert a.done and b.done and not a.failed


@pytest.mark.parametrize(("n", "chunk_size"), [(1, 1 << 20), (1000, 64), (300_000, 1 << 20)])
def test_params_frame_bound(n: int, chunk_size: int) -> None:
    a, _ = pair(num_params=n, chunk_size=chunk_size)
    frame = a.params_frame(np.ones(n, np.float32), (1 << 63) - 1)
    assert len(frame) <= params_frame_bound(n, chunk_size)
    assert params_frame_bound(n, chunk_size) - len(frame) < len(frame) // 20 + 200  # tight-ish


def test_receive_dispatch() -> None:
    a = session("a", "b", initiator=True, chunk_size=8)
    b = session("b", "a", initiator=False)
    assert b.receive(decode(a.hello())) is None
    assert a.receive(decode(b.hello())) is None
    results = [b.receive(m) for m in decode_all(a.params_frame(vec(1), 1))]
    assert len(results) > 3 and all(r is None for r in results[:-1])
    final = results[-1]
    assert final is not None
    np.testing.assert_array_equal(final[0], vec(1))


def test_params_stream_lazily_one_chunk_per_frame() -> None:
    a, _ = pair(chunk_size=8)
    frames = a.params_frames(vec(1), 1)
    first = next(frames)
    start = decode(first)
    assert isinstance(start, ParamsStart) and start.chunks > 3
    rest = list(frames)
    assert len(rest) == start.chunks
    assert all(len(f) <= 4 + 19 + 17 + 8 for f in rest)


def test_announced_sizes_are_checked_before_any_chunk() -> None:
    _, b = pair()
    with pytest.raises(LimitExceeded):
        b.receive_params_start(ParamsStart(b"\x00" * 24, size=4 * N + 65, chunks=1))
    for size, chunks in ((10, 11), (2 << 20, 1)):  # empty chunks; chunks over 1 MiB
        _, b = pair(num_params=1 << 20)
        with pytest.raises(DecodeError):
            b.receive_params_start(ParamsStart(b"\x00" * 24, size=size, chunks=chunks))


def test_chunk_larger_than_what_remains_is_refused() -> None:
    a, b = pair(chunk_size=8)
    sealed = params_of(a.params_frame(vec(1), 0))
    b.receive_params_start(ParamsStart(sealed.header, 8, 2))
    with pytest.raises(DecodeError, match="remain"):
        b.receive_chunk(ParamsChunk(sealed.chunks[0] + b"\x00" * 8))


def test_chunks_out_of_place() -> None:
    a, b = pair(chunk_size=8)
    sealed = params_of(a.params_frame(vec(1), 0))
    with pytest.raises(UnexpectedMessage, match="before ParamsStart"):
        b.receive_chunk(ParamsChunk(sealed.chunks[0]))
    a, b = pair(chunk_size=8)
    sealed = params_of(a.params_frame(vec(1), 0))
    receive_params(b, sealed)
    with pytest.raises(UnexpectedMessage, match="extra"):
        b.receive_chunk(ParamsChunk(sealed.chunks[0]))


def test_exchange_ids_are_random_and_injectable() -> None:
    s1, s2 = session("a", "b", initiator=True), session("a", "b", initiator=True)
    assert s1.exchange_id != s2.exchange_id
    xid = b"\x11" * 16
    a = session("a", "b", initiator=True, exchange_id=xid)
    b = session("b", "a", initiator=False, exchange_id=xid)  # responder expectation met
    handshake(a, b)
    assert b.exchange_id == xid


def test_ephemeral_keys_injectable_and_fresh() -> None:
    a1, a2 = session("a", "b", initiator=True), session("a", "b", initiator=True)
    assert a1.eph_pub != a2.eph_pub
    x = session("a", "b", initiator=True, eph_private=b"\x05" * 32)
    y = session("a", "b", initiator=True, eph_private=b"\x05" * 32)
    assert x.eph_pub == y.eph_pub


# ------------------------------------------------------------------ state machine


def test_ordering_rules() -> None:
    a, b = session("a", "b", initiator=True), session("b", "a", initiator=False)
    with pytest.raises(UnexpectedMessage):
        b.hello()  # responder speaks second
    with pytest.raises(UnexpectedMessage):
        a.params_frame(vec(1), 0)  # no keys yet
    with pytest.raises(UnexpectedMessage):
        _ = a.remote_step
    h = a.hello()
    with pytest.raises(UnexpectedMessage):
        a.hello()
    b.receive_hello(hello_of(h))
    hb = b.hello()
    with pytest.raises(UnexpectedMessage):
        b.hello()
    a.receive_hello(hello_of(hb))
    a.params_frame(vec(1), 0)
    with pytest.raises(UnexpectedMessage):
        a.params_frame(vec(1), 0)


def test_initiator_must_send_hello_before_receiving() -> None:
    a, b = session("a", "b", initiator=True), session("b", "a", initiator=False)
    other = session("a", "b", initiator=True)
    b.receive_hello(hello_of(other.hello()))
    with pytest.raises(UnexpectedMessage):
        a.receive_hello(hello_of(b.hello()))


def test_responder_params_before_its_hello() -> None:
    a, b = session("a", "b", initiator=True), session("b", "a", initiator=False)
    b.receive_hello(hello_of(a.hello()))
    with pytest.raises(UnexpectedMessage):
        b.params_frame(vec(1), 0)  # keys exist but our Hello is not out yet


def test_duplicate_messages_fail_the_session() -> None:
    a, b = pair()
    fa = a.params_frame(vec(1), 0)
    receive_params(b, params_of(fa))
    with pytest.raises(UnexpectedMessage):
        receive_params(b, params_of(fa))
    assert b.failed
    a2, b2 = session("a", "b", initiator=True), session("b", "a", initiator=False)
    h = hello_of(a2.hello())
    b2.receive_hello(h)
    with pytest.raises(UnexpectedMessage):
        b2.receive_hello(h)


def test_failed_session_refuses_everything() -> None:
    a, b = pair()
    fa = params_of(a.params_frame(vec(1), 0))
    with pytest.raises(IntegrityError):
        receive_params(b, Sealed(header=fa.header, chunks=[b"\x00" * 40]))
    assert b.failed
    with pytest.raises(UnexpectedMessage):
        receive_params(b, fa)  # the genuine one is refused now too
    with pytest.raises(UnexpectedMessage):
        b.params_frame(vec(2), 0)


def test_wrong_message_types() -> None:
    a, b = session("a", "b", initiator=True), session("b", "a", initiator=False)
    with pytest.raises(UnexpectedMessage):
        b.receive_hello(PeersRequest(addrs=[]))  # type: ignore[arg-type]
    a.hello()
    with pytest.raises(UnexpectedMessage):
        a.receive(PeersRequest(addrs=[]))
    a, b = pair()
    with pytest.raises(UnexpectedMessage):
        a.receive_params_start(ErrorMsg("x", "y"))  # type: ignore[arg-type]


def test_remote_error_message() -> None:
    a = session("a", "b", initiator=True)
    a.hello()
    with pytest.raises(RemoteError) as info:
        a.receive(decode(error_frame(SpecMismatch("other model"))))
    assert info.value.remote_code == "spec"
    assert info.value.remote_message == "other model"
    assert a.failed


def test_error_frame() -> None:
    msg = decode(error_frame(IntegrityError("x" * 1000)))
    assert isinstance(msg, ErrorMsg) and msg.code == "integrity" and len(msg.message) == 512
    internal = decode(error_frame(KeyError("secret local detail")))
    assert internal == ErrorMsg(code="internal", message="KeyError")


# ------------------------------------------------------------------ hostile peers


def test_spec_and_param_count_mismatch() -> None:
    for kw in ({"spec": "other-model"}, {"num_params": N + 1}):
        a = session("a", "b", initiator=True, **kw)
        b = session("b", "a", initiator=False)
        with pytest.raises(SpecMismatch) as info:
            b.receive_hello(hello_of(a.hello()))
        assert info.value.code == "spec"


def test_version_mismatch_in_session() -> None:
    a, b = session("a", "b", initiator=True), session("b", "a", initiator=False)
    h = dataclasses.replace(hello_of(a.hello()), version=PROTOCOL_VERSION + 1)
    with pytest.raises(VersionMismatch):
        b.receive_hello(h)


@pytest.mark.parametrize(
    "change",
    [
        {"step": 11},
        {"spec": "mlp-tesT"},
        {"num_params": N + 1},
        {"eph_pub": b"\x09" * 32},
        {"exchange_id": b"\x00" * 16},
        {"sig": b"\x00" * 64},
    ],
)
def test_tampered_hello_is_rejected(change: dict[str, Any]) -> None:
    a, b = session("a", "b", initiator=True), session("b", "a", initiator=False)
    with pytest.raises(AuthenticationError):
        b.receive_hello(dataclasses.replace(hello_of(a.hello()), **change))


def test_hello_from_wrong_peer() -> None:
    c = session("c", "b", initiator=True)  # c pretends to be a
    b = session("b", "a", initiator=False)
    with pytest.raises(AuthenticationError):
        b.receive_hello(hello_of(c.hello()))


def test_hello_relayed_to_another_peer() -> None:
    a_to_c = session("a", "c", initiator=True)
    b = session("b", "a", initiator=False)
    with pytest.raises(AuthenticationError):
        b.receive_hello(hello_of(a_to_c.hello()))


def test_hello_reflected_back() -> None:
    a = session("a", "b", initiator=True)
    h = hello_of(a.hello())
    with pytest.raises(AuthenticationError):
        a.receive_hello(h)
    # Even a peer re-signing the initiator role cannot pass as the responder.
    a = session("a", "b", initiator=True)
    h = hello_of(a.hello())
    forged = resign(h, SEEDS["b"], IDS["b"], IDS["a"], ROLE_INITIATOR)
    with pytest.raises(AuthenticationError):
        a.receive_hello(forged)


def test_responder_hello_replayed_into_new_exchange() -> None:
    a, b = session("a", "b", initiator=True), session("b", "a", initiator=False)
    b.receive_hello(hello_of(a.hello()))
    old = hello_of(b.hello())
    fresh = session("a", "b", initiator=True)
    fresh.hello()
    with pytest.raises(AuthenticationError):
        fresh.receive_hello(old)
    fresh = session("a", "b", initiator=True)
    fresh.hello()
    assert fresh.exchange_id is not None
    with pytest.raises(AuthenticationError):  # rewriting the id breaks the signature
        fresh.receive_hello(dataclasses.replace(old, exchange_id=fresh.exchange_id))


def test_responder_exchange_id_expectation() -> None:
    a = session("a", "b", initiator=True)
    b = session("b", "a", initiator=False, exchange_id=b"\x22" * 16)
    with pytest.raises(AuthenticationError):
        b.receive_hello(hello_of(a.hello()))


def test_replayed_initiator_hello_yields_no_usable_params() -> None:
    # An eavesdropper records a's Hello and Params of an old exchange, replays to b.
    a_old, b_old = session("a", "b", initiator=True), session("b", "a", initiator=False)
    recorded_hello = a_old.hello()
    b_old.receive_hello(hello_of(recorded_hello))
    a_old.receive_hello(hello_of(b_old.hello()))
    recorded_params = params_of(a_old.params_frame(vec(1), 0))
    b = session("b", "a", initiator=False)
    b.receive_hello(hello_of(recorded_hello))  # authentic, so accepted ...
    b.hello()
    with pytest.raises(IntegrityError):  # ... but b's fresh ephemeral changes the keys
        receive_params(b, recorded_params)


def test_params_reflected_back_to_sender() -> None:
    a, _ = pair()
    fa = params_of(a.params_frame(vec(1), 0))
    with pytest.raises(IntegrityError):
        receive_params(a, fa)


def test_params_from_another_exchange() -> None:
    a1, _ = pair()
    _, b2 = pair()
    with pytest.raises(IntegrityError):
        receive_params(b2, params_of(a1.params_frame(vec(1), 0)))


def _flip(chunk: bytes, pos: int) -> bytes:
    out = bytearray(chunk)
    out[pos] ^= 0x80
    return bytes(out)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: Sealed(p.header, [p.chunks[0], _flip(p.chunks[1], 3), *p.chunks[2:]]),
        lambda p: Sealed(p.header, [*p.chunks[:-1], _flip(p.chunks[-1], -1)]),
        lambda p: Sealed(p.header, p.chunks[:-1]),  # truncated: FINAL missing
        lambda p: Sealed(p.header, p.chunks[1:]),  # first chunk dropped
        lambda p: Sealed(p.header, [p.chunks[1], p.chunks[0], *p.chunks[2:]]),  # reordered
        lambda p: Sealed(p.header, [*p.chunks, p.chunks[-1]]),  # extra chunk
        lambda p: Sealed(_flip(p.header, 0), p.chunks),
    ],
    ids=["flip-middle", "flip-final", "truncate", "drop-first", "reorder", "extra", "header"],
)
def test_tampered_and_truncated_params(mutate: Any) -> None:
    a, b = pair(chunk_size=8)
    good = params_of(a.params_frame(vec(1), 0))
    assert len(good.chunks) > 3
    with pytest.raises(IntegrityError):
        receive_params(b, mutate(good))


def test_authentic_but_malformed_payloads() -> None:
    import msgpack

    cases: list[tuple[bytes, type[Exception]]] = [
        (
            msgpack.packb({"dtype": "<f4", "n": N + 1, "step": 0, "data": b"\x00" * 4 * (N + 1)}),
            SpecMismatch,
        ),
        (
            msgpack.packb(
                {"dtype": "<f4", "n": N, "step": 0, "data": np.full(N, np.nan, "<f4").tobytes()}
            ),
            DecodeError,
        ),
        (b"\xc1", DecodeError),
        (b"\x00" * 1000, LimitExceeded),  # bigger than any honest payload for N
    ]
    for plaintext, err in cases:
        a, b = pair()
        assert a.keys is not None
        header, chunks = seal(a.keys.i2r, plaintext)
        with pytest.raises(err):
            receive_params(b, Sealed(header, chunks))


def test_low_order_ephemeral_rejected() -> None:
    a, b = session("a", "b", initiator=True), session("b", "a", initiator=False)
    h = dataclasses.replace(hello_of(a.hello()), eph_pub=b"\x00" * 32)
    with pytest.raises(AuthenticationError):
        b.receive_hello(resign(h, SEEDS["a"], IDS["a"], IDS["b"], ROLE_INITIATOR))


def test_responder_role_hello_rejected_by_responder() -> None:
    # b (responder) must not accept a Hello that a signed in the responder role.
    a, b = session("a", "b", initiator=True), session("b", "a", initiator=False)
    h = hello_of(a.hello())
    with pytest.raises(AuthenticationError):
        b.receive_hello(resign(h, SEEDS["a"], IDS["a"], IDS["b"], ROLE_RESPONDER))


# ------------------------------------------------------------------ local misuse


def test_params_frame_limits_and_shape() -> None:
    a, _ = pair(max_frame=200)
    with pytest.raises(ValueError):
        a.params_frame(np.ones(N + 1, np.float32), 0)
    big_n = 100
    a, _ = pair(max_frame=200, num_params=big_n)
    with pytest.raises(LimitExceeded):
        a.params_frame(np.ones(big_n, np.float32), 0)


def test_constructor_validation() -> None:
    with pytest.raises(ValueError):  # seed of another identity
        AveragingSession(
            initiator=True,
            local_peer_id=IDS["a"],
            local_seed=SEEDS["b"],
            remote_peer_id=IDS["b"],
            spec=SPEC,
            num_params=N,
            step=0,
        )
    with pytest.raises(ValueError):
        session("a", "a", initiator=True)
    with pytest.raises(ValueError):
        session("a", "b", initiator=True, exchange_id=b"short")
    with pytest.raises(ValueError):
        session("a", "b", initiator=True, spec="")
    with pytest.raises(ValueError):
        session("a", "b", initiator=True, num_params=0)
    with pytest.raises(ValueError):
        session("a", "b", initiator=True, step=-1)
    with pytest.raises(ValueError):
        AveragingSession(
            initiator=True,
            local_peer_id=b"junk",
            local_seed=SEEDS["a"],
            remote_peer_id=IDS["b"],
            spec=SPEC,
            num_params=N,
            step=0,
        )
    with pytest.raises(AuthenticationError):  # remote without an inline Ed25519 key
        AveragingSession(
            initiator=True,
            local_peer_id=IDS["a"],
            local_seed=SEEDS["a"],
            remote_peer_id=b"\x12\x20" + b"\x00" * 32,
            spec=SPEC,
            num_params=N,
            step=0,
        )


def test_hand_built_messages_are_validated() -> None:
    a, b = session("a", "b", initiator=True), session("b", "a", initiator=False)
    h = hello_of(a.hello())
    with pytest.raises(DecodeError):
        b.receive_hello(dataclasses.replace(h, eph_pub=b"\x01" * 31))
    a, b = pair()
    with pytest.raises(DecodeError):
        b.receive_params_start(ParamsStart(header=b"\x00" * 23, size=1, chunks=1))


# ------------------------------------------------------------------ swarm secret


KEY_1, KEY_2 = b"\x11" * 32, b"\x22" * 32


def test_swarm_members_with_the_same_key_agree() -> None:
    a, b = pair(swarm_key=KEY_1)
    assert a.keys == b.keys
    plain_a, _ = pair()
    assert a.keys != plain_a.keys  # the swarm key is mixed into the payload keys


@pytest.mark.parametrize(
    ("key_a", "key_b", "text"),
    [
        (KEY_1, KEY_2, "does not hold this swarm's secret"),
        (KEY_1, None, "we have none"),
        (None, KEY_1, "does not hold this swarm's secret"),
    ],
)
def test_swarm_key_mismatch_is_refused_before_any_key(
    key_a: bytes | None, key_b: bytes | None, text: str
) -> None:
    a = session("a", "b", initiator=True, swarm_key=key_a)
    b = session("b", "a", initiator=False, swarm_key=key_b)
    with pytest.raises(AuthenticationError, match=text):
        b.receive_hello(hello_of(a.hello()))
    assert b.failed and b.keys is None


def test_stripped_or_copied_swarm_tag_is_refused() -> None:
    a = session("a", "b", initiator=True, swarm_key=KEY_1)
    hello = hello_of(a.hello())
    for tag in (b"", bytes(32), hello.swarm_tag[::-1]):
        b = session("b", "a", initiator=False, swarm_key=KEY_1)
        with pytest.raises(AuthenticationError):
            b.receive_hello(dataclasses.replace(hello, swarm_tag=tag))


# ------------------------------------------------------------------ replay protection

NOW = 1_800_000_000_000


def test_replayed_initiator_hello_is_refused_by_the_guard() -> None:
    guard = ReplayGuard()
    a = session("a", "b", initiator=True, time_ms=NOW)
    hello = hello_of(a.hello())
    session("b", "a", initiator=False, time_ms=NOW + 50, replay=guard).receive_hello(hello)
    again = session("b", "a", initiator=False, time_ms=NOW + 90, replay=guard)
    with pytest.raises(ReplayDetected, match="already used"):
        again.receive_hello(hello)
    assert again.failed


def test_replay_guard_survives_a_restart() -> None:
    guard = ReplayGuard()
    hello = hello_of(session("a", "b", initiator=True, time_ms=NOW).hello())
    session("b", "a", initiator=False, time_ms=NOW, replay=guard).receive_hello(hello)
    restored = ReplayGuard.restore(guard.dump(), now_ms=NOW + 1000)
    with pytest.raises(ReplayDetected):
        session("b", "a", initiator=False, time_ms=NOW + 1000, replay=restored).receive_hello(
            hello
        )


@pytest.mark.parametrize("skew_ms", [-300_001, 300_001])
def test_hello_outside_the_window_is_refused(skew_ms: int) -> None:
    hello = hello_of(session("a", "b", initiator=True, time_ms=NOW + skew_ms).hello())
    b = session("b", "a", initiator=False, time_ms=NOW, replay=ReplayGuard())
    with pytest.raises(ReplayDetected, match="window"):
        b.receive_hello(hello)


def test_forged_time_fails_the_signature_not_the_guard() -> None:
    guard = ReplayGuard()
    hello = hello_of(session("a", "b", initiator=True, time_ms=NOW).hello())
    b = session("b", "a", initiator=False, time_ms=NOW, replay=guard)
    with pytest.raises(AuthenticationError, match="bad signature"):
        b.receive_hello(dataclasses.replace(hello, time_ms=NOW + 1))
    assert len(guard) == 0  # unverified Hellos are never recorded
