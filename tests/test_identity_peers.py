"""Identity key file rules and the peer table's bookkeeping."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import pytest

from gossipd.identity import KEY_FILE_NAME, IdentityError, load_or_create_seed
from gossipd.peers import BACKOFF_MAX_S, MAX_ADDRS_PER_PEER, PeerTable, split_p2p_addr


def test_identity_is_created_0600_and_stable(tmp_path: Path) -> None:
    seed = load_or_create_seed(tmp_path / "state")
    path = tmp_path / "state" / KEY_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(seed) == 32
    assert load_or_create_seed(tmp_path / "state") == seed


def test_identity_readable_by_others_is_refused_with_the_fix(tmp_path: Path) -> None:
    load_or_create_seed(tmp_path)
    os.chmod(tmp_path / KEY_FILE_NAME, 0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        load_or_create_seed(tmp_path)


def test_identity_of_wrong_length_is_refused(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE_NAME
    path.write_bytes(b"short")
    os.chmod(path, 0o600)
    with pytest.raises(IdentityError, match="holds 5 bytes"):
        load_or_create_seed(tmp_path)


def test_split_p2p_addr() -> None:
    assert split_p2p_addr("/ip4/1.2.3.4/tcp/5/p2p/12D3abc") == ("/ip4/1.2.3.4/tcp/5", "12D3abc")
    for bad in ("/ip4/1.2.3.4/tcp/5", "/p2p/abc", "/ip4/1.2.3.4/tcp/5/p2p/"):
        with pytest.raises(ValueError):
            split_p2p_addr(bad)


def test_table_ignores_self_caps_peers_and_addresses() -> None:
    table = PeerTable("me", max_peers=2, rng=random.Random(0))
    assert not table.add("me", ["/a"], 0.0)
    assert table.add("p1", ["/a"], 0.0) and not table.add("p1", ["/a"], 1.0)
    assert table.add("p2", [], 0.0)
    assert not table.add("p3", ["/c"], 0.0)  # over max_peers
    table.add("p1", [f"/x/{i}" for i in range(20)], 2.0)
    entry = table.get("p1")
    assert entry is not None and len(entry.addrs) == MAX_ADDRS_PER_PEER
    assert entry.addrs[-1] == "/x/19"


def test_failures_back_off_exponentially_and_success_clears() -> None:
    table = PeerTable("me", 10, random.Random(0))
    table.add("p", ["/a"], 0.0)
    waits = []
    for _ in range(8):
        table.record_failure("p", 100.0)
        entry = table.get("p")
        assert entry is not None
        waits.append(entry.retry_at - 100.0)
    assert waits[:4] == [1.0, 2.0, 4.0, 8.0] and waits[-1] == BACKOFF_MAX_S
    assert table.pick(101.0) is None
    table.record_exchange("p", True, 200.0)
    assert table.pick(200.0) == "p"


def test_pick_is_uniform_over_live_peers() -> None:
    table = PeerTable("me", 10, random.Random(1))
    for p in ("a", "b", "c"):
        table.add(p, ["/x"], 0.0)
    table.record_failure("c", 0.0)
    picks = [table.pick(0.5) for _ in range(300)]
    assert set(picks) == {"a", "b"}
    assert 100 < picks.count("a") < 200


def test_records_skip_the_asker_and_addressless_peers() -> None:
    table = PeerTable("me", 10, random.Random(0))
    table.add("a", ["/x"], 0.0)
    table.add("b", [], 0.0)
    table.add("c", ["/y"], 0.0)
    assert [pid for pid, _ in table.records(exclude="a", limit=10)] == ["c"]


def test_peer_id_for_seed_matches_libp2p(tmp_path: Path) -> None:
    from libp2p.crypto.ed25519 import Ed25519PrivateKey
    from libp2p.peer.id import ID

    from gossipd.identity import base58, peer_id_for_seed

    seed = load_or_create_seed(tmp_path)
    key = Ed25519PrivateKey.from_bytes(seed)
    assert peer_id_for_seed(seed) == ID.from_pubkey(key.get_public_key()).to_base58()
    assert base58(b"\0\0\x01") == "112"
