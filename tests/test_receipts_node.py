"""Receipts over the in-memory transport: every exchange ends with the same doubly signed receipt
in both ledgers; no receipt, no merge; a peer that rewrote its ledger is caught when it next
gossips."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np

from gossipd.config import AveragingConfig, Config, NetworkConfig, TrainConfig
from gossipd.daemon import Node
from gossipd.ledger import Ledger, verify_file
from gossipd.provenance import Provenance
from gossipd.runner import ModelRunner
from protocol.receipt import ReceiptBody
from tests.fakes import MemoryNetwork
from tests.test_node import FakeTrainer, one_exchange, params


def node(net: MemoryNetwork, name: str, value: float, state: Path | None) -> Node:
    transport = net.transport(name)
    cfg = Config(network=NetworkConfig(listen=("/memory",), dial_timeout_s=1.0),
                 averaging=AveragingConfig(interval_s=3600, timeout_s=2.0),
                 train=TrainConfig(steps_per_second=40, eval_interval_s=1.0))
    runner = ModelRunner(FakeTrainer(value), 40, 1.0, 0.5)  # type: ignore[arg-type]
    prov = None
    if state is not None:
        state.mkdir(exist_ok=True)
        prov = Provenance(Ledger(state / "ledger.bin", transport.seed,
                                 transport.peer_id_bytes(transport.peer_id)))
    return Node(cfg, transport, runner, transport.seed, random.Random(name), provenance=prov)


def receipts(n: Node) -> list[dict[str, bytes]]:
    assert n.provenance is not None
    return [r.data for r in n.provenance.ledger.read() if r.kind == "receipt"]


async def test_both_ledgers_hold_the_same_receipt(tmp_path: Path) -> None:
    net = MemoryNetwork()
    a, b = node(net, "a", 0.0, tmp_path / "a"), node(net, "b", 1.0, tmp_path / "b")
    await one_exchange(net, a, b)
    await one_exchange(net, b, a)
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
    await one_exchange(net, a, b)  # a has now seen b's head after b's first receipt
    rewrite_history(b)
    before = params(a).copy()
    await one_exchange(net, a, b)
    assert "HistoryRewritten" in (a.stats.last_error or "")
    entry = a.peers.get(b.transport.peer_id)
    assert entry is not None and entry.strikes == 1
    np.testing.assert_allclose(params(a), before)  # no merge from a peer caught rewriting
    assert len(receipts(a)) == 2
