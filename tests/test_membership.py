"""Membership rules: closed by default, allowlists, secret files, and the node's own checks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import trio

from gossipd.membership import Membership, MembershipError, build
from tests.fakes import MemoryNetwork
from tests.test_node import make_node, one_exchange, params

PEER = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"


def test_closed_swarm_needs_members_or_a_secret() -> None:
    with pytest.raises(MembershipError, match="closed by default"):
        build(False, (), None, None)
    assert build(True, (), None, None).allows("anyone")


def test_allowlist_inline_and_from_file(tmp_path: Path) -> None:
    path = tmp_path / "members"
    path.write_text(f"# lab A\n{PEER}  # gpu box\n\n")
    m = build(False, (), path, None, self_id="me")
    assert m.allows(PEER) and m.allows("me") and not m.allows("12D3KooWother")
    assert m.mode == "closed: allowlist of 1"
    with pytest.raises(MembershipError, match="not a peer ID"):
        build(False, ("bad id",), None, None)


def test_secret_file_rules(tmp_path: Path) -> None:
    path = tmp_path / "swarm.key"
    path.write_bytes(os.urandom(32))
    os.chmod(path, 0o640)
    m = build(False, (), None, path)
    assert m.swarm_key is not None and len(m.swarm_key) == 32
    assert m.allows("anyone")  # secret-only: the exchange handshake checks the key
    os.chmod(path, 0o644)
    with pytest.raises(MembershipError, match="chmod 640"):
        build(False, (), None, path)
    path.write_bytes(b"short")
    os.chmod(path, 0o600)
    with pytest.raises(MembershipError, match="at least 32"):
        build(False, (), None, path)


async def test_node_refuses_streams_from_non_members() -> None:
    net = MemoryNetwork()
    a, b = make_node(net, "a", 0.0), make_node(net, "b", 1.0)
    b.membership = Membership(open=False, members=frozenset({"someone-else"}),
                              self_id=b.transport.peer_id)
    await one_exchange(net, a, b)
    assert a.stats.failed == 1 and b.stats.served_ok == 0
    assert b.membership.refused == 1 and b.membership.refused_peers == {a.transport.peer_id: 1}
    np.testing.assert_allclose(params(b), 1.0)


def test_peer_table_never_admits_non_members() -> None:
    async def body() -> None:
        net = MemoryNetwork()
        a = make_node(net, "a", 0.0)
        a.membership = Membership(open=False, members=frozenset({PEER}))
        a.peers._admit = a.membership.allows
        assert not a.peers.add("12D3KooWstranger", ["/x"], 0.0)
        assert a.peers.add(PEER, ["/x"], 0.0)

    trio.run(body)
