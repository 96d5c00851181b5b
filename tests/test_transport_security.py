"""Real libp2p hosts on loopback: who gets in. Members do; a non-member, a plaintext dialer and an
impersonator (a plaintext peer claiming a member's peer ID with only its public key) are refused
within 2 s and never reach a stream handler."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from multiaddr import Multiaddr

from gossipd.identity import peer_id_for_seed
from gossipd.netapi import Stream, TransportError
from gossipd.transport import Libp2pTransport, open_transport

pytestmark = pytest.mark.integration
PROTO = "/gossipd/test/1.0.0"
LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


class Guard:
    def __init__(self, members: set[str]) -> None:
        self.members = members
        self.refused: list[str] = []
        self.handled: list[str] = []

    def allows(self, peer_id: str) -> bool:
        return peer_id in self.members

    def refuse(self, peer_id: str) -> None:
        self.refused.append(peer_id)


@asynccontextmanager
async def node(seed: bytes, guard: Guard) -> AsyncIterator[Libp2pTransport]:
    async with open_transport(seed, LOOPBACK, guard.allows, guard.refuse) as t:

        async def echo(stream: Stream) -> None:
            guard.handled.append(stream.remote_peer)
            data = await stream.receive_some(100)
            await stream.send_all(data)
            await stream.aclose()

        t.set_handler(PROTO, echo)
        yield t


def addr_of(t: Libp2pTransport) -> list[str]:
    return [a.split("/p2p/")[0] for a in t.listen_addrs()]


async def roundtrip(t: Libp2pTransport, peer_id: str) -> bytes:
    stream = await t.open_stream(peer_id, PROTO)
    await stream.send_all(b"ping")
    data = await stream.receive_some(100)
    await stream.aclose()
    return data


async def test_members_talk_and_a_non_member_is_refused_both_ways() -> None:
    seeds = [os.urandom(32) for _ in range(3)]
    a_id, b_id, x_id = (peer_id_for_seed(s) for s in seeds)
    ga, gb, gx = Guard({a_id, b_id}), Guard({a_id, b_id}), Guard({a_id, b_id, x_id})
    async with node(seeds[0], ga) as a, node(seeds[1], gb) as b, node(seeds[2], gx) as x:
        with trio.fail_after(10):
            await b.connect(a_id, addr_of(a))
            assert await roundtrip(b, a_id) == b"ping"
        # x thinks it is a member; a does not.
        t0 = trio.current_time()
        with trio.fail_after(10), pytest.raises(TransportError):
            await x.connect(a_id, addr_of(a))
            await roundtrip(x, a_id)
        assert trio.current_time() - t0 < 2.0
        with trio.fail_after(5):
            while x_id not in ga.refused:
                await trio.sleep(0.01)
        # and a member never dials a non-member either (outbound gate)
        with trio.fail_after(10), pytest.raises(TransportError):
            await a.connect(x_id, addr_of(x))
            await roundtrip(a, x_id)
    assert ga.handled == [b_id]
    assert x_id in ga.refused


async def plaintext_dial(key_pair: KeyPair, target: str, addrs: list[str]) -> None:
    host = new_host(key_pair=key_pair, sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(key_pair)})
    try:
        async with host.run(listen_addrs=[Multiaddr(LOOPBACK[0])]):
            await host.connect(PeerInfo(ID.from_base58(target), [Multiaddr(a) for a in addrs]))
            stream = await host.new_stream(ID.from_base58(target), [PROTO])
            await stream.write(b"ping")
            await stream.read(100)
    finally:
        with trio.CancelScope(shield=True):
            await host.close()


def own_keys() -> KeyPair:
    sk = Ed25519PrivateKey.from_bytes(os.urandom(32))
    return KeyPair(sk, sk.get_public_key())


def impersonating_keys(victim_seed: bytes) -> KeyPair:
    # Knows only the victim's public key (it is inside the victim's peer ID).
    victim_public = Ed25519PrivateKey.from_bytes(victim_seed).get_public_key()
    return KeyPair(Ed25519PrivateKey.from_bytes(os.urandom(32)), victim_public)


@pytest.mark.parametrize("attacker", [own_keys, "impersonator"])
async def test_plaintext_dialers_are_refused(attacker: Callable[[], KeyPair] | str) -> None:
    seeds = [os.urandom(32), os.urandom(32)]
    a_id, victim_id = peer_id_for_seed(seeds[0]), peer_id_for_seed(seeds[1])
    ga = Guard({a_id, victim_id})
    keys = impersonating_keys(seeds[1]) if attacker == "impersonator" else own_keys()
    if attacker != "impersonator":
        ga.members.add(ID.from_pubkey(keys.public_key).to_base58())  # even a listed ID
    async with node(seeds[0], ga) as a:
        t0 = trio.current_time()
        with trio.fail_after(10), pytest.raises(Exception) as info:
            await plaintext_dial(keys, a_id, addr_of(a))
        assert not isinstance(info.value, trio.TooSlowError)
        assert trio.current_time() - t0 < 2.0
    assert ga.handled == []
