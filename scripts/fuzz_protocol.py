#!/usr/bin/env python3
"""Seeded mutation fuzzer for the sans-io wire protocol in protocol/.

    scripts/fuzz_protocol.py --frames 1000000 --seed 0 --json --out fuzz-out

Rule under test (protocol/errors.py): remote input makes the protocol package raise only
ProtocolError subclasses. Any other exception, and any broken invariant listed below, is a
finding; the exit status is 1 if there was one, else 0.

Corpus: valid inputs built with the library itself: Hello frames of both roles from real,
handshaken AveragingSession pairs (with and without a swarm key), their parameter streams
(one ParamsStart frame and its ParamsChunk frames; small chunk sizes, 4..64 parameters),
ErrorMsg, PeersRequest and PeersResponse frames, and random msgpack maps. Everything is
derived from --seed, so a run is reproducible: the secretstream header of each corpus stream
is drawn from the seed too (libsodium would pick its own).

One fuzz input ("frame" in the counts) is one mutated corpus input: a single frame, or a
parameter stream in which one frame is mutated or frames are dropped, duplicated, swapped,
cut off or borrowed from another input. Mutations of one frame, one of three kinds:
  * byte level, 1-4 stacked: bit flips, interesting bytes (msgpack type bytes among them),
    arithmetic, inserts, deletes, truncation, duplicated slices, splices with another corpus
    frame, appended frames, boundary values over the 4-byte length header or over what may
    be a msgpack length field; the header is then fixed up half of the time, so mutations
    reach the body instead of just leaving the frame incomplete;
  * structure aware, 1-3 stacked: the decoded body gets a field dropped, retyped, set to an
    edge int, a long str, wrong-length bytes, deep nesting, an oversized container, an ext
    value, a non-str key, or list items dropped, duplicated, swapped or altered; re-encoded;
  * semantic: a Hello field changed and the Hello re-signed (and re-tagged) with the pair's
    identity key, or a parameter stream re-sealed with the pair's direction key around a
    changed payload, odd tags, an empty chunk, or a ParamsStart that misstates size or count,
    so the signature and the AEAD pass and the checks behind them run.
A few percent of inputs go through unmutated as controls: they must be accepted.

Targets of every input:
  1. FrameDecoder fed the bytes in 1-3 pieces (max_frame sometimes small), next_frame()
     until None, then messages.from_wire on each body; a poisoned decoder must keep raising;
     accepted messages must survive to_wire/from_wire unchanged;
  2. each Hello: receive_hello on a fresh session of the receiving role (a copy of an unused
     template; a newly constructed one for HELLO_FRESH_FRACTION of them), responders with
     no ReplayGuard, a fresh one, one that already saw the exchange id, one whose floor has
     risen, or a clock outside the window; after a success, sometimes the reply Hello;
  3. ParamsStart and ParamsChunk messages, in stream order: receive_params_start and
     receive_chunk (or receive) on one copy of a handshaken session per input, which open
     the secretstream chunk by chunk and decode the payload after the last chunk; a
     finished stream must refuse one more chunk;
  4. other messages: AveragingSession.receive on a handshaken session (ErrorMsg must become
     RemoteError, everything else UnexpectedMessage);
  5. tensors.decode_params on a mutated params plaintext, for TENSORS_FRACTION of inputs;
  6. ReplayGuard.restore on random or mutated bytes plus a few check() calls, for
     RESTORE_FRACTION of inputs.
A failed session must refuse the next call. Per-input randomness comes from (seed, input
index) alone, so `--start I --frames 1` replays input I exactly.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import random
import struct
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import nacl.bindings as sodium
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protocol.crypto import (  # noqa: E402
    peer_id_from_ed25519_public_key,
    public_key_from_seed,
    sign,
)
from protocol.errors import (  # noqa: E402
    DecodeError,
    ProtocolError,
    RemoteError,
    UnexpectedMessage,
)
from protocol.framing import DEFAULT_MAX_FRAME, FrameDecoder  # noqa: E402
from protocol.handshake import (  # noqa: E402
    ROLE_INITIATOR,
    ROLE_RESPONDER,
    signed_transcript,
    swarm_tag,
)
from protocol.messages import (  # noqa: E402
    PROTOCOL_VERSION,
    ErrorMsg,
    Hello,
    Message,
    ParamsChunk,
    ParamsStart,
    PeerRecord,
    PeersRequest,
    PeersResponse,
    encode_message,
    from_wire,
    to_wire,
)
from protocol.replay import DEFAULT_WINDOW_MS, RECORD_LEN, ReplayGuard  # noqa: E402
from protocol.session import AveragingSession  # noqa: E402
from protocol.tensors import (  # noqa: E402
    decode_params,
    encode_params,
    params_plaintext_bound,
)

# Sampling of the targets that do not run on every frame (stated in --help and the summary).
HELLO_FRESH_FRACTION = 0.1  # Hellos given to a newly constructed session instead of a copy
TENSORS_FRACTION = 0.5  # frames that also fuzz decode_params on a mutated plaintext
RESTORE_FRACTION = 1 / 256  # frames that also fuzz ReplayGuard.restore
CONTROL_FRACTION = 0.03  # frames sent unmutated; they must be accepted
MAX_FINDINGS = 5  # findings kept in full (all are counted)
PROGRESS_EVERY = 100_000
# Result label of an input that produced a finding; never a ProtocolError code.
FINDING = "FINDING"

T0 = 1_700_000_000_000  # corpus wall clock, ms since the epoch
SWARM_KEY = b"\x11" * 32
OTHER_SWARM_KEY = b"\x22" * 32
SPEC = "fuzz-mlp-v1"
_HEADER = struct.Struct(">I")
_TAG_MESSAGE: int = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
_TAG_PUSH: int = sodium.crypto_secretstream_xchacha20poly1305_TAG_PUSH
_TAG_REKEY: int = sodium.crypto_secretstream_xchacha20poly1305_TAG_REKEY
_TAG_FINAL: int = sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL

# msgpack type bytes and boundary values: nil/never-used/bool, bin8-32, ext, float, uint,
# int, fixext, str8-32, array16/32, map16/32, fixmap/fixarray/fixstr limits, negative fixint.
INTERESTING_BYTES = (
    0x00, 0x01, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xC3, 0xC4, 0xC5,
    0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xCB, 0xCC, 0xCD, 0xCE, 0xCF, 0xD0, 0xD3, 0xD4, 0xD5, 0xD6,
    0xD7, 0xD8, 0xD9, 0xDA, 0xDB, 0xDC, 0xDD, 0xDE, 0xDF, 0xE0, 0xFF,
)  # fmt: skip
INTERESTING_U16 = (0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x1000, 0x1001, 0x7FFF, 0x8000, 0xFFFF)
INTERESTING_U32 = (0, 1, 0xFFFF, 0x10000, 0x100000, 0x100400, 0x100401, 0x1000000, 0x7FFFFFFF,
                   0xFFFFFFFF)
EDGE_INTS = (
    0, 1, -1, 255, 256, 65535, 65536, 2**31 - 1, 2**31, -(2**31), 2**32 - 1, 2**32,
    2**32 + 1, 2**63 - 1, 2**63, -(2**63), 2**64 - 1,
)  # fmt: skip
STR_LENGTHS = (0, 1, 17, 64, 65, 128, 129, 256, 257, 512, 513, 4097)
BYTES_LENGTHS = (0, 1, 15, 16, 17, 23, 24, 25, 31, 32, 33, 63, 64, 65)
CONTAINER_LENGTHS = (0, 1, 8, 9, 64, 65, 4096, 4097)
FIELD_NAMES = (
    "t", "version", "exchange_id", "eph_pub", "sig", "spec", "num_params", "step", "time_ms",
    "swarm_tag", "header", "size", "chunks", "data", "code", "message", "addrs", "peers",
    "peer_id",
)  # fmt: skip
TYPE_TAGS: tuple[Any, ...] = (
    "hello", "params", "chunk", "error", "peers_req", "peers_resp", "", "HELLO", "x", 1, None,
    b"hello",
)  # fmt: skip
ERROR_CODES = ("decode", "auth", "integrity", "limit", "spec", "internal", "remote", "zz-new")
# X25519 points whose shared secret is all zero (small order) or that are non-canonical.
_P25519 = 2**255 - 19
LOW_ORDER_POINTS = (
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    (_P25519 - 1).to_bytes(32, "little"),
    _P25519.to_bytes(32, "little"),
    (_P25519 + 1).to_bytes(32, "little"),
    b"\xff" * 32,
)
HELLO_FIELDS = ("exchange_id", "eph_pub", "spec", "num_params", "step", "time_ms", "swarm_tag")


class InvariantViolation(Exception):
    """Raised by the harness when the library accepted or returned something it must not."""


class _GuardSlot:
    """ReplayCheck that forwards to whichever ReplayGuard the current frame installed, so
    copies of one responder template can each meet a guard in a chosen state."""

    def __init__(self) -> None:
        self.guard: ReplayGuard | None = None

    def check(self, exchange_id: bytes, time_ms: int, now_ms: int) -> None:
        if self.guard is not None:
            self.guard.check(exchange_id, time_ms, now_ms)


@dataclass
class Pair:
    """One handshaken initiator/responder pair and unused templates of both roles."""

    index: int
    num_params: int
    chunk_size: int
    spec: str
    swarm_key: bytes | None
    seed_i: bytes
    seed_r: bytes
    id_i: bytes
    id_r: bytes
    eph_i: bytes
    eph_r: bytes
    exchange_id: bytes
    k_i2r: bytes
    k_r2i: bytes
    initiator_waiting: AveragingSession  # Hello sent, waiting for the responder's
    responder_fresh: AveragingSession  # nothing received yet, no replay guard
    responder_guarded: AveragingSession  # nothing received yet, guard from `slot`
    slot: _GuardSlot
    initiator_keyed: AveragingSession  # handshake done: receives the responder's Params
    responder_keyed: AveragingSession  # handshake done: receives the initiator's Params

    def new_responder(self, time_ms: int, slot: _GuardSlot | None) -> AveragingSession:
        return AveragingSession(
            initiator=False,
            local_peer_id=self.id_r,
            local_seed=self.seed_r,
            remote_peer_id=self.id_i,
            spec=self.spec,
            num_params=self.num_params,
            step=3,
            eph_private=self.eph_r,
            chunk_size=self.chunk_size,
            time_ms=time_ms,
            swarm_key=self.swarm_key,
            replay=slot,
        )


@dataclass
class Entry:
    """A corpus input: one frame, or a parameter stream (ParamsStart and its chunks).
    ``pair``/``from_initiator`` say who produced it (Hellos and streams)."""

    kind: str
    frames: list[bytes]
    bodies: list[dict[str, Any]]
    pair: int | None = None
    from_initiator: bool = True
    plaintext: bytes = b""
    stream: bytes = b""

    def __post_init__(self) -> None:
        self.stream = b"".join(self.frames)


@dataclass
class Finding:
    index: int
    target: str
    type: str
    repr: str
    traceback: str
    data: bytes

    def brief(self) -> dict[str, Any]:
        return {
            "frame_index": self.index,
            "target": self.target,
            "type": self.type,
            "repr": self.repr,
            "input_hex": self.data[:512].hex(),
            "input_len": len(self.data),
        }


@dataclass
class Stats:
    frames: int = 0  # fuzz inputs: one frame or one parameter stream
    wire_frames: int = 0  # length-prefixed frames the decoder returned
    controls: int = 0
    outcome: Counter[str] = field(default_factory=Counter)
    targets: dict[str, Counter[str]] = field(default_factory=dict)
    codes: Counter[str] = field(default_factory=Counter)
    unexpected: int = 0
    unexpected_by: Counter[str] = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)

    def count(self, target: str, result: str) -> None:
        self.targets.setdefault(target, Counter())[result] += 1
        if result not in ("ok", "incomplete", FINDING):
            self.codes[result] += 1


# ---------------------------------------------------------------------- corpus


def _pack(obj: Any) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def _frame(body: Any) -> bytes:
    payload = _pack(body)
    return _HEADER.pack(len(payload) & 0xFFFFFFFF) + payload


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def split(plaintext: bytes, chunk_size: int) -> list[bytes]:
    return [plaintext[i : i + chunk_size] for i in range(0, len(plaintext), chunk_size)] or [b""]


def seal_with_header(
    key: bytes, pieces: Sequence[bytes], header: bytes, tags: Sequence[int] | None = None
) -> list[bytes]:
    """Secretstream chunks under a chosen header. Pulling and pushing start from the same
    state (HChaCha20 subkey and nonce from key and header), so a state initialised for
    pulling seals exactly what init_push would have with that header. ``tags`` repeats
    cyclically; by default every chunk is MESSAGE and the last FINAL."""
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    sodium.crypto_secretstream_xchacha20poly1305_init_pull(state, header, key)
    if tags is None:
        tags = [_TAG_MESSAGE] * (len(pieces) - 1) + [_TAG_FINAL]
    return [
        bytes(sodium.crypto_secretstream_xchacha20poly1305_push(state, piece, None, tag))
        for piece, tag in zip(pieces, itertools.cycle(tags), strict=False)
    ]


def stream_frames(header: bytes, size: int, count: int, chunks: Sequence[bytes],
                  extra: dict[str, Any] | None = None) -> list[bytes]:
    """Frames of one parameter stream; sizes and counts may lie (packed without validation)."""
    start: dict[str, Any] = {"t": "params", "header": header, "size": size, "chunks": count}
    start.update(extra or {})
    return [_frame(start), *(_frame({"t": "chunk", "data": c}) for c in chunks)]


def _decoded(frame: bytes) -> dict[str, Any]:
    dec = FrameDecoder()
    dec.feed(frame)
    body = dec.next_frame()
    if body is None or dec.buffered:
        raise RuntimeError("corpus frame does not decode to exactly one body")
    return body


def _session(pair_args: dict[str, Any], **kw: Any) -> AveragingSession:
    return AveragingSession(**pair_args, **kw)


def build_pair(index: int, rng: random.Random, num_params: int, chunk_size: int, spec: str,
               swarm_key: bytes | None, identity: int) -> tuple[Pair, list[Entry]]:
    # Seeds like tests/test_protocol_fuzz.py; pairs sharing `identity` share peer IDs, so
    # their Hellos verify across pairs and reach the spec and swarm checks.
    seed_i, seed_r = bytes([2 * identity + 1]) * 32, bytes([2 * identity + 2]) * 32
    id_i = peer_id_from_ed25519_public_key(public_key_from_seed(seed_i))
    id_r = peer_id_from_ed25519_public_key(public_key_from_seed(seed_r))
    eph_i, eph_r = rng.randbytes(32), rng.randbytes(32)
    exchange_id = rng.randbytes(16)
    common: dict[str, Any] = {
        "spec": spec, "num_params": num_params, "chunk_size": chunk_size, "swarm_key": swarm_key,
    }  # fmt: skip
    ini: dict[str, Any] = {
        "initiator": True, "local_peer_id": id_i, "local_seed": seed_i, "remote_peer_id": id_r,
        "step": 7, "exchange_id": exchange_id, "eph_private": eph_i, "time_ms": T0, **common,
    }  # fmt: skip
    res: dict[str, Any] = {
        "initiator": False, "local_peer_id": id_r, "local_seed": seed_r, "remote_peer_id": id_i,
        "step": 3, "eph_private": eph_r, **common,
    }  # fmt: skip
    slot = _GuardSlot()
    waiting, keyed_i = _session(ini), _session(ini)
    fresh, guarded, keyed_r = (
        _session(res, time_ms=T0),
        _session(res, time_ms=T0 + 1000, replay=slot),
        _session(res, time_ms=T0),
    )
    hello_i = waiting.hello()
    if keyed_i.hello() != hello_i:
        raise RuntimeError("Hello is not deterministic")
    msg_i = from_wire(_decoded(hello_i))
    assert isinstance(msg_i, Hello)
    keyed_r.receive_hello(msg_i)
    hello_r = keyed_r.hello()
    msg_r = from_wire(_decoded(hello_r))
    assert isinstance(msg_r, Hello)
    keyed_i.receive_hello(msg_r)
    keys = keyed_i.keys
    if keys is None or keys != keyed_r.keys:
        raise RuntimeError("handshake of a corpus pair failed")
    pair = Pair(index, num_params, chunk_size, spec, swarm_key, seed_i, seed_r, id_i, id_r,
                eph_i, eph_r, exchange_id, keys.i2r, keys.r2i, waiting, fresh, guarded, slot,
                keyed_i, keyed_r)
    entries = [
        Entry("hello", [hello_i], [_decoded(hello_i)], index, True),
        Entry("hello", [hello_r], [_decoded(hello_r)], index, False),
    ]
    # The library's own sealing path must interoperate with the templates.
    values = np.array([rng.uniform(-4, 4) for _ in range(num_params)], dtype=np.float32)
    real = list(copy.copy(keyed_i).params_frames(values, 9))
    if deliver(copy.copy(keyed_r), real) != (9, values.tobytes()):
        raise RuntimeError("params_frames does not round-trip through the receiver")
    for from_initiator in (True, False):
        for _ in range(2):
            values = np.array(
                [rng.uniform(-1e3, 1e3) for _ in range(num_params)], dtype=np.float32
            )
            step = rng.randrange(2**40)
            plaintext = encode_params(values, step)
            key = keys.i2r if from_initiator else keys.r2i
            header = rng.randbytes(24)
            pieces = split(plaintext, chunk_size)
            frames = stream_frames(header, len(plaintext), len(pieces),
                                   seal_with_header(key, pieces, header))
            receiver = keyed_r if from_initiator else keyed_i
            if deliver(copy.copy(receiver), frames) != (step, values.tobytes()):
                raise RuntimeError("seal_with_header differs from the library's secretstream")
            entries.append(Entry("params", frames, [_decoded(f) for f in frames], index,
                                 from_initiator, plaintext))
    return pair, entries


def deliver(session: AveragingSession, frames: Sequence[bytes]) -> tuple[int, bytes] | None:
    """Feed a parameter stream to ``session``: (step, float32 bytes) once it completes."""
    dec = FrameDecoder()
    dec.feed(b"".join(frames))
    result = None
    while (body := dec.next_frame()) is not None:
        got = session.receive(from_wire(body))
        if got is not None:
            result = (got[1], got[0].tobytes())
    return result


def random_text(rng: random.Random, n: int) -> str:
    alphabet = "abcXYZ019/._-é€\U0001f600\x00 "
    return "".join(rng.choice(alphabet) for _ in range(n))


def random_value(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if depth < 6 and r < 0.15:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if depth < 6 and r < 0.25:
        return {random_text(rng, rng.randrange(6)): random_value(rng, depth + 1)
                for _ in range(rng.randrange(4))}
    return rng.choice((
        None, True, False, rng.choice(EDGE_INTS), rng.randrange(-1000, 1000), rng.random(),
        math.nan, math.inf, random_text(rng, rng.randrange(12)), rng.randbytes(rng.randrange(40)),
    ))  # fmt: skip


def build_corpus(seed: int) -> tuple[list[Pair], list[Entry], list[Entry]]:
    """Pairs, corpus frames and params plaintexts for the decode_params target."""
    rng = random.Random(f"corpus:{seed}")
    # (num_params, chunk_size, spec, swarm key, identity): streams of 2..13 chunks.
    configs: list[tuple[int, int, str, bytes | None, int]] = [
        (4, 8, SPEC, None, 0),
        (4, 8, SPEC, SWARM_KEY, 0),
        (4, 64, "fuzz-other-v1", None, 0),
        (17, 8, SPEC, None, 0),
        (17, 64, SPEC, None, 1),
        (64, 64, SPEC, SWARM_KEY, 1),
        (33, 64, SPEC, SWARM_KEY, 1),
    ]
    pairs: list[Pair] = []
    corpus: list[Entry] = []
    for i, (n, chunk, spec, swarm, ident) in enumerate(configs):
        pair, entries = build_pair(i, rng, n, chunk, spec, swarm, ident)
        pairs.append(pair)
        corpus.extend(entries)
    for _ in range(6):
        code = rng.choice(ERROR_CODES)
        msg: Message = ErrorMsg(code=code, message=random_text(rng, rng.choice((0, 5, 80, 512))))
        corpus.append(Entry("error", [encode_message(msg)], [to_wire(msg)]))
    for _ in range(4):
        addrs = [f"/ip4/10.0.0.{rng.randrange(256)}/tcp/{rng.randrange(1, 65536)}"
                 for _ in range(rng.randrange(9))]
        msg = PeersRequest(addrs=addrs)
        corpus.append(Entry("peers_req", [encode_message(msg)], [to_wire(msg)]))
    for _ in range(4):
        peers = [
            PeerRecord(
                peer_id="12D3KooW" + random_text(rng, 44).encode().hex()[:44],
                addrs=[f"/ip6/::1/tcp/{rng.randrange(1, 65536)}" for _ in range(rng.randrange(4))],
            )
            for _ in range(rng.randrange(6))
        ]
        msg = PeersResponse(peers=peers)
        corpus.append(Entry("peers_resp", [encode_message(msg)], [to_wire(msg)]))
    for _ in range(8):
        body = {"t": rng.choice(TYPE_TAGS[:7])}
        body.update({rng.choice(FIELD_NAMES[1:]): random_value(rng) for _ in range(4)})
        corpus.append(Entry("random", [_frame(body)], [body]))
    plaintexts = [e for e in corpus if e.kind == "params"]
    return pairs, corpus, plaintexts


# ---------------------------------------------------------------------- byte mutators


def _pos(rng: random.Random, buf: bytearray, body_only: bool = True) -> int:
    lo = 4 if body_only and len(buf) > 4 and rng.random() < 0.9 else 0
    return rng.randrange(lo, len(buf))


def m_bitflip(rng: random.Random, buf: bytearray, others: Sequence[bytes]) -> None:
    if buf:
        buf[_pos(rng, buf)] ^= 1 << rng.randrange(8)


def m_interesting(rng: random.Random, buf: bytearray, others: Sequence[bytes]) -> None:
    if buf:
        buf[_pos(rng, buf)] = rng.choice(INTERESTING_BYTES)


def m_random_byte(rng: random.Random, buf: bytearray, others: Sequence[bytes]) -> None:
    if buf:
        buf[_pos(rng, buf)] = rng.randrange(256)


def m_arith(rng: random.Random, buf: bytearray, others: Sequence[bytes]) -> None:
    if buf:
        i = _pos(rng, buf)
        buf[i] = (buf[i] + rng.choice((-1, 1)) * rng.randint(1, 35)) & 0xFF


def m_wide(rng: random.Random, buf: bytearray, others: Sequence[bytes]) -> None:
    # Boundary values where a msgpack length or int field may sit.
    if len(buf) >= 2:
        i = _pos(rng, buf)
        if rng.random() < 0.5:
            buf[i : i + 2] = struct.pack(">H", rng.choice(INTERESTING_U16))
        else:
            buf[i : i + 4] = struct.pack(">I", rng.choice(INTERESTING_U32))


def m_insert(rng: random.Random, buf: bytearray, others: Sequence[bytes]) -> None:
    i = _pos(rng, buf) if buf else 0
    n = rng.randint(1, 32)
    data = rng.randbytes(n) if rng.random() < 0.5 else bytes([rng.choice(INTERESTING_BYTES)]) * n
    buf[i:i] = data


def m_delete(rng: random.Random, buf: bytearray, others: Sequence[bytes]) -> None:
    if buf:
        i = _pos(rng, buf)
        del buf[i : i + rng.choice((1, 2, 4, rng.randint(1, max(1, len(buf) // 2))))]


def m_truncate(rng: random.Random, buf: bytearray, others: Sequence[bytes]) -> None:
    del buf[rng.randrange(len(buf) + 1) :]


def m_duplicate(rng: random.Random, buf: bytearray, others: Sequence[bytes]) -> None:
    if buf:
        a = rng.randrange(len(buf))
        piece = buf[a : a + rng.randint(1, 64)]
        i = rng.randrange(len(buf) + 1)
        buf[i:i] = piece * rng.choice((1, 1, 2, 16))


def m_splice(rng: random.Random, buf: bytearray, others: Sequence[bytes]) -> None:
    other = rng.choice(others)
    a, b = rng.randrange(len(buf) + 1), rng.randrange(len(other) + 1)
    buf[a:] = other[b:]


def m_append(rng: random.Random, buf: bytearray, others: Sequence[bytes]) -> None:
    buf += rng.choice(others)


def m_length(rng: random.Random, buf: bytearray, others: Sequence[bytes]) -> None:
    n = len(buf) - 4
    value = rng.choice((0, 1, n - 1, n + 1, DEFAULT_MAX_FRAME, DEFAULT_MAX_FRAME + 1, 2**24,
                        2**32 - 1, rng.randrange(2**32), rng.randrange(64)))
    header = _HEADER.pack(value % 2**32)
    if len(buf) >= 4:
        buf[:4] = header
    else:
        buf[:0] = header


ByteMutator = Callable[[random.Random, bytearray, Sequence[bytes]], None]
BYTE_MUTATORS: tuple[ByteMutator, ...] = (
    m_bitflip, m_bitflip, m_interesting, m_interesting, m_random_byte, m_arith, m_wide,
    m_insert, m_delete, m_truncate, m_duplicate, m_splice, m_append, m_length,
)  # fmt: skip
# Mutators that already decide the header on purpose; no fix-up after them.
_HEADER_DECIDED = {m_truncate, m_append, m_length, m_splice}


def mutate_bytes(rng: random.Random, data: bytes, others: Sequence[bytes], stack: int) -> bytes:
    buf = bytearray(data)
    decided = False
    for _ in range(stack):
        mutator = rng.choice(BYTE_MUTATORS)
        mutator(rng, buf, others)
        decided = decided or mutator in _HEADER_DECIDED
    if not decided and len(buf) >= 4 and rng.random() < 0.5:
        buf[:4] = _HEADER.pack(len(buf) - 4)
    return bytes(buf)


def mutate_blob(rng: random.Random, data: bytes, stack: int) -> bytes:
    """Byte mutations of a header-less blob (params plaintexts, replay files)."""
    buf = bytearray(data)
    blob_mutators = (m_bitflip, m_interesting, m_random_byte, m_arith, m_wide, m_insert,
                     m_delete, m_truncate, m_duplicate)
    for _ in range(stack):
        rng.choice(blob_mutators)(rng, buf, ())
    return bytes(buf)


# ---------------------------------------------------------------------- structure mutators


def _long_str(rng: random.Random) -> str:
    return rng.choice(("a", "é", "\U0001f600", "/")) * rng.choice(STR_LENGTHS)


def _wrong_value(rng: random.Random, current: Any) -> Any:
    """A value of another type, an edge value, or a subtle variant of ``current``."""
    r = rng.randrange(12)
    if r == 0:
        return rng.choice(EDGE_INTS)
    if r == 1:
        return _long_str(rng)
    if r == 2:
        if isinstance(current, bytes) and current and rng.random() < 0.6:
            return rng.choice((current[:-1], current + b"\x00", current * 2, b""))
        return rng.randbytes(rng.choice(BYTES_LENGTHS))
    if r == 3:
        deep: Any = rng.choice((1, "x", b"x"))
        for _ in range(rng.randint(3, 12)):
            deep = [deep]
        return deep
    if r == 4:
        # Oversized containers of small items only, so a frame stays cheap to build.
        small = isinstance(current, (int, float, type(None))) or (
            isinstance(current, (str, bytes)) and len(current) <= 64
        )
        item = current if small else rng.choice(("x", 1, b"x"))
        return [item] * rng.choice(CONTAINER_LENGTHS)
    if r == 5:
        return rng.choice((msgpack.ExtType(rng.randrange(128), rng.randbytes(4)),
                           msgpack.Timestamp(rng.randrange(2**32))))
    if r == 6:
        return rng.choice((None, True, False, 0.0, 1.5, math.nan, -math.inf))
    if r == 7 and isinstance(current, bool):
        return int(current)
    if r == 7 and isinstance(current, int):
        return rng.choice((current + 1, current - 1, -current, float(current), bool(current & 1)))
    if r == 8 and isinstance(current, str):
        return rng.choice((current.encode(), "", current * 20, current[:-1]))
    if r == 9:
        return {"k": current} if rng.random() < 0.5 else {b"k": current}
    return random_value(rng)


def _mutate_list(rng: random.Random, items: list[Any]) -> list[Any]:
    items = list(items)
    if not items:
        items.append(random_value(rng))
        return items
    r = rng.randrange(8)
    i = rng.randrange(len(items))
    if r == 0:
        del items[i]
    elif r == 1:
        items.insert(rng.randrange(len(items) + 1), items[i])
    elif r == 2 and len(items) > 1:
        j = rng.randrange(len(items))
        items[i], items[j] = items[j], items[i]
    elif r == 3 and isinstance(items[i], bytes) and items[i]:
        chunk = bytearray(items[i])
        chunk[rng.randrange(len(chunk))] ^= 1 << rng.randrange(8)
        items[i] = bytes(chunk)
    elif r == 4 and isinstance(items[i], dict):
        items[i] = mutate_map(rng, items[i])
    elif r == 5 and rng.random() < 0.02:
        items[i] = bytes(2**20 + 18)  # one byte over the chunk cap
    elif r == 6:
        items.extend(items[-1:] * rng.choice(CONTAINER_LENGTHS))
    else:
        items[i] = _wrong_value(rng, items[i])
    return items


def mutate_map(rng: random.Random, body: dict[Any, Any]) -> dict[Any, Any]:
    """One structural change to a copy of ``body`` (containers on the path are copied)."""
    body = dict(body)
    keys = list(body)
    r = rng.randrange(10)
    if r == 0 and keys:
        del body[rng.choice(keys)]
    elif r == 1:
        body["t"] = rng.choice(TYPE_TAGS)
    elif r == 2:
        body[rng.choice((*FIELD_NAMES, "zz_unknown"))] = random_value(rng)
    elif r == 3:
        body[rng.choice((b"t", 1, b"\xff"))] = random_value(rng)
    elif r in (4, 5) and keys:
        key = rng.choice(keys)
        if isinstance(body[key], list):
            body[key] = _mutate_list(rng, body[key])
        else:
            body[key] = _wrong_value(rng, body[key])
    elif keys:
        key = rng.choice(keys)
        body[key] = _wrong_value(rng, body[key])
    return body


def mutate_structure(rng: random.Random, body: dict[str, Any], frame: bytes, stack: int
                     ) -> bytes:
    """``body`` (the decoded ``frame``) with ``stack`` structural changes, re-encoded."""
    new: Any = body
    for _ in range(stack):
        new = mutate_map(rng, new)
    if rng.random() < 0.02:
        new = rng.choice(([new], random_value(rng), "string body"))
    try:
        return _frame(new)
    except (ValueError, TypeError, OverflowError):
        return frame  # msgpack cannot encode it (e.g. too deep); nothing to send


def mutate_stream(rng: random.Random, frames: list[bytes], others: Sequence[bytes]) -> None:
    """Reorder, drop, repeat, cut or borrow whole frames of a stream, in place."""
    r = rng.randrange(6)
    i, j = rng.randrange(len(frames)), rng.randrange(len(frames))
    if r == 0 and len(frames) > 1:
        del frames[i]
    elif r == 1:
        frames.insert(j, frames[i])
    elif r == 2:
        frames[i], frames[j] = frames[j], frames[i]
    elif r == 3:
        del frames[max(1, i) :]
    elif r == 4:
        frames.insert(j, rng.choice(others))
    else:
        frames.extend(frames[1:] or frames)  # the whole stream again: extra chunks


# ---------------------------------------------------------------------- semantic mutators


def resigned_hello(rng: random.Random, pair: Pair, pairs: Sequence[Pair], entry: Entry
                   ) -> list[bytes]:
    """Change signed Hello fields to valid-typed values, then sign and tag again."""
    body = dict(entry.bodies[0])
    for name in rng.sample(HELLO_FIELDS, rng.randint(1, 2)):
        if name == "exchange_id":
            body[name] = rng.randbytes(16)
        elif name == "eph_pub":
            body[name] = rng.choice(LOW_ORDER_POINTS) if rng.random() < 0.7 else rng.randbytes(32)
        elif name == "spec":
            body[name] = rng.choice((rng.choice(pairs).spec, _long_str(rng)[:256] or "s"))
        elif name == "num_params":
            n = pair.num_params
            body[name] = rng.choice((n + 1, n - 1 or 2, 1, 2**32, rng.choice(pairs).num_params))
        elif name == "step":
            body[name] = rng.choice((0, 2**63 - 1, rng.randrange(2**63)))
        elif name == "time_ms":
            w = DEFAULT_WINDOW_MS
            body[name] = rng.choice((0, 2**63 - 1, T0 + w, T0 + w + 1001, T0 - w + 1000,
                                     T0 - w - 1, T0 + rng.randrange(-2 * w, 2 * w)))
    if entry.from_initiator:
        seed, signer, receiver, role = pair.seed_i, pair.id_i, pair.id_r, ROLE_INITIATOR
    else:
        seed, signer, receiver, role = pair.seed_r, pair.id_r, pair.id_i, ROLE_RESPONDER
    transcript = signed_transcript(
        version=PROTOCOL_VERSION, role=role, exchange_id=body["exchange_id"], signer_peer_id=signer,
        receiver_peer_id=receiver, eph_pub=body["eph_pub"], spec=body["spec"],
        num_params=body["num_params"], step=body["step"], time_ms=body["time_ms"],
    )  # fmt: skip
    body["sig"] = sign(seed, transcript)
    if "swarm_tag" in body and rng.random() < 0.2:
        body["swarm_tag"] = rng.choice((b"", swarm_tag(OTHER_SWARM_KEY, transcript)))
    else:
        body["swarm_tag"] = swarm_tag(pair.swarm_key, transcript)
    return [_frame(body)]


def mutate_plaintext(rng: random.Random, plaintext: bytes, n: int) -> bytes:
    """A params plaintext with one semantic, structural or byte-level change."""
    r = rng.randrange(6)
    if r == 0:
        return mutate_blob(rng, plaintext, rng.randint(1, 3))
    if r == 1:
        return rng.choice((b"", rng.randbytes(rng.randrange(64)), _pack([1, 2]), _pack(n)))
    body: dict[Any, Any] = _unpack(plaintext)
    if r == 2:
        body = mutate_map(rng, body)
    else:
        key = rng.choice(("dtype", "n", "step", "data"))
        value: Any
        if key == "dtype":
            value = rng.choice(("<f8", ">f4", "<f2", "f4", b"<f4", None))
        elif key == "n":
            value = rng.choice((n + 1, n - 1, 0, -1, 2**32, 2**32 + 1, True, float(n)))
        elif key == "step":
            value = rng.choice((-1, 2**63 - 1, 2**63, 2**64 - 1, None, 1.0))
        else:
            data = bytearray(body["data"])
            c = rng.randrange(4)
            if c == 0 and data:
                i = 4 * rng.randrange(len(data) // 4)
                data[i : i + 4] = rng.choice((b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f",
                                              b"\x00\x00\x80\xff", b"\x01\x00\x80\x7f"))
            elif c == 1:
                del data[max(0, len(data) - rng.randint(1, 4)) :]
            elif c == 2:
                data += bytes(rng.choice((1, 4, 64)))
            else:
                data = bytearray(rng.randbytes(len(data)))  # any float32 pattern, NaNs too
            value = bytes(data)
        body[key] = value
    try:
        return _pack(body)
    except (ValueError, TypeError, OverflowError):
        return plaintext


def resealed_stream(rng: random.Random, pair: Pair, entry: Entry) -> list[bytes]:
    """A parameter stream sealed with the right key (so the AEAD passes) around a changed
    plaintext, odd tags, an empty chunk, or a ParamsStart that misstates size or count."""
    key = pair.k_i2r if entry.from_initiator else pair.k_r2i
    if rng.random() < 0.05:
        key = pair.k_r2i if entry.from_initiator else pair.k_i2r  # the reflection key
    plaintext = entry.plaintext
    tags: list[int] | None = None
    if rng.random() < 0.7:
        plaintext = mutate_plaintext(rng, plaintext, pair.num_params)
    elif rng.random() < 0.7:
        tags = rng.choice(([_TAG_FINAL, _TAG_MESSAGE], [_TAG_MESSAGE], [_TAG_PUSH], [_TAG_REKEY],
                           [_TAG_MESSAGE, _TAG_FINAL, _TAG_MESSAGE], [_TAG_FINAL]))
    pieces = split(plaintext, rng.choice((1, 8, 64, pair.chunk_size, 4096)))
    if rng.random() < 0.05:
        pieces.insert(rng.randrange(len(pieces) + 1), b"")  # a chunk with no plaintext
    size, count = len(plaintext), len(pieces)
    if rng.random() < 0.2:
        bound = params_plaintext_bound(pair.num_params)
        size = rng.choice((size - 1, size + 1, 0, bound, bound + 1, 2**33, 2**33 + 1, -1))
    if rng.random() < 0.2:
        count = rng.choice((count - 1, count + 1, 0, max(size, 0) + 1, 8192, 8193, True))
    header = rng.randbytes(24)
    extra = {"zz_extra": random_value(rng)} if rng.random() < 0.1 else None
    return stream_frames(header, size, count, seal_with_header(key, pieces, header, tags), extra)


# ---------------------------------------------------------------------- fuzzer


class _Stream:
    """The receiving side of this input's parameter stream (created at its first message)."""

    def __init__(self, session: AveragingSession, num_params: int) -> None:
        self.session = session
        self.num_params = num_params
        self.result: str | None = None  # "ok" or an error code once the stream has ended


