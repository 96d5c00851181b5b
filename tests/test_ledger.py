"""The provenance ledger and exchange receipts: append, reopen, torn tails, and every kind of
tampering detected by verify."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from gossipd.ledger import Ledger, LedgerError, encode_record, iter_records, verify_file
from protocol.crypto import peer_id_from_ed25519_public_key, public_key_from_seed
from protocol.errors import AuthenticationError, DecodeError
from protocol.receipt import ReceiptBody, params_hash, sign_receipt, verify_receipt

SEED_A, SEED_B, SEED_X = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
ID_A, ID_B, ID_X = (peer_id_from_ed25519_public_key(public_key_from_seed(s))
                    for s in (SEED_A, SEED_B, SEED_X))


def receipt(head_a: tuple[int, bytes], head_b: tuple[int, bytes]) -> dict[str, bytes]:
    body = ReceiptBody(b"\x07" * 16, ID_A, ID_B, 1_800_000_000_000, 10, 12,
                       params_hash(np.zeros(4, np.float32)), params_hash(np.ones(4, np.float32)),
                       "gossip", "none", 320, 384, head_a, head_b).to_bytes()
    return {"body": body, "initiator_sig": sign_receipt(SEED_A, body),
            "responder_sig": sign_receipt(SEED_B, body)}


def build(path: Path) -> Ledger:
    ledger = Ledger(path, SEED_A, ID_A)
    ledger.append("data", {"dataset_hash": b"\x11" * 32, "task": "digits-mlp"})
    ledger.append("receipt", receipt(ledger.head, (0, b"\x22" * 32)))
    ledger.append("checkpoint", {"params_hash": b"\x33" * 32, "step": 100})
    return ledger


def test_append_reopen_and_verify(tmp_path: Path) -> None:
    path = tmp_path / "ledger.bin"
    ledger = build(path)
    head = ledger.head
    ledger.close()
    again = Ledger(path, SEED_A, ID_A)
    assert again.head == head and again.dropped_bytes == 0 and len(again) == 4
    records = verify_file(path)
    assert [r.kind for r in records] == ["genesis", "data", "receipt", "checkpoint"]
    with pytest.raises(ValueError):
        Ledger(path, SEED_B, ID_A)  # someone else's key


def test_a_torn_last_record_is_dropped_and_nothing_before_it(tmp_path: Path) -> None:
    path = tmp_path / "ledger.bin"
    build(path).close()
    whole = path.read_bytes()
    last_start = [o for o, _e, _r in iter_records(whole)][-1]
    for cut in (last_start + 1, last_start + 10, len(whole) - 1):
        path.write_bytes(whole[:cut])
        ledger = Ledger(path, SEED_A, ID_A)
        assert len(ledger) == 3 and ledger.dropped_bytes == cut - last_start
        ledger.append("checkpoint", {"params_hash": b"\x44" * 32, "step": 200})
        ledger.close()
        assert [r.seq for r in verify_file(path)] == [0, 1, 2, 3]
    path.write_bytes(whole[: len(whole) - 5])
    with pytest.raises(LedgerError, match="truncated"):
        verify_file(path)  # an export must be whole


def _records(path: Path) -> list[bytes]:
    blob = path.read_bytes()
    return [blob[o:e] for o, e, _r in iter_records(blob)]


def test_every_kind_of_tampering_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "ledger.bin"
    build(path).close()
    recs = _records(path)
    out = tmp_path / "bad.bin"
    # changed: flip one byte inside each record's body
    for i, raw in enumerate(recs):
        bad = bytearray(raw)
        bad[10] ^= 1
        out.write_bytes(b"".join([*recs[:i], bytes(bad), *recs[i + 1 :]]))
        with pytest.raises(LedgerError):
            verify_file(out)
    # removed, reordered
    for variant in (recs[:2] + recs[3:], [recs[0], recs[2], recs[1], recs[3]], recs[1:]):
        out.write_bytes(b"".join(variant))
        with pytest.raises(LedgerError):
            verify_file(out)
    # forged: a well-formed record that links correctly but is signed by another key
    last = list(iter_records(path.read_bytes()))[-1][2]
    assert last is not None
    forged, _ = encode_record(SEED_X, last.seq + 1, last.hash, "checkpoint", 0,
                              {"params_hash": b"\x55" * 32, "step": 1})
    out.write_bytes(b"".join(recs) + forged)
    with pytest.raises(LedgerError, match="bad signature"):
        verify_file(out)
    # inserted: a record the owner signed, linked to the one before it, put in the middle
    mid = list(iter_records(path.read_bytes()))[1][2]
    assert mid is not None
    inserted, _ = encode_record(SEED_A, mid.seq + 1, mid.hash, "checkpoint", 0,
                                {"params_hash": b"\x66" * 32, "step": 2})
    out.write_bytes(b"".join([*recs[:2], inserted, *recs[2:]]))
    with pytest.raises(LedgerError, match=r"does not link|sequence"):
        verify_file(out)
    # rewritten history re-signed by the owner still breaks the chain after the change
    own, _ = encode_record(SEED_A, 2, b"\x00" * 32, "checkpoint", 0, {"step": 5})
    out.write_bytes(b"".join([*recs[:2], own, *recs[3:]]))
    with pytest.raises(LedgerError, match="link"):
        verify_file(out)


def test_unsigned_records_are_sealed_and_a_killed_tail_is_sealed_at_start(
        tmp_path: Path) -> None:
    """Unsigned records (receipts) are covered by the seal `sync` appends; a ledger whose last
    record is unsigned does not verify (forged, or copied mid-batch); a killed process's
    unsigned tail is kept, checked and sealed by the next start."""
    path = tmp_path / "ledger.bin"
    ledger = Ledger(path, SEED_A, ID_A)
    ledger.append("receipt", receipt(ledger.head, (0, b"\x22" * 32)), fsync=False, sign=False)
    ledger.append("receipt", receipt(ledger.head, (1, b"\x22" * 32)), fsync=False, sign=False)
    with pytest.raises(LedgerError, match="records 1-2 are not sealed"):
        verify_file(path)
    head = ledger.sync()
    assert [r.kind for r in verify_file(path)] == ["genesis", "receipt", "receipt", "seal"]
    assert head == ledger.head == ledger.durable_head and ledger.sync() == head  # sealed once
    assert ledger.durable_size == path.stat().st_size
    whole = path.read_bytes()
    ledger.append("receipt", receipt(ledger.head, (3, b"\x22" * 32)), fsync=False, sign=False)
    assert ledger.durable_size == len(whole) < path.stat().st_size  # an export's extent
    path.write_bytes(whole)  # (as if that record had not been written)
    # an unsigned record appended by someone else (it links, but nothing signs it)
    tail = list(iter_records(whole))[-1][2]
    assert tail is not None
    forged, _ = encode_record(None, tail.seq + 1, tail.hash, "checkpoint", 0,
                              {"params_hash": b"\x55" * 32, "step": 1})
    path.write_bytes(whole + forged)
    with pytest.raises(LedgerError, match="not sealed"):
        verify_file(path)
    # a seal record that claims to be sealed without a signature
    fake_seal, _ = encode_record(None, tail.seq + 1, tail.hash, "seal", 0, {})
    path.write_bytes(whole + fake_seal + encode_record(SEED_A, tail.seq + 2, _.hash,
                                                       "checkpoint", 0, {"step": 1})[0])
    with pytest.raises(LedgerError, match="unsigned seal"):
        verify_file(path)
    # killed after unsigned writes: the next start keeps them and seals them
    path.write_bytes(whole)
    ledger = Ledger(path, SEED_A, ID_A)
    ledger.append("receipt", receipt(ledger.head, (2, b"\x22" * 32)), fsync=False, sign=False)
    again = Ledger(path, SEED_A, ID_A)  # (the first one is never closed: a kill)
    kinds = [r.kind for r in verify_file(path)]
    assert kinds[-2:] == ["receipt", "seal"] and len(kinds) == 6 and again.dropped_bytes == 0
    assert again.sealed_at_open == 1 and Ledger(path, SEED_A, ID_A).sealed_at_open == 0
    assert again.durable_head == again.head


def test_receipts_need_both_signatures() -> None:
    good = receipt((1, b"\x01" * 32), (2, b"\x02" * 32))
    body = verify_receipt(good)
    assert body.initiator == ID_A and body.responder_samples == 384
    assert ReceiptBody.from_bytes(body.to_bytes()) == body
    with pytest.raises(AuthenticationError, match="responder"):
        verify_receipt({**good, "responder_sig": sign_receipt(SEED_X, good["body"])})
    with pytest.raises(AuthenticationError, match="initiator"):
        verify_receipt({**good, "initiator_sig": bytes(64)})
    tampered = bytearray(good["body"])
    tampered[-40] ^= 1
    with pytest.raises(AuthenticationError):
        verify_receipt({**good, "body": bytes(tampered)})
    with pytest.raises(DecodeError):
        verify_receipt({**good, "body": good["body"][:-1]})
    with pytest.raises(DecodeError):
        ReceiptBody.from_bytes(b"junk" + struct.pack(">Q", 1))


def test_digests_prove_append_only_growth(tmp_path: Path) -> None:
    from gossipd.ledger import fold

    ledger = build(tmp_path / "ledger.bin")
    second = ledger.read()[1]
    seen_seq, seen_head = second.seq, second.hash
    ledger.append("checkpoint", {"params_hash": b"\x66" * 32, "step": 300})
    digests = ledger.digests_since(seen_seq)
    assert digests is not None and len(digests) == 3
    assert fold(seen_head, digests) == ledger.head[1]
    # a node that rewrote record 2 cannot reach its new head from what the peer saw
    rewritten = list(digests)
    rewritten[0] = bytes(32)
    assert fold(seen_head, rewritten) != ledger.head[1]
    assert ledger.digests_since(seen_seq, upto=3) == digests[:2]  # up to an announced head


def test_memory_is_bounded_and_old_digests_are_refused(tmp_path: Path) -> None:
    from gossipd import ledger as ledger_mod

    ledger = Ledger(tmp_path / "ledger.bin", SEED_A, ID_A)
    for i in range(2 * ledger_mod.KEEP_DIGESTS + 10):
        ledger.append("checkpoint", {"step": i, "params_hash": bytes(32)})
    assert ledger_mod.KEEP_DIGESTS <= len(ledger._digests) < 2 * ledger_mod.KEEP_DIGESTS
    assert ledger.digests_since(0) is None  # too old to prove
    recent = ledger.digests_since(len(ledger) - 3)
    assert recent is not None and len(recent) == 2
    ledger.close()
    reopened = Ledger(tmp_path / "ledger.bin", SEED_A, ID_A)
    assert reopened.head == ledger.head and reopened.digests_since(len(ledger) - 3) == recent


def test_start_check_catches_a_tampered_record(tmp_path: Path) -> None:
    path = tmp_path / "ledger.bin"
    build(path).close()
    blob = bytearray(path.read_bytes())
    blob[12] ^= 1  # inside record 0's body
    path.write_bytes(bytes(blob))
    # Damage before the last record is not a torn append: nothing is cut, the start stops.
    with pytest.raises(LedgerError, match="damaged"):
        Ledger(path, SEED_A, ID_A)
    assert path.read_bytes() == bytes(blob)
