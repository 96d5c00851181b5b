"""Receipts over the in-memory transport: every exchange ends with the same doubly signed receipt
in both ledgers; the receipt info rides in the Hellos and one ReceiptSig goes each way after the
parameters; the hashes worked out while the parameters stream are the receipt's; no receipt, no
merge; a peer that rewrote its ledger is caught when it next gossips."""

from __future__ import annotations

import dataclasses
import random
import threading
from pathlib import Path

import msgpack
import numpy as np
import pytest
import trio

from gossipd import exchange, param_hashes
from gossipd.cli import render_provenance
from gossipd.config import AveragingConfig, Config, NetworkConfig, TrainConfig
from gossipd.daemon import Node
from gossipd.ledger import ZERO, Ledger, read_records, verify_file
from gossipd.netapi import TransportError
from gossipd.provenance import Provenance
from gossipd.runner import ModelRunner
from protocol.receipt import ReceiptBody, params_hash
from tests.fakes import MemoryNetwork
from tests.test_node import FakeTrainer, one_exchange, params


def node(net: MemoryNetwork, name: str, value: float, state: Path | None, n: int = 6) -> Node:
    transport = net.transport(name)
    cfg = Config(network=NetworkConfig(listen=("/memory",), dial_timeout_s=1.0),
                 averaging=AveragingConfig(interval_s=3600, timeout_s=2.0, robust="none"),
                 train=TrainConfig(steps_per_second=40, eval_interval_s=1.0))
    runner = ModelRunner(FakeTrainer(value, n=n, spec=f"fake/{n}"),  # type: ignore[arg-type]
                         40, 1.0, 0.5)
    prov = None
    if state is not None:
        state.mkdir(exist_ok=True)
        prov = Provenance(Ledger(state / "ledger.bin", transport.seed,
                                 transport.peer_id_bytes(transport.peer_id)))
    return Node(cfg, transport, runner, transport.seed, random.Random(name), provenance=prov)


def receipts(n: Node) -> list[dict[str, bytes]]:
    assert n.provenance is not None
    return [r.data for r in n.provenance.ledger.read() if r.kind == "receipt"]


async def flush(*nodes: Node) -> None:
    """The ledger writer thread has written (and fsync'd) everything queued."""
    for n in nodes:
        assert n.provenance is not None
        await n.provenance.flush()


async def test_both_ledgers_hold_the_same_receipt(tmp_path: Path) -> None:
    net = MemoryNetwork()
    a, b = node(net, "a", 0.0, tmp_path / "a"), node(net, "b", 1.0, tmp_path / "b")
    await one_exchange(net, a, b)
    await one_exchange(net, b, a)
    await flush(a, b)
    np.testing.assert_allclose(params(a), params(b))
    assert receipts(a) == receipts(b) and len(receipts(a)) == 2
    body = ReceiptBody.from_bytes(receipts(a)[0]["body"])
    assert body.initiator == a.transport.peer_id_bytes(a.transport.peer_id)
    for n in (a, b):
        assert n.provenance is not None
        verify_file(n.provenance.ledger.path)
    assert b.provenance is not None and a.provenance is not None
    lineage = await a.provenance.lineage({})
    assert lineage["receipts"] == 2 and lineage["contributors"][0]["exchanges"] == 2


async def test_a_peer_without_receipts_gets_no_merge(tmp_path: Path) -> None:
    net = MemoryNetwork()
    a, x = node(net, "a", 0.0, tmp_path / "a"), node(net, "x", 1.0, None)
    await one_exchange(net, a, x)
    np.testing.assert_allclose(params(a), 0.0)  # x never signed: its update is not merged
    assert a.stats.failed == 1 and receipts(a) == []


def rewrite_history(n: Node) -> None:
    """Keep only genesis, then append two new records: same length as before, other content."""
    assert n.provenance is not None
    ledger = n.provenance.ledger
    ledger.close()
    raw = ledger.path.read_bytes()
    ledger.path.write_bytes(raw[: 4 + int.from_bytes(raw[:4], "big") + 96])
    peer = n.transport.peer_id_bytes(n.transport.peer_id)
    fresh = Ledger(ledger.path, n.transport.seed, peer)
    for step in (1, 2):
        fresh.append("checkpoint", {"step": step, "params_hash": bytes(32)})
    n.provenance = Provenance(fresh)
    n.model = dataclasses.replace(n.model, provenance=n.provenance)