class Fuzzer:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.pairs, self.corpus, self.plaintexts = build_corpus(seed)
        self.all_frames = [f for e in self.corpus for f in e.frames]
        self.stats = Stats()

    # ---------------------------------------------------------------- bookkeeping

    def _unexpected(self, index: int, target: str, exc: BaseException, data: bytes) -> str:
        st = self.stats
        st.unexpected += 1
        name = type(exc).__name__
        st.unexpected_by[f"{target}:{name}"] += 1
        st.targets.setdefault(target, Counter())[FINDING] += 1
        if len(st.findings) < MAX_FINDINGS:
            st.findings.append(Finding(index, target, name, repr(exc)[:300],
                                       traceback.format_exc(limit=-8), data))
        return FINDING

    def _violation(self, index: int, target: str, text: str, data: bytes) -> str:
        try:
            raise InvariantViolation(text)
        except InvariantViolation as exc:
            return self._unexpected(index, target, exc, data)

    # ---------------------------------------------------------------- one input

    def make_input(self, rng: random.Random) -> tuple[Entry, bytes, bool]:
        entry = rng.choice(self.corpus)
        if entry.kind != "random" and rng.random() < CONTROL_FRACTION:
            return entry, entry.stream, True
        pair = self.pairs[entry.pair] if entry.pair is not None else None
        r = rng.random()
        if pair is not None and r < 0.15:
            if entry.kind == "hello":
                frames = resigned_hello(rng, pair, self.pairs, entry)
            else:
                frames = resealed_stream(rng, pair, entry)
            if rng.random() < 0.2:
                i = rng.randrange(len(frames))
                frames[i] = mutate_structure(rng, _unpack(frames[i][4:]), frames[i], 1)
            return entry, b"".join(frames), False
        frames = list(entry.frames)
        if len(frames) > 1 and rng.random() < 0.15:
            mutate_stream(rng, frames, self.all_frames)
            if rng.random() < 0.5:
                return entry, b"".join(frames), False
        # One frame of a stream gets the mutation: usually ParamsStart or the last chunk.
        i = rng.choice((0, len(entry.frames) - 1, rng.randrange(len(entry.frames))))
        i = min(i, len(frames) - 1)
        if r < 0.45 and i < len(entry.frames):
            frames[i] = mutate_structure(rng, entry.bodies[i], frames[i], rng.randint(1, 3))
            if rng.random() < 0.25:
                frames[i] = mutate_bytes(rng, frames[i], self.all_frames, 1)
        else:
            frames[i] = mutate_bytes(rng, frames[i], self.all_frames, rng.randint(1, 4))
        return entry, b"".join(frames), False

    def fuzz_input(self, index: int) -> None:
        rng = random.Random(self.seed * 2**40 + index)
        st = self.stats
        st.frames += 1
        entry, data, control = self.make_input(rng)
        st.controls += control
        st.outcome[self.target_decode(index, rng, data, entry, control)] += 1
        if rng.random() < TENSORS_FRACTION:
            self.target_tensors(index, rng)
        if rng.random() < RESTORE_FRACTION:
            self.target_restore(index, rng)

    def target_decode(self, index: int, rng: random.Random, data: bytes, entry: Entry,
                      control: bool) -> str:
        st = self.stats
        max_frame = DEFAULT_MAX_FRAME
        if not control and rng.random() < 0.1:
            max_frame = rng.choice((1, 16, 256, max(1, len(data) - 5), max(1, len(data) - 4)))
        dec = FrameDecoder(max_frame=max_frame)
        cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(3)))
        bodies: list[dict[str, Any]] = []
        first: str | None = None
        try:
            for lo, hi in itertools.pairwise((0, *cuts, len(data))):
                dec.feed(data[lo:hi])
                while (body := dec.next_frame()) is not None:
                    if not isinstance(body, dict) or not all(isinstance(k, str) for k in body):
                        raise InvariantViolation(f"decoder returned {type(body).__name__}")
                    bodies.append(body)
        except ProtocolError as exc:
            first = exc.code
            st.count("frame", exc.code)
            try:
                dec.feed(b"\x00")
            except DecodeError:
                pass
            except Exception as exc2:
                return self._unexpected(index, "frame", exc2, data)
            else:
                return self._violation(index, "frame", "poisoned decoder accepted bytes", data)
        except Exception as exc:
            return self._unexpected(index, "frame", exc, data)
        else:
            st.count("frame", "incomplete" if dec.buffered else "ok")
        st.wire_frames += len(bodies)
        if control and (first is not None or bodies != entry.bodies):
            return self._violation(index, "frame", f"unmutated input not decoded: {first}", data)
        stream: _Stream | None = None
        for body in bodies:
            try:
                msg = from_wire(body)
            except ProtocolError as exc:
                st.count("message", exc.code)
                first = first or exc.code
                if stream is not None and stream.result is None:
                    stream.result = exc.code  # a daemon closes the stream here
                continue
            except Exception as exc:
                return self._unexpected(index, "message", exc, data)
            try:
                # What was accepted must be re-encodable, unchanged, by the sender's rules.
                if from_wire(to_wire(msg)) != msg:
                    raise InvariantViolation("message changed in a to_wire/from_wire round trip")
            except Exception as exc:
                return self._unexpected(index, "message", exc, data)
            st.count("message", "ok")
            if isinstance(msg, Hello):
                result = self.target_hello(index, rng, msg, entry, data, control)
            elif isinstance(msg, (ParamsStart, ParamsChunk)):
                if stream is None:
                    stream = self._open_stream(rng, entry, control)
                result = self.target_params(index, rng, stream, msg, data)
            else:
                result = self.target_other(index, rng, msg, data)
            if result == FINDING:
                return result
            if result not in ("ok", "incomplete"):
                first = first or result
        if stream is not None:
            result = stream.result or "incomplete"
            st.count("params_stream", result)
            if control and result != "ok":
                return self._violation(index, "params", f"unmutated stream refused: {result}",
                                       data)
        if first is not None:
            return first
        if not bodies or dec.buffered or (stream is not None and stream.result is None):
            return "incomplete"
        return "ok"

    def _session_call(self, index: int, target: str, session: AveragingSession,
                      call: Callable[[], object], data: bytes, rng: random.Random) -> str:
        """Run one receive call; on a ProtocolError the session must stay failed."""
        try:
            call()
        except ProtocolError as exc:
            self.stats.count(target, exc.code)
            if rng.random() < 0.2:
                try:
                    session.receive_hello(None)  # type: ignore[arg-type]
                except UnexpectedMessage:
                    pass
                except Exception as exc2:
                    return self._unexpected(index, target, exc2, data)
                else:
                    return self._violation(index, target, "failed session accepted a call", data)
            return exc.code
        except Exception as exc:
            return self._unexpected(index, target, exc, data)
        self.stats.count(target, "ok")
        return "ok"

    @staticmethod
    def _guard(rng: random.Random, mode: int, msg: Hello) -> ReplayGuard | None:
        """A replay guard in one of a few states; the guarded templates' clock is T0+1000."""
        if mode == 0:
            return None
        if mode == 1:
            return ReplayGuard(capacity=rng.choice((1, 2, 100)))
        if mode == 2:  # this exchange id was already accepted
            guard = ReplayGuard()
            guard.check(msg.exchange_id, T0 + 900, T0 + 1000)
            return guard
        if mode == 3:  # a full table has forgotten entries up to T0 + 2
            guard = ReplayGuard(capacity=1)
            guard.check(bytes(16), T0 + 1, T0 + 1000)
            guard.check(b"\x01" * 16, T0 + 2, T0 + 1000)
            return guard
        return ReplayGuard(window_ms=rng.choice((1, 500, 1000)))

    def target_hello(self, index: int, rng: random.Random, msg: Hello, entry: Entry,
                     data: bytes, control: bool) -> str:
        if entry.pair is not None and (control or rng.random() < 0.85):
            pair, from_initiator = self.pairs[entry.pair], entry.from_initiator
        else:
            pair, from_initiator = rng.choice(self.pairs), rng.random() < 0.5
        if not from_initiator:
            session = copy.copy(pair.initiator_waiting)
        else:
            guard = None if control else self._guard(rng, rng.randrange(5), msg)
            if not control and rng.random() < HELLO_FRESH_FRACTION:
                now = T0 + rng.choice((0, 1000, DEFAULT_WINDOW_MS + 1, -DEFAULT_WINDOW_MS - 1))
                slot = _GuardSlot()
                slot.guard = guard
                session = pair.new_responder(now, slot if guard is not None else None)
            else:
                session = copy.copy(pair.responder_fresh if guard is None
                                    else pair.responder_guarded)
                pair.slot.guard = guard
        result = self._session_call(index, "hello", session, lambda: session.receive_hello(msg),
                                    data, rng)
        if control and result != "ok":
            return self._violation(index, "hello", f"unmutated Hello refused: {result}", data)
        if result == "ok" and rng.random() < 0.25:
            try:
                if session.keys is None or session.remote_step != msg.step:
                    raise InvariantViolation("accepted Hello left no keys or the wrong step")
                if from_initiator:
                    session.hello()
            except Exception as exc:
                return self._unexpected(index, "hello", exc, data)
        return result

    def _open_stream(self, rng: random.Random, entry: Entry, control: bool) -> _Stream:
        if entry.pair is not None and (control or rng.random() < 0.9):
            pair, from_initiator = self.pairs[entry.pair], entry.from_initiator
        else:
            pair, from_initiator = rng.choice(self.pairs), rng.random() < 0.5
        template = pair.responder_keyed if from_initiator else pair.initiator_keyed
        if not control and rng.random() < 0.03:
            template = pair.responder_fresh  # parameters before the handshake
        return _Stream(copy.copy(template), pair.num_params)

    def target_params(self, index: int, rng: random.Random, stream: _Stream,
                      msg: ParamsStart | ParamsChunk, data: bytes) -> str:
        """Deliver one stream message; after the stream ended (either way), stay silent, as
        the daemon closes it, except for one check that a finished stream refuses more."""
        session = stream.session
        if stream.result is not None:
            if stream.result != "ok" or rng.random() >= 0.1:
                return "ok"
            try:
                session.receive(msg)
            except UnexpectedMessage:
                return "ok"
            except Exception as exc:
                return self._unexpected(index, "params", exc, data)
            return self._violation(index, "params", "a finished stream accepted more", data)
        got: list[tuple[Any, int] | None] = []

        def call() -> None:
            if rng.random() < 0.3:
                got.append(session.receive(msg))
            elif isinstance(msg, ParamsStart):
                session.receive_params_start(msg)
            else:
                got.append(session.receive_chunk(msg))

        result = self._session_call(index, "params", session, call, data, rng)
        if result != "ok":
            stream.result = result
            return result
        if not got or got[0] is None:
            return "incomplete"
        stream.result = "ok"
        try:
            flat, step = got[0]
            if flat.shape != (stream.num_params,) or not np.isfinite(flat).all():
                raise InvariantViolation(f"accepted params of shape {flat.shape}")
            if not 0 <= step <= 2**63 - 1:
                raise InvariantViolation(f"accepted step {step}")
        except Exception as exc:
            return self._unexpected(index, "params", exc, data)
        return "ok"

    def target_other(self, index: int, rng: random.Random, msg: Message, data: bytes) -> str:
        pair = rng.choice(self.pairs)
        session = copy.copy(pair.responder_keyed if rng.random() < 0.5 else pair.initiator_keyed)
        try:
            session.receive(msg)
        except RemoteError as exc:
            if not isinstance(msg, ErrorMsg) or exc.remote_code != msg.code:
                return self._violation(index, "other", f"RemoteError for {msg!r:.80}", data)
            self.stats.count("other", exc.code)
            return "ok"  # a well-formed ErrorMsg is a valid frame
        except UnexpectedMessage as exc:
            if isinstance(msg, ErrorMsg):
                return self._violation(index, "other", "ErrorMsg not reported as RemoteError",
                                       data)
            self.stats.count("other", exc.code)
            return "ok"
        except ProtocolError as exc:
            self.stats.count("other", exc.code)
            return exc.code
        except Exception as exc:
            return self._unexpected(index, "other", exc, data)
        return self._violation(index, "other", f"{type(msg).__name__} accepted after the "
                               "handshake on an averaging stream", data)

    def target_tensors(self, index: int, rng: random.Random) -> None:
        entry = rng.choice(self.plaintexts)
        assert entry.pair is not None
        n = self.pairs[entry.pair].num_params
        blob = mutate_plaintext(rng, entry.plaintext, n)
        expected = n if rng.random() < 0.8 else rng.choice((1, n + 1, 2**32))
        try:
            flat, step = decode_params(blob, expected)
            if flat.shape != (expected,) or flat.dtype != np.float32:
                raise InvariantViolation(f"decode_params gave {flat.shape} {flat.dtype}")
            if not np.isfinite(flat).all() or not 0 <= step <= 2**63 - 1:
                raise InvariantViolation("decode_params accepted non-finite data or a bad step")
        except ProtocolError as exc:
            self.stats.count("tensors", exc.code)
            return
        except Exception as exc:
            self._unexpected(index, "tensors", exc, blob)
            return
        self.stats.count("tensors", "ok")

    def target_restore(self, index: int, rng: random.Random) -> None:
        if rng.random() < 0.5:
            data = rng.randbytes(rng.randrange(RECORD_LEN * 40))
        else:
            records = b"".join(
                ReplayGuard.record(rng.randbytes(16), T0 + rng.randrange(-10**6, 10**6))
                for _ in range(rng.randrange(40))
            )
            data = mutate_blob(rng, records, rng.randint(1, 4))
        now = rng.choice((0, T0, 2**64 - 1, rng.randrange(2**64)))
        capacity = rng.choice((1, 2, 16, 100_000))
        try:
            guard = ReplayGuard.restore(data, now, rng.choice((1, 1000, DEFAULT_WINDOW_MS)),
                                        capacity)
            if len(guard) > capacity:
                raise InvariantViolation(f"restored guard holds {len(guard)} > {capacity}")
            for _ in range(3):
                try:
                    guard.check(rng.randbytes(16), now + rng.randrange(-2000, 2000), now)
                except ProtocolError as exc:
                    if exc.code != "replay":
                        raise
                    self.stats.count("restore", exc.code)
        except ProtocolError as exc:
            self.stats.count("restore", exc.code)
            return
        except Exception as exc:
            self._unexpected(index, "restore", exc, data)
            return
        self.stats.count("restore", "ok")

    # ---------------------------------------------------------------- run

    def run(self, frames: int, start: int, seconds: float | None, progress: bool
            ) -> dict[str, Any]:
        began = time.monotonic()
        deadline = None if seconds is None else began + seconds
        stopped_early = False
        for index in range(start, start + frames):
            if deadline is not None and index % 256 == 0 and time.monotonic() >= deadline:
                stopped_early = True
                break
            self.fuzz_input(index)
            done = index - start + 1
            if progress and done % PROGRESS_EVERY == 0:
                el = time.monotonic() - began
                print(f"{done} frames, {done / el:.0f} frames/s, "
                      f"unexpected {self.stats.unexpected}", file=sys.stderr, flush=True)
        wall = time.monotonic() - began
        return self.summary(frames, start, wall, seconds, stopped_early)

    def summary(self, requested: int, start: int, wall: float, seconds: float | None,
                stopped_early: bool) -> dict[str, Any]:
        st = self.stats
        return {
            "seed": self.seed,
            "start": start,
            "frames_requested": requested,
            "frames": st.frames,
            "wire_frames_decoded": st.wire_frames,
            "stopped_early": stopped_early,
            "seconds_limit": seconds,
            "wall_s": round(wall, 3),
            "frames_per_s": round(st.frames / wall, 1) if wall > 0 else None,
            "corpus_frames": len(self.corpus),
            "controls": st.controls,
            "decoded_ok": st.outcome["ok"],
            "incomplete": st.outcome["incomplete"],
            "rejected_by_code": {k: v for k, v in sorted(st.outcome.items())
                                 if k not in ("ok", "incomplete", FINDING)},
            "codes_all_targets": dict(sorted(st.codes.items())),
            "targets": {t: dict(sorted(c.items())) for t, c in sorted(st.targets.items())},
            "sampling": {
                "frame_decoder_and_messages": 1.0,
                "sessions": "every decoded Hello, ParamsStart, ParamsChunk and other message",
                "hello_fresh_session_fraction": HELLO_FRESH_FRACTION,
                "tensors_fraction": TENSORS_FRACTION,
                "restore_fraction": RESTORE_FRACTION,
                "control_fraction": CONTROL_FRACTION,
            },
            "unexpected": st.unexpected,
            "unexpected_by": dict(sorted(st.unexpected_by.items())),
            "findings": [f.brief() for f in st.findings],
        }


