"""The ledger's index (gossipd/ledger_index.py): a start reads only the records after the point
where the last start or clean stop left the ledger, and learns exactly what a whole read would
(head, peers' heads, last record of each kind, newest digests); an index that does not match
the file, or is damaged, only means the whole file is read."""

from __future__ import annotations

from pathlib import Path

from gossipd.ledger import Ledger
from gossipd.ledger_index import index_path, read_index
from gossipd.provenance import Provenance
from tests.ledger_writer import ID_A, ID_B, SEED_A, receipt
from tests.test_ledger import ID_X, SEED_X


def fill(prov: Provenance, first: int, n: int) -> None:
    """n receipts as exchanges leave them (queued, written; the peer's head remembered), then
    a checkpoint."""
    for k in range(first, first + n):
        data, body = receipt(k, prov.ledger.head)
        prov.record_receipt_soon(data, body=body)
        prov.write_soon()  # (no event loop: written at once)
    prov.ledger.append("checkpoint", {"params_hash": bytes(32), "step": first + n})


def append_killed(ledger: Ledger, first: int, n: int) -> None:
    """Records a node wrote before it was killed (no thread of its left behind)."""
    for k in range(first, first + n):
        ledger.append("receipt", receipt(k, ledger.head)[0], fsync=False, sign=False)


def whole_read(path: Path) -> Provenance:
    """What a start without an index learns (the index moved away and back)."""
    idx = index_path(path)
    saved = idx.read_bytes()
    idx.unlink()
    try:
        prov = Provenance(Ledger(path, SEED_A, ID_A))
        assert not prov.ledger.resumed
        return prov
    finally:
        idx.write_bytes(saved)


def same(a: Provenance, b: Provenance) -> None:
    assert a.ledger.head == b.ledger.head and a.ledger.durable_head == b.ledger.durable_head
    assert a.peer_head(ID_B) == b.peer_head(ID_B)
    assert {k: r.hash for k, r in a.ledger.last_of_kind.items()} == \
        {k: r.hash for k, r in b.ledger.last_of_kind.items()}
    assert a.ledger.digests_since(0) == b.ledger.digests_since(0)
    assert a.ledger.size_bytes == b.ledger.size_bytes


def test_a_start_reads_only_what_came_after_the_index(tmp_path: Path) -> None:
    path = tmp_path / "ledger.bin"
    prov = Provenance.open(path, SEED_A, ID_A)
    assert read_index(path) is not None  # written at the start already
    fill(prov, 0, 30)
    prov.close()  # a clean stop: the index is at the end
    again = Provenance.open(path, SEED_A, ID_A)
    assert again.ledger.resumed and again.ledger.checked_at_open == 0
    assert again.peer_head(ID_B) == (29, b"\x22" * 32)
    same(again, whole_read(path))
    # killed after more records: the next start reads only those (and seals them)
    append_killed(again.ledger, 90, 13)
    third = Provenance.open(path, SEED_A, ID_A)  # (`again` is never closed: a kill)
    assert third.ledger.resumed and third.ledger.checked_at_open == 13
    assert third.ledger.sealed_at_open == 13
    assert third.peer_head(ID_B) == (102, b"\x22" * 32)  # from a record read after the index
    same(third, whole_read(path))
    third.close()


def test_an_index_that_does_not_match_means_a_whole_read(tmp_path: Path) -> None:
    path = tmp_path / "ledger.bin"
    prov = Provenance.open(path, SEED_A, ID_A)
    fill(prov, 0, 10)
    prov.close()
    idx = index_path(path).read_bytes()
    # the ledger cut below the index's point (restored from an older copy)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    cut = Provenance.open(path, SEED_A, ID_A)
    assert not cut.ledger.resumed and len(cut.ledger) < 10
    cut.close()
    # an index of another node's ledger
    (tmp_path / "x").mkdir()
    Provenance.open(tmp_path / "x" / "ledger.bin", SEED_X, ID_X).close()
    path.write_bytes(whole)
    index_path(path).write_bytes(index_path(tmp_path / "x" / "ledger.bin").read_bytes())
    mixed = Provenance.open(path, SEED_A, ID_A)
    assert not mixed.ledger.resumed and mixed.peer_head(ID_B) == (9, b"\x22" * 32)
    mixed.close()
    # damaged or foreign bytes
    for junk in (b"", b"\xc1garbage", idx[:-7], b"\x81\xa1v\x02"):
        index_path(path).write_bytes(junk)
        assert read_index(path) is None
        prov = Provenance.open(path, SEED_A, ID_A)
        assert not prov.ledger.resumed and prov.peer_head(ID_B) == (9, b"\x22" * 32)
        prov.close()
    assert read_index(path) is not None  # rewritten by the start
