"""crypto.py and tensors.py: identities, signatures, secretstream, params codec."""

from __future__ import annotations

import msgpack
import nacl.bindings as sodium
import numpy as np
import pytest

from protocol.crypto import (
    ED25519_PEER_ID_PREFIX,
    ed25519_public_key_from_peer_id,
    new_ephemeral,
    open_sealed,
    peer_id_from_ed25519_public_key,
    public_key_from_seed,
    seal,
    sign,
    verify,
    x25519_shared,
)
from protocol.errors import (
    AuthenticationError,
    DecodeError,
    IntegrityError,
    LimitExceeded,
    SpecMismatch,
)
from protocol.tensors import decode_params, encode_params, params_plaintext_bound

SEED = bytes(range(32))
PUB = public_key_from_seed(SEED)
KEY = b"\x42" * 32


# ------------------------------------------------------------------ identities


def test_peer_id_round_trip() -> None:
    pid = peer_id_from_ed25519_public_key(PUB)
    assert pid[:6] == bytes.fromhex("002408011220") == ED25519_PEER_ID_PREFIX
    assert len(pid) == 38
    assert ed25519_public_key_from_peer_id(pid) == PUB


@pytest.mark.parametrize(
    "pid",
    [
        b"",
        ED25519_PEER_ID_PREFIX + PUB[:31],
        ED25519_PEER_ID_PREFIX + PUB + b"\x00",
        bytes.fromhex("002408021220") + PUB,  # secp256k1 key type
        bytes.fromhex("1220") + b"\x00" * 32,  # sha256 multihash (RSA-style ID)
        bytes.fromhex("002508011220") + PUB,  # wrong multihash length byte
        ED25519_PEER_ID_PREFIX + b"\x00" * 32,  # small-order point
        ED25519_PEER_ID_PREFIX + b"\x01" + b"\x00" * 31,  # identity point
    ],
)
def test_bad_peer_ids(pid: bytes) -> None:
    with pytest.raises(AuthenticationError):
        ed25519_public_key_from_peer_id(pid)


def test_peer_id_must_be_bytes() -> None:
    with pytest.raises(AuthenticationError):
        ed25519_public_key_from_peer_id("12D3KooW")  # type: ignore[arg-type]


def test_sign_verify() -> None:
    sig = sign(SEED, b"msg")
    assert len(sig) == 64
    assert sig == sign(SEED, b"msg")  # Ed25519 is deterministic
    verify(PUB, b"msg", sig)
    with pytest.raises(AuthenticationError):
        verify(PUB, b"msG", sig)
    with pytest.raises(AuthenticationError):
        verify(PUB, b"msg", sig[:-1] + bytes([sig[-1] ^ 1]))
    with pytest.raises(AuthenticationError):
        verify(public_key_from_seed(b"\x09" * 32), b"msg", sig)
    with pytest.raises(AuthenticationError):
        verify(PUB[:31], b"msg", sig)
    with pytest.raises(AuthenticationError):
        verify(PUB, b"msg", sig[:63])


def test_ephemeral_agreement() -> None:
    a_priv, a_pub = new_ephemeral()
    b_priv, b_pub = new_ephemeral()
    assert a_pub == sodium.crypto_scalarmult_base(a_priv)
    assert x25519_shared(a_priv, b_pub) == x25519_shared(b_priv, a_pub)
    assert new_ephemeral() != new_ephemeral()


@pytest.mark.parametrize("bad", [b"\x00" * 32, b"\x01" + b"\x00" * 31])
def test_low_order_ephemeral_rejected(bad: bytes) -> None:
    priv, _ = new_ephemeral()
    with pytest.raises(AuthenticationError):
        x25519_shared(priv, bad)
    with pytest.raises(AuthenticationError):
        x25519_shared(priv, bad[:31])


