"""Build the JSON test vectors in protocol/vectors/.

Run ``python -m protocol.vectorgen`` to (re)write them. Everything is derived from
fixed seeds, ephemeral private keys and exchange ids, so regeneration reproduces
the same bytes, with one exception: libsodium draws the secretstream header from
its own CSPRNG and offers no way to inject it, so the sealed parts of
``params.json`` (header, chunks, frames) are one recorded run. Implementations
check those by *opening* them, not by re-sealing. Bytes are lowercase hex.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .crypto import (
    ephemeral_from_private,
    peer_id_from_ed25519_public_key,
    public_key_from_seed,
    seal,
    sign,
    x25519_shared,
)
from .handshake import (
    ROLE_INITIATOR,
    ROLE_RESPONDER,
    derive_keys,
    kdf_info,
    signed_transcript,
    swarm_key_from_secret,
    swarm_tag,
)
from .messages import (
    PROTOCOL_VERSION,
    ErrorMsg,
    Hello,
    ParamsChunk,
    ParamsStart,
    PeerRecord,
    PeersRequest,
    PeersResponse,
    ReceiptInfo,
    ReceiptSig,
    encode_message,
)
from .quant import WIRE_DTYPES, decode, encode
from .receipt import ReceiptBody, params_hash, receipt_digest, sign_receipt
from .session import AveragingSession
from .tensors import encode_params

__all__ = ["VECTOR_DIR", "build_compression", "build_handshake", "build_messages",
           "build_params", "build_receipt", "main"]

VECTOR_DIR = Path(__file__).with_name("vectors")

SEED_I = bytes(range(32))
SEED_R = bytes(range(32, 64))
EPH_I = bytes.fromhex("77" * 32)
EPH_R = bytes.fromhex("5d" * 32)
EXCHANGE_ID = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
SPEC = "mlp-digits-64x32-v1"
NUM_PARAMS = 5
STEP_I = 120
STEP_R = 97
VALUES = [0.5, -1.25, 3.0, 0.125, 1024.0]
CHUNK_SIZE = 16
TIME_MS = 1_796_000_000_000  # 2026-11-30T00:53:20Z; both Hellos carry it
SWARM_SECRET = b"gossipd test vector swarm secret, 48 bytes long.."
SWARM_KEY = swarm_key_from_secret(SWARM_SECRET)
# receipt.json: the responder's parameters, both sides' ReceiptInfo and ledger digests.
VALUES_R = [2.0, 0.25, -3.5, 8.0, -0.0625]
LEDGER_PERSON = b"gossipd/ledger\x00\x00"
SEEN_HEAD_I = (5, bytes([0x11]) * 32)  # the initiator's head as the responder last saw it
DIGESTS_I = [hashlib.blake2b(b"record %d" % i, digest_size=32).digest() for i in (6, 7)]
SAMPLES_I, SAMPLES_R = 320, 256
HEAD_R = (3, bytes([0x22]) * 32)  # the responder's head; the initiator never saw it


def _party(seed: bytes, eph_priv: bytes, step: int) -> dict[str, Any]:
    pub = public_key_from_seed(seed)
    _, eph_pub = ephemeral_from_private(eph_priv)
    return {
        "seed": seed.hex(),
        "ed25519_pub": pub.hex(),
        "peer_id": peer_id_from_ed25519_public_key(pub).hex(),
        "eph_private": eph_priv.hex(),
        "eph_pub": eph_pub.hex(),
        "step": step,
    }


def build_handshake() -> dict[str, Any]:
    ini = _party(SEED_I, EPH_I, STEP_I)
    res = _party(SEED_R, EPH_R, STEP_R)
    out: dict[str, Any] = {
        "version": PROTOCOL_VERSION,
        "spec": SPEC,
        "num_params": NUM_PARAMS,
        "exchange_id": EXCHANGE_ID.hex(),
        "time_ms": TIME_MS,
        "initiator": ini,
        "responder": res,
    }
    for name, me, other, role, seed in (
        ("initiator", ini, res, ROLE_INITIATOR, SEED_I),
        ("responder", res, ini, ROLE_RESPONDER, SEED_R),
    ):
        transcript = signed_transcript(
            version=PROTOCOL_VERSION,
            role=role,
            exchange_id=EXCHANGE_ID,
            signer_peer_id=bytes.fromhex(me["peer_id"]),
            receiver_peer_id=bytes.fromhex(other["peer_id"]),
            eph_pub=bytes.fromhex(me["eph_pub"]),
            spec=SPEC,
            num_params=NUM_PARAMS,
            step=me["step"],
            time_ms=TIME_MS,
        )
        sig = sign(seed, transcript)
        hello = Hello(
            version=PROTOCOL_VERSION,
            exchange_id=EXCHANGE_ID,
            eph_pub=bytes.fromhex(me["eph_pub"]),
            sig=sig,
            spec=SPEC,
            num_params=NUM_PARAMS,
            step=me["step"],
            time_ms=TIME_MS,
        )
        out[f"{name}_swarm_tag"] = swarm_tag(SWARM_KEY, transcript).hex()
        out[f"{name}_transcript"] = transcript.hex()
        out[f"{name}_sig"] = sig.hex()
        out[f"{name}_hello_frame"] = encode_message(hello).hex()
    shared = x25519_shared(EPH_I, bytes.fromhex(res["eph_pub"]))
    info = kdf_info(
        version=PROTOCOL_VERSION,
        exchange_id=EXCHANGE_ID,
        initiator_peer_id=bytes.fromhex(ini["peer_id"]),
        responder_peer_id=bytes.fromhex(res["peer_id"]),
        initiator_eph_pub=bytes.fromhex(ini["eph_pub"]),
        responder_eph_pub=bytes.fromhex(res["eph_pub"]),
        spec=SPEC,
        num_params=NUM_PARAMS,
    )
    keys = derive_keys(shared, info)
    out.update(
        shared_secret=shared.hex(), kdf_info=info.hex(), k_i2r=keys.i2r.hex(), k_r2i=keys.r2i.hex()
    )
    # The same exchange in a swarm with a secret: Hellos add swarm tags, keys mix the swarm key.
    swarm_keys = derive_keys(shared, info, SWARM_KEY)
    out.update(
        swarm_secret=SWARM_SECRET.hex(), swarm_key=SWARM_KEY.hex(),
        swarm_k_i2r=swarm_keys.i2r.hex(), swarm_k_r2i=swarm_keys.r2i.hex(),
    )
    return out


def build_params(handshake: dict[str, Any]) -> dict[str, Any]:
    """The initiator's parameters in the handshake vector's exchange, sealed with k_i2r:
    one ParamsStart frame and one ParamsChunk frame per chunk."""
    key = bytes.fromhex(handshake["k_i2r"])
    plaintext = encode_params(np.array(VALUES, dtype=np.float32), STEP_I)
    header, chunks = seal(key, plaintext, CHUNK_SIZE)
    return {
        "direction": "i2r",
        "key": key.hex(),
        "values": VALUES,
        "step": STEP_I,
        "num_params": NUM_PARAMS,
        "plaintext": plaintext.hex(),
        "chunk_size": CHUNK_SIZE,
        "header": header.hex(),
        "chunks": [c.hex() for c in chunks],
        "start_frame": encode_message(
            ParamsStart(header=header, size=len(plaintext), chunks=len(chunks))
        ).hex(),
        "chunk_frames": [encode_message(ParamsChunk(data=c)).hex() for c in chunks],
    }


def _fold(head: bytes, digests: list[bytes]) -> bytes:
    """A ledger head after records with these body digests (gossipd/ledger.py's link)."""
    for d in digests:
        head = hashlib.blake2b(head + d, digest_size=32, person=LEDGER_PERSON).digest()
    return head


def build_receipt(handshake: dict[str, Any]) -> dict[str, Any]:
    """The handshake vector's exchange with receipts (fully deterministic): both Hellos with
    their ReceiptInfo, the receipt bytes both build, both signatures and ReceiptSig frames.
    The initiator's ledger grew by two records since the head the responder saw (seq 5), so
    its ReceiptSig carries those two body digests; the responder's was never seen, so none."""
    ini, res = handshake["initiator"], handshake["responder"]
    id_i, id_r = bytes.fromhex(ini["peer_id"]), bytes.fromhex(res["peer_id"])
    head_i = (SEEN_HEAD_I[0] + len(DIGESTS_I), _fold(SEEN_HEAD_I[1], DIGESTS_I))
    hash_i = params_hash(np.array(VALUES, dtype=np.float32))
    hash_r = params_hash(np.array(VALUES_R, dtype=np.float32))
    info_i = ReceiptInfo(samples=SAMPLES_I, head_seq=head_i[0], head_hash=head_i[1],
                         seen_seq=-1, params_hash=hash_i)
    info_r = ReceiptInfo(samples=SAMPLES_R, head_seq=HEAD_R[0], head_hash=HEAD_R[1],
                         seen_seq=SEEN_HEAD_I[0], params_hash=hash_r)
    common: dict[str, Any] = {"spec": SPEC, "num_params": NUM_PARAMS, "time_ms": TIME_MS}
    a = AveragingSession(initiator=True, local_peer_id=id_i, local_seed=SEED_I,
                         remote_peer_id=id_r, step=STEP_I, exchange_id=EXCHANGE_ID,
                         eph_private=EPH_I, receipt=info_i, **common)
    b = AveragingSession(initiator=False, local_peer_id=id_r, local_seed=SEED_R,
                         remote_peer_id=id_i, step=STEP_R, eph_private=EPH_R, receipt=info_r,
                         **common)
    hello_i = a.hello()
    b.receive_hello(_decode_frame(hello_i))
    hello_r = b.hello()
    body = ReceiptBody(EXCHANGE_ID, id_i, id_r, TIME_MS, STEP_I, STEP_R, hash_i, hash_r,
                       "gossip-sgd", "none", SAMPLES_I, SAMPLES_R, head_i, HEAD_R).to_bytes()
    sig_i, sig_r = sign_receipt(SEED_I, body), sign_receipt(SEED_R, body)
    return {
        "initiator_info": _info_json(info_i), "responder_info": _info_json(info_r),
        "initiator_hello_frame": hello_i.hex(), "responder_hello_frame": hello_r.hex(),
        "initiator_values": VALUES, "responder_values": VALUES_R,
        "initiator_params_hash": hash_i.hex(), "responder_params_hash": hash_r.hex(),
        "algorithm": "gossip-sgd", "compression": "none",
        "responder_seen_head": [SEEN_HEAD_I[0], SEEN_HEAD_I[1].hex()],
        "initiator_digests": [d.hex() for d in DIGESTS_I],
        "body": body.hex(), "digest": receipt_digest(body).hex(),
        "initiator_sig": sig_i.hex(), "responder_sig": sig_r.hex(),
        "initiator_receipt_sig_frame": encode_message(
            ReceiptSig(sig=sig_i, digests=DIGESTS_I)).hex(),
        "responder_receipt_sig_frame": encode_message(ReceiptSig(sig=sig_r, digests=[])).hex(),
    }


def _info_json(info: ReceiptInfo) -> dict[str, Any]:
    return {"samples": info.samples, "head_seq": info.head_seq,
            "head_hash": info.head_hash.hex(), "seen_seq": info.seen_seq,
            "params_hash": info.params_hash.hex()}


def _decode_frame(frame: bytes) -> Hello:
    from .framing import FrameDecoder
    from .messages import from_wire

    dec = FrameDecoder()
    dec.feed(frame)
    body = dec.next_frame()
    assert body is not None
    msg = from_wire(body)
    assert isinstance(msg, Hello)
    return msg


def _f32(values: list[float]) -> np.ndarray:
    return np.array(values, dtype="<f4")


def compression_inputs() -> dict[str, np.ndarray]:
    """Inputs of compression.json, each chosen to pin down one rule of PROTOCOL.md 4.4."""
    f32max = float(np.finfo(np.float32).max)
    bf16 = _f32([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 1 + 2**-8 + 2**-20, 3.0, 0.1, -0.0,
                 1e-40, f32max, -f32max, 65504.0, -2.5e-3])
    i = np.arange(600)
    block0 = ((i[:256] * 37) % 255 - 127) / 16.0  # an exact max of 127/16: q reaches +-127
    block1 = np.zeros(256)  # all zeros: scale 0
    block2 = np.sin(i[512:600]) * 1e-3  # the short last block (88 values)
    int8 = _f32(list(np.concatenate([block0, block1, block2])))
    int8[3] = 0.5 * (127 / 16.0) / 127  # exactly half a step: rounds to even (0)
    int8[4] = 1.5 * (127 / 16.0) / 127  # one and a half steps: rounds to 2
    return {"bf16": bf16, "int8": int8}


def build_compression() -> dict[str, Any]:
    """Compressed payloads (fully deterministic): per mode the float32 input bytes, the
    encoded data bytes, the decoded float32 bytes and the whole params plaintext at STEP_I."""
    cases = []
    for mode, values in compression_inputs().items():
        data = encode(values, mode)
        cases.append({
            "mode": mode,
            "dtype": WIRE_DTYPES[mode],
            "n": int(values.size),
            "step": STEP_I,
            "input_f32": values.tobytes().hex(),
            "data": data.tobytes().hex(),
            "decoded_f32": decode(data, int(values.size), mode).astype("<f4").tobytes().hex(),
            "plaintext": encode_params(values, STEP_I, mode).hex(),
        })
    return {"cases": cases}


def build_messages() -> dict[str, Any]:
    """Plain message encodings (fields use hex for bytes) and invalid frames."""
    hello = Hello(
        version=PROTOCOL_VERSION,
        exchange_id=bytes(16),
        eph_pub=bytes([9]) * 32,
        sig=bytes([7]) * 64,
        spec="s",
        num_params=3,
        step=0,
    )
    cases: list[tuple[str, Any]] = [
        ("hello", hello),
        ("params", ParamsStart(header=bytes([1]) * 24, size=40, chunks=3)),
        ("chunk", ParamsChunk(data=bytes([2]) * 20)),
        ("hello_receipt", Hello(version=PROTOCOL_VERSION, exchange_id=bytes(16),
                                eph_pub=bytes([9]) * 32, sig=bytes([7]) * 64, spec="s",
                                num_params=3, step=0,
                                receipt=ReceiptInfo(samples=320, head_seq=7,
                                                    head_hash=bytes([4]) * 32, seen_seq=-1,
                                                    params_hash=bytes([3]) * 32))),
        ("receipt_sig", ReceiptSig(sig=bytes([5]) * 64, digests=[bytes([6]) * 32])),
        ("error", ErrorMsg(code="spec", message="different model")),
        ("peers_req", PeersRequest(addrs=["/ip4/10.0.0.1/tcp/4001"])),
        (
            "peers_resp",
            PeersResponse(
                peers=[PeerRecord(peer_id="12D3KooWExample", addrs=["/ip4/10.0.0.2/tcp/4001"])]
            ),
        ),
        ("peers_resp_empty", PeersResponse(peers=[])),
    ]
    valid = [{"name": name, "frame": encode_message(msg).hex()} for name, msg in cases]
    invalid = [
        {"name": "length-over-limit", "frame": "01000001", "code": "frame-too-large"},
        {"name": "empty-frame", "frame": "00000000", "code": "decode"},
        {"name": "body-not-a-map", "frame": "0000000101", "code": "decode"},
        {"name": "trailing-byte-in-body", "frame": "0000000280c0", "code": "decode"},
        {"name": "int-map-key", "frame": "00000003810101", "code": "decode"},
        {"name": "timestamp-ext", "frame": "00000009" + "81a174d6ff00000001", "code": "decode"},
        {"name": "unknown-type", "frame": "00000005" + "81a174a17a", "code": "decode"},
        # The version-1 receipt round's first message is gone: an unknown type now.
        {"name": "receipt-info-message", "frame": _frame({"t": "receipt_info", "samples": 1,
                                                          "head_seq": 0,
                                                          "head_hash": bytes(32),
                                                          "seen_seq": -1}),
         "code": "decode"},
        {"name": "hello-receipt-nil", "frame": _frame({**_hello_wire(hello), "receipt": None}),
         "code": "decode"},
        {"name": "hello-receipt-short-hash", "frame": _frame(
            {**_hello_wire(hello), "receipt": {"samples": 1, "head_seq": 0,
                                               "head_hash": bytes(31), "seen_seq": -1,
                                               "params_hash": bytes(32)}}),
         "code": "decode"},
        # Version 3 commits to the parameters in the Hello: a receipt without the hash.
        {"name": "hello-receipt-no-params-hash", "frame": _frame(
            {**_hello_wire(hello), "receipt": {"samples": 1, "head_seq": 0,
                                               "head_hash": bytes(32), "seen_seq": -1}}),
         "code": "decode"},
        {"name": "hello-version-1", "frame": _frame({**_hello_wire(hello), "version": 1}),
         "code": "version"},
        {"name": "hello-version-2", "frame": _frame({**_hello_wire(hello), "version": 2}),
         "code": "version"},
    ]
    return {"valid": valid, "invalid": invalid}


def _hello_wire(hello: Hello) -> dict[str, Any]:
    from .messages import to_wire

    return to_wire(hello)


def _frame(body: dict[str, Any]) -> str:
    from .framing import encode_frame

    return encode_frame(body).hex()


def main(argv: list[str] | None = None) -> int:
    out_dir = Path(argv[0]) if argv else VECTOR_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    handshake = build_handshake()
    files = {
        "handshake.json": handshake,
        "params.json": build_params(handshake),
        "messages.json": build_messages(),
        "compression.json": build_compression(),
        "receipt.json": build_receipt(handshake),
    }
    for name, data in files.items():
        (out_dir / name).write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
