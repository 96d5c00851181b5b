"""The JSON test vectors in protocol/vectors/ match the implementation.

Two independent checks: (1) the library (and AveragingSession with injected
ephemeral keys / exchange id) reproduces every deterministic byte; (2) the byte
layouts documented in PROTOCOL.md, rebuilt here with struct/hashlib/nacl only, give
the same transcripts and keys, so SPEC and code cannot drift apart silently.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import blake3
import msgpack
import nacl.bindings as sodium
import nacl.signing
import numpy as np
import pytest

from protocol.crypto import open_sealed
from protocol.errors import ProtocolError
from protocol.framing import FrameDecoder
from protocol.messages import (
    Hello,
    ParamsChunk,
    ParamsStart,
    ReceiptInfo,
    ReceiptSig,
    encode_message,
    from_wire,
)
from protocol.receipt import ReceiptBody, verify_receipt
from protocol.session import AveragingSession
from protocol.tensors import decode_params, encode_params
from protocol.vectorgen import (
    VECTOR_DIR,
    build_compression,
    build_handshake,
    build_messages,
    build_receipt,
)

H = bytes.fromhex


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(VECTOR_DIR, name).read_text())
    return data


HS = load("handshake.json")
PARAMS = load("params.json")
MESSAGES = load("messages.json")
COMPRESSION = load("compression.json")
RECEIPT = load("receipt.json")


def decode_one(frame: bytes) -> Any:
    dec = FrameDecoder()
    dec.feed(frame)
    body = dec.next_frame()
    assert body is not None and dec.buffered == 0
    return from_wire(body)


def sessions(swarm_key: bytes | None = None) -> tuple[AveragingSession, AveragingSession]:
    ini, res = HS["initiator"], HS["responder"]
    common = {"spec": HS["spec"], "num_params": HS["num_params"], "time_ms": HS["time_ms"],
              "swarm_key": swarm_key}
    a = AveragingSession(
        initiator=True,
        local_peer_id=H(ini["peer_id"]),
        local_seed=H(ini["seed"]),
        remote_peer_id=H(res["peer_id"]),
        step=ini["step"],
        exchange_id=H(HS["exchange_id"]),
        eph_private=H(ini["eph_private"]),
        **common,
    )
    b = AveragingSession(
        initiator=False,
        local_peer_id=H(res["peer_id"]),
        local_seed=H(res["seed"]),
        remote_peer_id=H(ini["peer_id"]),
        step=res["step"],
        eph_private=H(res["eph_private"]),
        **common,
    )
    return a, b


def test_files_are_up_to_date() -> None:
    assert build_handshake() == HS
    assert build_messages() == MESSAGES
    assert build_compression() == COMPRESSION
    assert build_receipt(HS) == RECEIPT


def test_sessions_reproduce_handshake_vector() -> None:
    a, b = sessions()
    ha = a.hello()
    assert ha.hex() == HS["initiator_hello_frame"]
    b.receive_hello(decode_one(ha))
    hb = b.hello()
    assert hb.hex() == HS["responder_hello_frame"]
    a.receive_hello(decode_one(hb))
    assert a.keys is not None and a.keys == b.keys
    assert a.keys.i2r.hex() == HS["k_i2r"]
    assert a.keys.r2i.hex() == HS["k_r2i"]


def _lp(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


@pytest.mark.parametrize(
    ("side", "role", "other"), [("initiator", 1, "responder"), ("responder", 2, "initiator")]
)
def test_transcript_layout_per_spec(side: str, role: int, other: str) -> None:
    me, peer = HS[side], HS[other]
    expected = (
        b"gossipd/avg/hello-sig/v1\x00"
        + struct.pack(">I", HS["version"])
        + bytes([role])
        + H(HS["exchange_id"])
        + _lp(H(me["peer_id"]))
        + _lp(H(peer["peer_id"]))
        + H(me["eph_pub"])
        + _lp(HS["spec"].encode())
        + struct.pack(">Q", HS["num_params"])
        + struct.pack(">Q", me["step"])
        + struct.pack(">Q", HS["time_ms"])
    )
    assert expected.hex() == HS[f"{side}_transcript"]
    # The sig is plain Ed25519 by the key inside the peer ID, over the transcript.
    assert H(me["peer_id"])[:6] == H("002408011220")
    nacl.signing.VerifyKey(H(me["peer_id"])[6:]).verify(expected, H(HS[f"{side}_sig"]))
    hello = decode_one(H(HS[f"{side}_hello_frame"]))
    assert isinstance(hello, Hello) and hello.sig.hex() == HS[f"{side}_sig"]


def test_kdf_per_spec() -> None:
    ini, res = HS["initiator"], HS["responder"]
    assert sodium.crypto_scalarmult_base(H(ini["eph_private"])).hex() == ini["eph_pub"]
    shared = sodium.crypto_scalarmult(H(ini["eph_private"]), H(res["eph_pub"]))
    assert shared == sodium.crypto_scalarmult(H(res["eph_private"]), H(ini["eph_pub"]))
    assert shared.hex() == HS["shared_secret"]
    info = (
        b"gossipd/avg/kdf/v1\x00"
        + struct.pack(">I", HS["version"])
        + H(HS["exchange_id"])
        + _lp(H(ini["peer_id"]))
        + _lp(H(res["peer_id"]))
        + H(ini["eph_pub"])
        + H(res["eph_pub"])
        + _lp(HS["spec"].encode())
        + struct.pack(">Q", HS["num_params"])
    )
    assert info.hex() == HS["kdf_info"]
    for name, person in (("k_i2r", b"gossipd/avg/i2r\x00"), ("k_r2i", b"gossipd/avg/r2i\x00")):
        key = hashlib.blake2b(info, digest_size=32, key=shared, person=person).digest()
        assert key.hex() == HS[name]


def test_swarm_vectors_per_spec() -> None:
    secret = H(HS["swarm_secret"])
    swarm_key = hashlib.blake2b(secret, digest_size=32, person=b"gossipd-swarm").digest()
    assert swarm_key.hex() == HS["swarm_key"]
    for side in ("initiator", "responder"):
        tag = hashlib.blake2b(H(HS[f"{side}_transcript"]), digest_size=32, key=swarm_key,
                              person=b"gossipd/swarmtag").digest()
        assert tag.hex() == HS[f"{side}_swarm_tag"]
    ikm = hashlib.blake2b(H(HS["shared_secret"]), digest_size=32, key=swarm_key,
                          person=b"gossipd/avg/psk\x00").digest()
    for name, person in (("swarm_k_i2r", b"gossipd/avg/i2r\x00"),
                         ("swarm_k_r2i", b"gossipd/avg/r2i\x00")):
        key = hashlib.blake2b(H(HS["kdf_info"]), digest_size=32, key=ikm, person=person).digest()
        assert key.hex() == HS[name]


def test_sessions_reproduce_swarm_vectors() -> None:
    a, b = sessions(H(HS["swarm_key"]))
    ha = decode_one(a.hello())
    assert ha.swarm_tag.hex() == HS["initiator_swarm_tag"]
    b.receive_hello(ha)
    hb = decode_one(b.hello())
    assert hb.swarm_tag.hex() == HS["responder_swarm_tag"]
    a.receive_hello(hb)
    assert a.keys is not None and b.keys == a.keys
    assert a.keys.i2r.hex() == HS["swarm_k_i2r"] and a.keys.r2i.hex() == HS["swarm_k_r2i"]


def test_params_vector() -> None:
    values = np.array(PARAMS["values"], dtype=np.float32)
    plaintext = encode_params(values, PARAMS["step"])
    assert plaintext.hex() == PARAMS["plaintext"]
    assert PARAMS["key"] == HS["k_i2r"]
    chunks = [H(c) for c in PARAMS["chunks"]]
    assert len(chunks) == -(-len(plaintext) // PARAMS["chunk_size"])
    opened = open_sealed(H(PARAMS["key"]), H(PARAMS["header"]), chunks, len(plaintext))
    assert opened == plaintext
    start = ParamsStart(H(PARAMS["header"]), len(plaintext), len(chunks))
    assert encode_message(start).hex() == PARAMS["start_frame"]
    assert [encode_message(ParamsChunk(c)).hex() for c in chunks] == PARAMS["chunk_frames"]
    # The recorded frames are what the vector's initiator would send to its responder.
    a, b = sessions()
    b.receive_hello(decode_one(a.hello()))
    b.hello()
    assert b.receive(decode_one(H(PARAMS["start_frame"]))) is None
    results = [b.receive(decode_one(H(f))) for f in PARAMS["chunk_frames"]]
    assert results[:-1] == [None] * (len(chunks) - 1)
    final = results[-1]
    assert final is not None
    assert final[0].tolist() == PARAMS["values"] and final[1] == PARAMS["step"]


@pytest.mark.parametrize("case", MESSAGES["valid"], ids=lambda c: c["name"])
def test_valid_message_vectors(case: dict[str, str]) -> None:
    msg = decode_one(H(case["frame"]))
    assert encode_message(msg).hex() == case["frame"]


@pytest.mark.parametrize("case", MESSAGES["invalid"], ids=lambda c: c["name"])
def test_invalid_message_vectors(case: dict[str, str]) -> None:
    dec = FrameDecoder()
    dec.feed(H(case["frame"]))
    with pytest.raises(ProtocolError) as info:
        body = dec.next_frame()
        assert body is not None
        from_wire(body)
    assert info.value.code == case["code"]


# ------------------------------------------------------------------ compressed payloads


def _f32(x: float) -> float:
    """Round a double to the nearest float32 (what one float32 operation yields)."""
    out: float = struct.unpack("<f", struct.pack("<f", x))[0]
    return out


def _bf16_per_spec(values: list[float]) -> bytes:
    out = b""
    for v in values:
        bits = struct.unpack("<I", struct.pack("<f", v))[0]
        top = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        if top & 0x7F80 == 0x7F80:  # a finite value rounded to Inf saturates
            top = (top & 0x8000) | 0x7F7F
        out += struct.pack("<H", top)
    return out


def _int8_per_spec(values: list[float]) -> bytes:
    scales, qs = b"", b""
    for lo in range(0, len(values), 256):
        block = values[lo : lo + 256]
        scale = min(_f32(max(abs(v) for v in block) / 127), 2.0**120)
        scales += struct.pack("<f", scale)
        for v in block:
            q = 0 if scale == 0 else max(-127, min(127, round(_f32(v / scale))))
            qs += struct.pack("<b", q)
    return scales + qs


@pytest.mark.parametrize("case", COMPRESSION["cases"], ids=lambda c: c["mode"])
def test_compression_vectors_per_spec(case: dict[str, Any]) -> None:
    n, raw = case["n"], H(case["input_f32"])
    values = list(struct.unpack(f"<{n}f", raw))
    data = H(case["data"])
    if case["mode"] == "bf16":
        assert _bf16_per_spec(values) == data
        decoded = b"".join(struct.pack("<I", h << 16)
                           for h in struct.unpack(f"<{n}H", data))
    else:
        assert _int8_per_spec(values) == data
        nb = -(-n // 256)
        scales = struct.unpack(f"<{nb}f", data[: 4 * nb])
        qs = struct.unpack(f"<{n}b", data[4 * nb :])
        decoded = b"".join(struct.pack("<f", _f32(q * scales[i // 256]))
                           for i, q in enumerate(qs))
    assert decoded.hex() == case["decoded_f32"]
    # The plaintext: the params map with this dtype, keys in order, data as one bin.
    body = {"dtype": case["dtype"], "n": n, "step": case["step"], "data": data}
    assert msgpack.packb(body, use_bin_type=True).hex() == case["plaintext"]
    out, step = decode_params(H(case["plaintext"]), n)
    assert step == case["step"] and out.astype("<f4").tobytes().hex() == case["decoded_f32"]


@pytest.mark.parametrize("case", COMPRESSION["cases"], ids=lambda c: c["mode"])
def test_compression_vectors_through_a_session(case: dict[str, Any]) -> None:
    """A sealed stream of the vector's plaintext decodes to its float32 values."""
    n = case["n"]
    # The vector sessions carry 5 parameters; a pair for n with the same identities.
    ini, res = HS["initiator"], HS["responder"]
    common: dict[str, Any] = {"spec": HS["spec"], "num_params": n, "time_ms": HS["time_ms"]}
    a = AveragingSession(initiator=True, local_peer_id=H(ini["peer_id"]),
                         local_seed=H(ini["seed"]), remote_peer_id=H(res["peer_id"]),
                         step=ini["step"], **common)
    b = AveragingSession(initiator=False, local_peer_id=H(res["peer_id"]),
                         local_seed=H(res["seed"]), remote_peer_id=H(ini["peer_id"]),
                         step=res["step"], **common)
    b.receive_hello(decode_one(a.hello()))
    a.receive_hello(decode_one(b.hello()))
    values = np.frombuffer(H(case["input_f32"]), "<f4")
    result = None
    for frame in a.params_frames(values, case["step"], encoding=case["mode"]):
        result = b.receive(decode_one(frame))
    assert result is not None
    assert result[0].astype("<f4").tobytes().hex() == case["decoded_f32"]