def write_out(out: Path, summary: dict[str, Any], findings: Sequence[Finding]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for i, f in enumerate(findings):
        (out / f"finding-{i}.bin").write_bytes(f.data)
        (out / f"finding-{i}.txt").write_text(
            f"input index {f.index} (replay: --seed {summary['seed']} --start {f.index} "
            f"--frames 1)\ntarget {f.target}\n{f.type}: {f.repr}\ninput {f.data.hex()}\n\n"
            f"{f.traceback}"
        )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=(
            "Seeded mutation fuzzer for protocol/: mutates valid inputs (Hello frames, "
            "ParamsStart+ParamsChunk streams, ErrorMsg, PeersRequest, PeersResponse, random "
            "maps) at byte, structure, stream and semantic level and feeds them to "
            "FrameDecoder, from_wire, AveragingSession (receive_hello, receive_params_start, "
            "receive_chunk, receive), tensors.decode_params and ReplayGuard.restore. "
            "Anything but a ProtocolError, or a broken invariant, is a finding; exit status 1 "
            "if there was one. Decoder, messages and sessions run on every input (a newly "
            f"constructed session for {HELLO_FRESH_FRACTION:.0%} of initiator Hellos, a copy "
            f"of an unused template otherwise); decode_params on {TENSORS_FRACTION:.0%} and "
            f"ReplayGuard.restore on 1/{round(1 / RESTORE_FRACTION)} of inputs; "
            f"{CONTROL_FRACTION:.0%} of inputs go unmutated and must be accepted."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--frames", type=int, default=1_000_000,
                   help="fuzz inputs to run (one frame, or a stream with a mutated frame)")
    p.add_argument("--seed", type=int, default=0, help="seed of the corpus and the mutations")
    p.add_argument("--start", type=int, default=0,
                   help="first input index (with --frames 1, replays one reported input)")
    p.add_argument("--seconds", type=float, default=None,
                   help="wall-clock cap; stops early (and says so) when reached")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--progress", action="store_true",
                   help=f"report progress to stderr every {PROGRESS_EVERY} frames")
    p.add_argument("--out", type=Path, default=None,
                   help=f"write summary.json and the first {MAX_FINDINGS} findings here")
    return p


