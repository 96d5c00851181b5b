"""Peer exchange over /gossipd/peers/1.0.0: how nodes learn of each other beyond the bootstrap.

A node sends PeersRequest(its own listen addresses); the other side remembers the requester and
answers with PeersResponse(peers it knows). Every discovery interval a node asks the bootstrap
peers and a few random known peers, so N nodes given one bootstrap address all know each other
after a couple of rounds.

Rules:
- Every request has a deadline; a failed ask backs the peer off in the table and is not an error.
  Malformed input (a ProtocolError) is also a strike against the peer that sent it.
- Records from others are validated (peer ID shape, /p2p/ suffix matches) and capped before
  entering the table; a malformed record is dropped, not trusted.
- The requester's identity is the stream's authenticated peer ID, never a claim in the payload.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from gossipd.netapi import MessageStream, Stream, Transport, TransportError
from gossipd.peers import PeerTable, split_p2p_addr
from protocol.errors import ProtocolError
from protocol.messages import (
    PEERS_PROTOCOL_ID,
    PeerRecord,
    PeersRequest,
    PeersResponse,
    encode_message,
)

log = logging.getLogger("gossipd.discovery")

MAX_RECORDS = 64
ASK_PER_ROUND = 3


@dataclass
class DiscoveryStats:
    asks_ok: int = 0
    asks_failed: int = 0
    served: int = 0
    rejected: int = 0


def _own_addrs(transport: Transport) -> list[str]:
    return transport.listen_addrs()[:8]


def _learn(table: PeerTable, peer_id: str, addrs: list[str], now: float) -> bool:
    """Add addresses that really belong to `peer_id` (matching /p2p/ suffix, or none)."""
    clean: list[str] = []
    for addr in addrs:
        if "/p2p/" in addr:
            try:
                base, claimed = split_p2p_addr(addr)
            except ValueError:
                continue
            if claimed != peer_id:
                continue
            clean.append(base)
        else:
            clean.append(addr)
    return table.add(peer_id, clean, now) if clean else False


async def serve(
    transport: Transport,
    stream: Stream,
    table: PeerTable,
    stats: DiscoveryStats,
    clock: Callable[[], float],
    timeout: float,
) -> None:
    ms = MessageStream(stream, max_frame=256 * 1024)
    try:
        with trio.fail_after(timeout):
            request = await ms.receive()
            if not isinstance(request, PeersRequest):
                raise ProtocolError(f"expected PeersRequest, got {type(request).__name__}")
            _learn(table, stream.remote_peer, list(request.addrs), clock())
            records = [
                PeerRecord(peer_id=pid, addrs=addrs)
                for pid, addrs in table.records(exclude=stream.remote_peer, limit=MAX_RECORDS)
            ]
            await ms.send(encode_message(PeersResponse(peers=records)))
            stats.served += 1
    except (ProtocolError, TransportError, trio.TooSlowError) as exc:
        stats.rejected += 1
        if isinstance(exc, ProtocolError):
            table.strike(stream.remote_peer)
        log.debug("peer exchange from %s failed: %s", stream.remote_peer, exc)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await stream.aclose()


async def ask(
    transport: Transport, peer_id: str, table: PeerTable, clock: Callable[[], float],
    timeout: float,
) -> int:
    """Ask one peer for its peers; returns how many were new. Raises on failure."""
    with trio.fail_after(timeout):
        entry = table.get(peer_id)
        if entry is not None and not transport.is_connected(peer_id):
            await transport.connect(peer_id, entry.addrs)
        stream = await transport.open_stream(peer_id, PEERS_PROTOCOL_ID)
        ms = MessageStream(stream, max_frame=256 * 1024)
        try:
            await ms.send(encode_message(PeersRequest(addrs=_own_addrs(transport))))
            reply = await ms.receive()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()
    if not isinstance(reply, PeersResponse):
        raise ProtocolError(f"expected PeersResponse, got {type(reply).__name__}")
    now = clock()
    table.record_ok(peer_id, now)
    new = 0
    for record in reply.peers[:MAX_RECORDS]:
        if record.peer_id == transport.peer_id:
            continue
        new += _learn(table, record.peer_id, list(record.addrs), now)
    return new


async def discovery_round(
    transport: Transport,
    table: PeerTable,
    bootstrap: tuple[str, ...],
    stats: DiscoveryStats,
    clock: Callable[[], float],
    timeout: float,
) -> None:
    """One round: make sure bootstrap peers are in the table, then ask a few peers."""
    now = clock()
    targets: list[str] = []
    for addr in bootstrap:
        base, peer_id = split_p2p_addr(addr)
        if peer_id == transport.peer_id:
            continue
        table.add(peer_id, [base], now)
        entry = table.get(peer_id)
        if entry is not None and entry.available(now) and peer_id not in targets:
            targets.append(peer_id)
    for peer_id in table.sample(ASK_PER_ROUND, now):
        if peer_id not in targets:
            targets.append(peer_id)

    async def ask_one(peer_id: str) -> None:
        try:
            new = await ask(transport, peer_id, table, clock, timeout)
        except (ProtocolError, TransportError, trio.TooSlowError) as exc:
            stats.asks_failed += 1
            table.record_failure(peer_id, clock())
            if isinstance(exc, ProtocolError):
                table.strike(peer_id)
            log.debug("peer exchange with %s failed: %s", peer_id, exc)
        else:
            stats.asks_ok += 1
            if new:
                log.info("learned %d new peer(s) from %s", new, peer_id)

    async with trio.open_nursery() as nursery:
        for peer_id in targets:
            nursery.start_soon(ask_one, peer_id)