# ------------------------------------------------------------------ receipts (4.7)


def _info(d: dict[str, Any]) -> ReceiptInfo:
    return ReceiptInfo(d["samples"], d["head_seq"], H(d["head_hash"]), d["seen_seq"],
                       H(d["params_hash"]))


def test_hellos_carry_the_receipt_info() -> None:
    """Sessions given the vector's ReceiptInfo emit exactly its Hello frames; each side reads
    the other's info from the Hello, and the Hello without it is the handshake vector's."""
    info_i, info_r = _info(RECEIPT["initiator_info"]), _info(RECEIPT["responder_info"])
    ini, res = HS["initiator"], HS["responder"]
    common: dict[str, Any] = {"spec": HS["spec"], "num_params": HS["num_params"],
                              "time_ms": HS["time_ms"]}
    a = AveragingSession(initiator=True, local_peer_id=H(ini["peer_id"]),
                         local_seed=H(ini["seed"]), remote_peer_id=H(res["peer_id"]),
                         step=ini["step"], exchange_id=H(HS["exchange_id"]),
                         eph_private=H(ini["eph_private"]), receipt=info_i, **common)
    b = AveragingSession(initiator=False, local_peer_id=H(res["peer_id"]),
                         local_seed=H(res["seed"]), remote_peer_id=H(ini["peer_id"]),
                         step=res["step"], eph_private=H(res["eph_private"]), receipt=info_r,
                         **common)
    ha = a.hello()
    assert ha.hex() == RECEIPT["initiator_hello_frame"]
    b.receive_hello(decode_one(ha))
    assert b.remote_receipt == info_i
    hb = b.hello()
    assert hb.hex() == RECEIPT["responder_hello_frame"]
    a.receive_hello(decode_one(hb))
    assert a.remote_receipt == info_r
    # The receipt info is not in the signed transcript: the signatures are the handshake's.
    assert decode_one(ha).sig.hex() == HS["initiator_sig"]
    assert decode_one(hb).sig.hex() == HS["responder_sig"]
    # Per spec: the Hello map is the plain one plus "receipt", a map with the five fields.
    plain = msgpack.unpackb(H(HS["initiator_hello_frame"])[4:])
    with_info = msgpack.unpackb(ha[4:])
    assert with_info == {**plain, "receipt": {
        "samples": info_i.samples, "head_seq": info_i.head_seq,
        "head_hash": info_i.head_hash, "seen_seq": info_i.seen_seq,
        "params_hash": info_i.params_hash}}