def _print_text(summary: dict[str, Any]) -> None:
    print(f"frames {summary['frames']} (seed {summary['seed']}) in {summary['wall_s']} s: "
          f"{summary['frames_per_s']} frames/s")
    if summary["stopped_early"]:
        print(f"stopped early: --seconds {summary['seconds_limit']} reached")
    print(f"decoded ok {summary['decoded_ok']}, incomplete {summary['incomplete']}, "
          f"controls {summary['controls']}")
    print("rejected by code: " + ", ".join(f"{k}={v}"
                                           for k, v in summary["rejected_by_code"].items()))
    for target, counts in summary["targets"].items():
        print(f"  {target}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    print(f"unexpected: {summary['unexpected']}")
    for f in summary["findings"]:
        print(f"  frame {f['frame_index']} {f['target']}: {f['type']}: {f['repr']}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.frames < 0 or args.start < 0:
        raise SystemExit("--frames and --start must be >= 0")
    fuzzer = Fuzzer(args.seed)
    summary = fuzzer.run(args.frames, args.start, args.seconds, args.progress)
    if args.out is not None:
        write_out(args.out, summary, fuzzer.stats.findings)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_text(summary)
    return 1 if summary["unexpected"] else 0


if __name__ == "__main__":
    sys.exit(main())