async def test_a_rewritten_history_is_caught_at_the_next_exchange(tmp_path: Path) -> None:
    net = MemoryNetwork()
    a, b = node(net, "a", 0.0, tmp_path / "a"), node(net, "b", 1.0, tmp_path / "b")
    await one_exchange(net, a, b)
    await flush(b)  # b announces durable heads: let its first receipt reach the disk
    await one_exchange(net, a, b)  # a has now seen b's head after b's first receipt
    rewrite_history(b)
    before = params(a).copy()
    await one_exchange(net, a, b)
    assert "HistoryRewritten" in (a.stats.last_error or "")
    entry = a.peers.get(b.transport.peer_id)
    assert entry is not None and entry.strikes == 1
    np.testing.assert_allclose(params(a), before)  # no merge from a peer caught rewriting
    await flush(a)
    assert len(receipts(a)) == 2


async def test_the_receipt_sig_goes_ahead_of_the_parameters(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each side sends Hello (with its receipt info), one ReceiptSig, then its parameters: the
    signature needs no round of its own."""
    sent: dict[int, list[str]] = {}
    writes: list[list[str]] = []
    original = exchange.MessageStream.send

    async def spy(self: exchange.MessageStream, data: bytes | bytearray) -> None:
        kinds, pos = [], 0
        while pos < len(data):  # a write may carry several frames
            n = int.from_bytes(data[pos : pos + 4], "big")
            kinds.append(msgpack.unpackb(bytes(data[pos + 4 : pos + 4 + n]))["t"])
            pos += 4 + n
        sent.setdefault(id(self), []).extend(kinds)
        writes.append(kinds)
        await original(self, data)

    monkeypatch.setattr(exchange.MessageStream, "send", spy)
    net = MemoryNetwork()
    a, b = node(net, "a", 0.0, tmp_path / "a"), node(net, "b", 1.0, tmp_path / "b")
    await one_exchange(net, a, b)
    await flush(a, b)
    assert a.stats.ok == 1 and b.stats.served_ok == 1 and len(receipts(a)) == 1
    assert sorted(sent.values()) == [["hello", "receipt_sig", "params", "chunk"]] * 2
    assert writes.count(["receipt_sig", "params"]) == 2  # the signature rides in one write


async def test_parameters_other_than_signed_for_are_not_merged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """b's Hello commits to one vector and b sends another: a merges nothing, strikes b, and
    keeps no receipt (the receipt's hash would be false)."""
    original = exchange._prepare

    async def lying(model: exchange.LocalModel, flat: np.ndarray) -> exchange._Outgoing:
        out = await original(model, flat)
        if model.peer_id_bytes == b_id:
            return dataclasses.replace(out, payload=out.payload + 1, flat=out.flat + 1)
        return out

    monkeypatch.setattr(exchange, "_prepare", lying)
    net = MemoryNetwork()
    a, b = node(net, "a", 0.0, tmp_path / "a"), node(net, "b", 1.0, tmp_path / "b")
    b_id = b.transport.peer_id_bytes(b.transport.peer_id)
    await one_exchange(net, a, b)
    await flush(a, b)
    np.testing.assert_allclose(params(a), 0.0)
    assert "ParamsMismatch" in (a.stats.last_error or "")
    entry = a.peers.get(b.transport.peer_id)
    assert entry is not None and entry.strikes == 1
    assert receipts(a) == []


async def test_a_refused_vector_keeps_its_receipt_marked_not_merged(tmp_path: Path) -> None:
    """Both signed a receipt of what was sent; a's robustness check refuses b's vector: a keeps
    the receipt, adds a `refused` record, and lineage does not count b as a contributor."""
    net = MemoryNetwork()
    a, b = node(net, "a", 0.0, tmp_path / "a"), node(net, "b", 1.0, tmp_path / "b")
    a.model = dataclasses.replace(a.model, check_remote=lambda _p, _s, _r: "too far")
    await one_exchange(net, a, b)
    await flush(a, b)
    np.testing.assert_allclose(params(a), 0.0)
    assert a.provenance is not None
    kinds = [r.kind for r in a.provenance.ledger.read() if r.kind != "seal"]
    assert kinds[-2:] == ["receipt", "refused"]
    lineage = await a.provenance.lineage({})
    assert lineage["contributors"] == [] and sum(lineage["not_merged"].values()) == 1
    assert lineage["latest_exchanges"][-1]["merged"] is False
    text = render_provenance(lineage)
    assert "not merged" in text and "since" in text and "0 merged of 1 exchanges" in text
    assert text.splitlines()[-1].endswith("not merged")  # the latest exchange, marked
    verify_file(a.provenance.ledger.path)


@pytest.mark.parametrize("compression", ["none", "bf16"])
async def test_hashes_worked_out_while_streaming_are_the_receipts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compression: str) -> None:
    """With the thresholds lowered, a model of 100k parameters takes the large-model path: our
    hash in a worker thread, the peer's "<f4" data hashed piece by piece as it arrives (bf16:
    hashed whole once decoded). The receipt holds the hashes of what each side sent."""
    monkeypatch.setattr(param_hashes, "HASH_IN_THREAD_BYTES", 1)
    monkeypatch.setattr(param_hashes, "HASH_PIECE_BYTES", 50_000)
    pieces: list[int] = []
    original = param_hashes.ReceivedHash.arrived

    def counting(self: param_hashes.ReceivedHash, session: exchange.AveragingSession) -> None:
        before = self._fed
        original(self, session)
        if self._fed != before:
            pieces.append(self._fed - before)

    monkeypatch.setattr(param_hashes.ReceivedHash, "arrived", counting)
    net = MemoryNetwork()
    n = 100_000
    a, b = node(net, "a", 0.25, tmp_path / "a", n), node(net, "b", 1.5, tmp_path / "b", n)
    if compression != "none":
        a.model = dataclasses.replace(a.model, compression=compression, compress=None)
    await one_exchange(net, a, b)
    await flush(a, b)
    assert a.stats.ok == 1 and b.stats.served_ok == 1
    assert receipts(a) == receipts(b) and len(receipts(a)) == 1
    body = ReceiptBody.from_bytes(receipts(a)[0]["body"])
    sent_a = np.full(n, 0.25, np.float32)
    if compression == "bf16":
        from protocol.quant import decode, encode

        sent_a = decode(encode(sent_a, "bf16"), n, "bf16")
    assert body.initiator_params_hash == params_hash(sent_a)
    assert body.responder_params_hash == params_hash(np.full(n, 1.5, np.float32))
    assert pieces  # a received b's plain "<f4" data in pieces before the last chunk
    np.testing.assert_allclose(params(a), params(b))


async def test_the_ledger_is_fsynced_off_the_exchange_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The exchange's receipt is written on the loop's next turn (a killed process keeps it
    then: reopening the file right away finds it whole) without waiting for the disk; the
    worker thread fsyncs, and only then does the durable head, the one the node announces,
    move."""
    net = MemoryNetwork()
    a, b = node(net, "a", 0.0, tmp_path / "a"), node(net, "b", 1.0, tmp_path / "b")
    assert a.provenance is not None
    gate = threading.Event()
    original = a.provenance.ledger.sync

    def slow() -> tuple[int, bytes]:
        gate.wait(10)
        return original()

    monkeypatch.setattr(a.provenance.ledger, "sync", slow)
    durable = a.provenance.ledger.durable_head
    await one_exchange(net, a, b)  # returns while a's fsync is held at the gate
    assert a.stats.ok == 1 and a.provenance.ledger.durable_head == durable
    assert a.provenance.ledger.head[0] == durable[0] + 1
    for who in (a, b):  # what a kill would leave: every record whole
        assert who.provenance is not None
        path = who.provenance.ledger.path
        records, good = read_records(path)
        assert good == path.stat().st_size
        assert [r.kind for r in records if r.kind != "seal"][-1] == "receipt"
    assert not read_records(a.provenance.ledger.path)[0][-1].signed  # a's seal waits too
    gate.set()
    await flush(a, b)
    assert a.provenance.ledger.durable_head == a.provenance.ledger.head


def fake_receipt(me: bytes, peer: bytes, peer_head: tuple[int, bytes]
                 ) -> tuple[dict[str, bytes], ReceiptBody]:
    body = ReceiptBody(bytes(16), me, peer, 1, 2, 3, bytes(32), bytes(32), "gossip-sgd", "none",
                       1, 1, (0, bytes(32)), peer_head)
    return {"body": body.to_bytes(), "initiator_sig": bytes(64),
            "responder_sig": bytes(64)}, body


async def turns(prov: Provenance, written: int) -> None:
    """Let the event loop take a few turns, until `written` records are written."""
    for _ in range(50):
        if prov.records_written >= written:
            return
        await trio.sleep(0)


async def test_an_exchange_only_queues_its_receipt(tmp_path: Path) -> None:
    """record_receipt_soon writes nothing on the exchange's path: the peer's head is
    remembered at once, the record is written on the loop's next turn after write_soon; a
    write that fails there is counted and the loop goes on. Without an event loop write_soon
    writes at once."""
    net = MemoryNetwork()
    a = node(net, "a", 0.0, tmp_path / "a")
    prov = a.provenance
    assert prov is not None
    me, peer = prov.ledger.peer_id_bytes, b"\x00\x24" + bytes(36)
    receipt, body = fake_receipt(me, peer, (5, b"\x01" * 32))
    before = len(prov.ledger)
    prov.record_receipt_soon(receipt, refused="parameters refused: too far", body=body)
    assert prov.peer_head(peer) == (5, b"\x01" * 32)
    await turns(prov, 2)
    assert len(prov.ledger) == before and prov.records_written == 0  # only queued
    prov.write_soon()  # the exchange's stream is closed
    assert len(prov.ledger) == before  # not yet: at the loop's next turn
    await turns(prov, 2)
    kinds = [r.kind for r in prov.ledger.read()][before:]
    assert kinds[:2] == ["receipt", "refused"] and prov.records_written == 2
    assert prov.write_s > 0
    await prov.flush()  # sealed, then fsync'd: the durable head is the seal
    assert prov.ledger.durable_head == prov.ledger.head
    assert [r.kind for r in prov.ledger.read()][before:] == ["receipt", "refused", "seal"]
    prov.ledger.close()  # the next write fails (EBADF) on the loop's turn: counted, not raised
    prov.record_receipt_soon(receipt, body=body)
    prov.write_soon()
    for _ in range(20):
        await trio.sleep(0)
    assert prov.write_errors == 1 and prov.records_written == 2


def test_without_an_event_loop_a_receipt_is_written_at_once(tmp_path: Path) -> None:
    from tests.test_ledger import ID_A, SEED_A

    prov = Provenance(Ledger(tmp_path / "ledger.bin", SEED_A, ID_A))
    receipt, _ = fake_receipt(prov.ledger.peer_id_bytes, b"\x00\x24" + bytes(36), (0, ZERO))
    prov.record_receipt_soon(receipt)  # parses the body itself
    prov.write_soon()
    assert [r.kind for r in prov.ledger.read()][-1] == "receipt"
    prov.close()
    records = read_records(prov.ledger.path)[0]  # (the fake receipt's signatures are zeros)
    assert [r.kind for r in records][-2:] == ["receipt", "seal"] and records[-1].signed


async def test_the_fsync_thread_groups_and_reports_errors(tmp_path: Path) -> None:
    """Appends get consecutive records, each durable when append returns; a failing write is
    raised to its caller and counted, and the provenance keeps going."""
    net = MemoryNetwork()
    a = node(net, "a", 0.0, tmp_path / "a")
    prov = a.provenance
    assert prov is not None
    first = len(prov.ledger)
    recs = [await prov.append("checkpoint", {"step": i, "params_hash": bytes(32)})
            for i in range(3)]
    assert [r.seq for r in recs] == [first, first + 1, first + 2]
    assert prov.ledger.durable_head == prov.ledger.head
    prov.ledger.close()  # the next write fails: EBADF
    with pytest.raises(OSError):
        await prov.append("checkpoint", {"step": 9, "params_hash": bytes(32)})
    assert prov.write_errors == 1
    await prov.flush()  # nothing new written: returns at once


async def test_a_failed_dial_while_hashing_is_a_plain_transport_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a large model the initiator hashes its vector while the stream opens; a dial that
    fails then surfaces as the plain TransportError (no exception group), nothing is sent."""
    monkeypatch.setattr(param_hashes, "HASH_IN_THREAD_BYTES", 1)
    net = MemoryNetwork()
    a = node(net, "a", 0.0, tmp_path / "a")
    assert exchange._overlap(a.model)
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        with pytest.raises(TransportError):
            await exchange.initiate(a.transport, "nobody", a.model, 2.0, exchange.ByteCounter())