def _ledger_fold(head: bytes, digests: list[bytes]) -> bytes:
    for d in digests:
        head = hashlib.blake2b(head + d, digest_size=32, person=b"gossipd/ledger\x00\x00").digest()
    return head


def test_receipt_layout_per_spec() -> None:
    """The receipt bytes of 4.7 rebuilt with struct/hashlib; both signatures are plain Ed25519
    over the personalised digest; the ReceiptSig frames carry them and the initiator's digests,
    which fold from the head the responder saw onto the head the initiator announced."""
    ini, res = HS["initiator"], HS["responder"]
    info_i, info_r = RECEIPT["initiator_info"], RECEIPT["responder_info"]
    for side in ("initiator", "responder"):
        values = np.array(RECEIPT[f"{side}_values"], dtype="<f4")
        assert blake3.blake3(values.tobytes()).hexdigest() == RECEIPT[f"{side}_params_hash"]
        # the Hello committed to it
        assert RECEIPT[f"{side}_info"]["params_hash"] == RECEIPT[f"{side}_params_hash"]
    expected = (
        b"gossipd/receipt/v2\x00" + H(HS["exchange_id"])
        + _lp(H(ini["peer_id"])) + _lp(H(res["peer_id"]))
        + struct.pack(">QQQ", HS["time_ms"], ini["step"], res["step"])
        + H(RECEIPT["initiator_params_hash"]) + H(RECEIPT["responder_params_hash"])
        + _lp(RECEIPT["algorithm"].encode()) + _lp(RECEIPT["compression"].encode())
        + struct.pack(">QQ", info_i["samples"], info_r["samples"])
        + struct.pack(">Q", info_i["head_seq"]) + H(info_i["head_hash"])
        + struct.pack(">Q", info_r["head_seq"]) + H(info_r["head_hash"])
    )
    assert expected.hex() == RECEIPT["body"]
    digest = hashlib.blake2b(expected, digest_size=32, person=b"gossipd/receipt\x00").digest()
    assert digest.hex() == RECEIPT["digest"]
    for side in ("initiator", "responder"):
        peer_id = H(HS[side]["peer_id"])
        nacl.signing.VerifyKey(peer_id[6:]).verify(digest, H(RECEIPT[f"{side}_sig"]))
        msg = decode_one(H(RECEIPT[f"{side}_receipt_sig_frame"]))
        assert isinstance(msg, ReceiptSig) and msg.sig.hex() == RECEIPT[f"{side}_sig"]
    parsed = verify_receipt({"body": expected, "initiator_sig": H(RECEIPT["initiator_sig"]),
                             "responder_sig": H(RECEIPT["responder_sig"])})
    assert parsed == ReceiptBody.from_bytes(expected)
    sig_i = decode_one(H(RECEIPT["initiator_receipt_sig_frame"]))
    seen_seq, seen_head = RECEIPT["responder_seen_head"]
    assert info_r["seen_seq"] == seen_seq
    assert len(sig_i.digests) == info_i["head_seq"] - seen_seq
    assert _ledger_fold(H(seen_head), list(sig_i.digests)).hex() == info_i["head_hash"]
    assert decode_one(H(RECEIPT["responder_receipt_sig_frame"])).digests == ()