# ------------------------------------------------------------------ secretstream


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 100])
def test_seal_open_round_trip(size: int) -> None:
    data = bytes(range(256)) * 2
    plaintext = data[:size]
    header, chunks = seal(KEY, plaintext, chunk_size=16)
    assert len(header) == 24
    assert len(chunks) == max(1, -(-size // 16))
    assert open_sealed(KEY, header, chunks, max_plaintext=size) == plaintext


def test_seal_default_chunk_size() -> None:
    plaintext = b"\x07" * ((1 << 20) + 5)
    header, chunks = seal(KEY, plaintext)
    assert [len(c) for c in chunks] == [(1 << 20) + 17, 5 + 17]
    assert open_sealed(KEY, header, chunks, len(plaintext)) == plaintext


def test_seal_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        seal(KEY[:31], b"x")
    with pytest.raises(ValueError):
        seal(KEY, b"x", chunk_size=0)
    with pytest.raises(ValueError):
        seal(KEY, b"x", chunk_size=(1 << 20) + 1)
    with pytest.raises(LimitExceeded):
        seal(KEY, b"x" * 9000, chunk_size=1)


def _sealed() -> tuple[bytes, list[bytes], bytes]:
    plaintext = bytes(range(64))
    header, chunks = seal(KEY, plaintext, chunk_size=16)
    return header, chunks, plaintext


def test_open_rejects_tampering() -> None:
    header, chunks, _ = _sealed()
    for i in range(len(chunks)):
        for pos in (0, len(chunks[i]) - 1):
            bad = list(chunks)
            flipped = bytearray(bad[i])
            flipped[pos] ^= 0x01
            bad[i] = bytes(flipped)
            with pytest.raises(IntegrityError):
                open_sealed(KEY, header, bad, 1000)
    with pytest.raises(IntegrityError):
        open_sealed(KEY, bytes([header[0] ^ 1]) + header[1:], chunks, 1000)
    with pytest.raises(IntegrityError):
        open_sealed(b"\x43" * 32, header, chunks, 1000)


def test_open_rejects_truncation_reordering_duplication() -> None:
    header, chunks, _ = _sealed()
    for bad in (
        chunks[:-1],  # FINAL missing
        chunks[1:],  # first chunk dropped
        [chunks[1], chunks[0], *chunks[2:]],  # reordered
        [chunks[0], *chunks],  # duplicated
        [*chunks, chunks[-1]],  # replayed FINAL
        [],
        [chunks[0][:16], *chunks[1:]],  # shorter than the tag
    ):
        with pytest.raises(IntegrityError):
            open_sealed(KEY, header, bad, 1000)


def test_open_rejects_data_after_final() -> None:
    # A sender that tags a middle chunk FINAL and keeps going.
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    header = sodium.crypto_secretstream_xchacha20poly1305_init_push(state, KEY)
    final = sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL
    c1 = sodium.crypto_secretstream_xchacha20poly1305_push(state, b"a", None, final)
    c2 = sodium.crypto_secretstream_xchacha20poly1305_push(state, b"b", None, final)
    with pytest.raises(IntegrityError):
        open_sealed(KEY, header, [c1, c2], 10)


def test_open_rejects_push_tag_on_last_chunk() -> None:
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    header = sodium.crypto_secretstream_xchacha20poly1305_init_push(state, KEY)
    push = sodium.crypto_secretstream_xchacha20poly1305_TAG_PUSH
    c1 = sodium.crypto_secretstream_xchacha20poly1305_push(state, b"a", None, push)
    with pytest.raises(IntegrityError):
        open_sealed(KEY, header, [c1], 10)


def test_open_limit_checked_before_decrypting() -> None:
    header, chunks, plaintext = _sealed()
    with pytest.raises(LimitExceeded):
        open_sealed(KEY, header, chunks, len(plaintext) - 1)
    # Garbage of a huge announced size is refused on size, not on MAC.
    with pytest.raises(LimitExceeded):
        open_sealed(KEY, header, [b"\x00" * 1000], 10)


def test_open_rejects_bad_header_length() -> None:
    _, chunks, _ = _sealed()
    with pytest.raises(IntegrityError):
        open_sealed(KEY, b"\x00" * 23, chunks, 1000)


# ------------------------------------------------------------------ tensors


def test_params_round_trip() -> None:
    flat = np.linspace(-3, 3, 101, dtype=np.float32)
    blob = encode_params(flat, 42)
    assert len(blob) <= params_plaintext_bound(101)
    out, step = decode_params(blob, 101)
    assert step == 42
    assert out.dtype == np.float32
    assert out.flags.writeable
    np.testing.assert_array_equal(out, flat)


def test_params_big_endian_input_and_layout() -> None:
    flat = np.array([1.0, -2.0], dtype=">f4")
    body = msgpack.unpackb(encode_params(flat, 7))
    assert list(body) == ["dtype", "n", "step", "data"]
    assert body == {"dtype": "<f4", "n": 2, "step": 7, "data": np.array([1, -2], "<f4").tobytes()}
    assert decode_params(encode_params(flat, 7), 2)[0].tolist() == [1.0, -2.0]


def test_params_plaintext_bound_is_an_upper_bound() -> None:
    flat = np.ones(70000, dtype=np.float32)
    assert len(encode_params(flat, (1 << 63) - 1)) <= params_plaintext_bound(70000)


@pytest.mark.parametrize(
    "flat",
    [
        np.ones((2, 2), dtype=np.float32),
        np.ones(3, dtype=np.float64),
        np.ones(3, dtype=np.int32),
        np.array([1.0, np.nan], dtype=np.float32),
        np.array([np.inf], dtype=np.float32),
        np.ones(0, dtype=np.float32),
    ],
)
def test_encode_params_rejects_bad_arrays(flat: np.ndarray) -> None:
    with pytest.raises(ValueError):
        encode_params(flat, 0)


@pytest.mark.parametrize("step", [-1, 1 << 63, True])
def test_encode_params_rejects_bad_step(step: int) -> None:
    with pytest.raises(ValueError):
        encode_params(np.ones(2, dtype=np.float32), step)


def _blob(**changes: object) -> bytes:
    body: dict[str, object] = {
        "dtype": "<f4",
        "n": 2,
        "step": 1,
        "data": np.array([1, 2], "<f4").tobytes(),
    }
    body.update(changes)
    packed: bytes = msgpack.packb({k: v for k, v in body.items() if v is not None})
    return packed


def test_decode_params_spec_mismatch() -> None:
    with pytest.raises(SpecMismatch):
        decode_params(_blob(), 3)


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\x01",
        msgpack.packb([1, 2]),
        _blob(dtype="<f8"),
        _blob(dtype=">f4"),
        _blob(n=True),
        _blob(n=-2),
        _blob(step=-1),
        _blob(step=1.0),
        _blob(data=b"\x00" * 7),
        _blob(data=b"\x00" * 12),
        _blob(data="x" * 8),
        _blob(data=np.array([1, np.nan], "<f4").tobytes()),
        _blob(data=np.array([-np.inf, 1], "<f4").tobytes()),
        _blob() + b"\x00",
        msgpack.packb({"dtype": "<f4"}),
    ],
)
def test_decode_params_malformed(blob: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_params(blob, 2)
