"""Several ledgers audited together (gossipd/audit.py, `gossipctl provenance verify A B ...`):
receipts identical on both sides, a history rewritten or cut after its head was shown is caught
offline, one-sided receipts are reported, and lineage follows chains of merged exchanges."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gossipd import cli
from gossipd.audit import audit
from gossipd.identity import base58
from gossipd.ledger import Ledger, encode_record, iter_records, read_records, verify_file
from protocol.receipt import ReceiptBody, params_hash, sign_receipt
from tests.test_ledger import ID_A, ID_B, ID_X, SEED_A, SEED_B, SEED_X

T0 = 1_700_000_000_000  # before any ledger's genesis (written now)
SEEDS = {ID_A: SEED_A, ID_B: SEED_B, ID_X: SEED_X}


def open_all(tmp: Path) -> dict[bytes, Ledger]:
    return {pid: Ledger(tmp / f"{name}.bin", SEEDS[pid], pid)
            for pid, name in ((ID_A, "a"), (ID_B, "b"), (ID_X, "x"))}


def exchange(ledgers: dict[bytes, Ledger], n: int, a: bytes, b: bytes, t: int,
             refused_by: bytes | None = None, only: bytes | None = None) -> None:
    """One exchange between a and b at time t, its receipt in both ledgers (or `only` one),
    heads as each showed them (durable heads)."""
    la, lb = ledgers[a], ledgers[b]
    body = ReceiptBody(n.to_bytes(16, "big"), a, b, t, n, n, params_hash(np.zeros(2, np.float32)),
                       params_hash(np.ones(2, np.float32)), "gossip", "none", 8, 8,
                       la.durable_head, lb.durable_head).to_bytes()
    receipt = {"body": body, "initiator_sig": sign_receipt(SEEDS[a], body),
               "responder_sig": sign_receipt(SEEDS[b], body)}
    for who, led in ((a, la), (b, lb)):
        if only is None or who == only:
            led.append("receipt", receipt, time_ms=t + 5)
            if refused_by == who:
                led.append("refused", {"exchange_id": n.to_bytes(16, "big"), "reason": "far"},
                           time_ms=t + 6)


def run_audit(tmp: Path, *names: str) -> dict[str, object]:
    return audit([(n, verify_file(tmp / f"{n}.bin")) for n in names])


def test_matching_ledgers_pass_and_lineage_follows_time(tmp_path: Path) -> None:
    led = open_all(tmp_path)
    led[ID_A].append("data", {"dataset_hash": b"\x11" * 32, "samples": 5, "task": {}})
    exchange(led, 1, ID_A, ID_B, T0)
    exchange(led, 2, ID_B, ID_X, T0 + 1000)  # x hears of a through b
    exchange(led, 3, ID_A, ID_B, T0 + 2000)
    for lg in led.values():
        lg.close()
    r = run_audit(tmp_path, "a", "b", "x")
    assert r["ok"] and r["receipts_matched"] == 3 and not r["receipts_one_sided"]
    assert r["heads_checked"] == 6  # distinct heads shown: two in each exchange
    lineage = {k: {x["peer"]: (x["hops"], x["merged"]) for x in v}
               for k, v in r["lineage"].items()}  # type: ignore[attr-defined]
    assert lineage["x"] == {"b": (1, 1), "a": (2, 0)}
    assert lineage["a"] == {"b": (1, 2), "x": (2, 0)}  # x reached a via b at the third
    assert lineage["b"] == {"a": (1, 2), "x": (1, 1)}
    assert r["owners"] == {"a": base58(ID_A), "b": base58(ID_B), "x": base58(ID_X)}
    # x's model is tied to a's data set, which reached it through b
    via_b = {x["peer"]: x for x in r["lineage"]["x"]}["a"]  # type: ignore[index]
    assert [d["dataset_hash"] for d in via_b["datasets"]] == ["11" * 32]
    assert r["datasets"]["a"][0]["samples"] == 5 and r["datasets"]["x"] == []  # type: ignore[index]


def test_a_refused_vector_does_not_carry_lineage(tmp_path: Path) -> None:
    led = open_all(tmp_path)
    exchange(led, 1, ID_A, ID_B, T0)
    exchange(led, 2, ID_B, ID_X, T0 + 1000, refused_by=ID_X)  # x did not merge b's vector
    for lg in led.values():
        lg.close()
    r = run_audit(tmp_path, "a", "b", "x")
    assert r["ok"] and r["lineage"]["x"] == []  # type: ignore[index]
    assert [x["peer"] for x in r["lineage"]["b"]] == ["a", "x"]  # type: ignore[index]


def test_a_history_rewritten_or_cut_after_its_head_was_shown_is_caught(tmp_path: Path) -> None:
    led = open_all(tmp_path)
    led[ID_B].append("checkpoint", {"params_hash": bytes(32), "step": 1}, time_ms=T0 - 10)
    exchange(led, 1, ID_A, ID_B, T0)  # b shows its head: the checkpoint at seq 1
    for lg in led.values():
        lg.close()
    assert run_audit(tmp_path, "a", "b")["ok"]
    good = (tmp_path / "b.bin").read_bytes()
    recs = [good[o:e] for o, e, _r in iter_records(good)]
    # rewritten: b re-signs a different record 1 and everything after it
    genesis = read_records(tmp_path / "b.bin")[0][0]
    raw, rec = encode_record(SEED_B, 1, genesis.hash, "checkpoint", T0 - 10,
                             {"params_hash": b"\x09" * 32, "step": 1})
    later = read_records(tmp_path / "b.bin")[0][2:]
    out, prev = [recs[0], raw], rec.hash
    for r in later:
        raw, rec = encode_record(SEED_B, r.seq, prev, r.kind, r.time_ms, r.data)
        out.append(raw)
        prev = rec.hash
    (tmp_path / "b.bin").write_bytes(b"".join(out))
    r = run_audit(tmp_path, "a", "b")  # b's ledger verifies on its own: only a's receipt shows
    assert not r["ok"] and "rewritten" in r["histories_rewritten"][0]["problem"]  # type: ignore[index]
    # cut: b keeps only its genesis, written after the exchange it showed record 1 in
    (tmp_path / "b.bin").write_bytes(recs[0])
    r = run_audit(tmp_path, "a", "b")
    assert not r["ok"] and "cut" in r["histories_rewritten"][0]["problem"]  # type: ignore[index]
    # a ledger exported before the exchange: nothing to hold it to
    early, _ = encode_record(SEED_B, 0, bytes(32), "genesis", T0 - 100, {"peer_id": ID_B})
    (tmp_path / "b.bin").write_bytes(early)
    r = run_audit(tmp_path, "a", "b")
    assert r["ok"] and r["receipts_not_covered"] == 1


def test_one_sided_and_differing_receipts(tmp_path: Path) -> None:
    led = open_all(tmp_path)
    exchange(led, 1, ID_A, ID_B, T0, only=ID_A)  # b crashed before writing its receipt
    exchange(led, 2, ID_A, ID_B, T0 + 1000)
    for lg in led.values():
        lg.close()
    r = run_audit(tmp_path, "a", "b")
    assert r["ok"] and r["receipts_matched"] == 1
    assert r["receipts_one_sided"] == [{"exchange_id": (1).to_bytes(16, "big").hex(),
                                        "on": "a", "missing_on": "b"}]
    # both signed two different bodies under one exchange ID: the copies differ
    led = {pid: Ledger(tmp_path / f"{n}2.bin", SEEDS[pid], pid)
           for pid, n in ((ID_A, "a"), (ID_B, "b"))}
    exchange(led, 7, ID_A, ID_B, T0, only=ID_A)
    exchange(led, 7, ID_A, ID_B, T0 + 1, only=ID_B)
    for lg in led.values():
        lg.close()
    r = run_audit(tmp_path, "a2", "b2")
    assert not r["ok"] and r["receipts_differ"][0]["ledgers"] == ["a2", "b2"]  # type: ignore[index]


def test_gossipctl_verify_several(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    led = open_all(tmp_path)
    led[ID_B].append("data", {"dataset_hash": b"\x22" * 32, "samples": 7, "task": {}})
    exchange(led, 1, ID_A, ID_B, T0)
    for lg in led.values():
        lg.close()
    a, b, x = (str(tmp_path / f"{n}.bin") for n in "abx")
    assert cli.main(["provenance", "verify", a, b, x]) == 0
    text = capsys.readouterr().out
    assert "1 on both sides, identically signed" in text and text.endswith("audit passed\n")
    assert f"{b:<20} first" in text and "directly, 1 vectors merged" in text
    assert "merged; data 2222222222222222 (7 samples)" in text
    assert cli.main(["provenance", "verify", a, b, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["receipts_matched"] == 1
    assert cli.main(["provenance", "verify", a, a]) == 2  # the same node twice
    assert "same node" in capsys.readouterr().err
    Path(x).write_bytes(Path(x).read_bytes()[:-3])
    assert cli.main(["provenance", "verify", a, b, x]) == 1
    out = capsys.readouterr().out
    assert f"FAILED     {x}" in out and out.endswith("audit FAILED\n")
    with pytest.raises(SystemExit):
        cli.main(["provenance", "export", a, b])
