"""The receipt of an exchange: announced in the Hellos, signed after both parameter streams,
before any merge.

    both -> Hello{..., receipt: ReceiptInfo{samples, head_seq, head_hash, seen_seq}}
    ... both parameter streams ...
    both -> ReceiptSig{sig over the receipt, digests of our records after seen_seq}

Rules:
- Everything in ReceiptInfo is known before the exchange starts (`announce`), so it rides in
  the Hello and the round after the parameters is a single message each way: as soon as a side
  has the peer's parameters it hashes, builds the receipt bytes (protocol/receipt.py), signs and
  sends its ReceiptSig, then reads the peer's. The messages are small (the digests at most
  128 KiB), so each side writes before it reads. A peer's parameters are merged only once its
  signature verifies: a peer that refuses to sign gets no merge.
- History check: we remember the newest ledger head each peer showed us (from our own
  receipts; concurrent exchanges may record them out of order, so only a newer seq replaces).
  The head we checked against is the one we named (seen_seq) in our Hello, kept in the
  `Announcement`, since another exchange may remember a newer one meanwhile. The peer's
  digests must fold from that head onto the head it announces now; a peer whose new head is
  behind the old one, or does not extend it, rewrote its history: HistoryRewritten, a strike,
  no merge. A gap of more than KEEP_DIGESTS records cannot be proven in one message; it is
  logged as unchecked (so a peer could hide a rewrite behind such a jump: PROTOCOL.md 4.7).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from gossipd.ledger import KEEP_DIGESTS, fold
from gossipd.netapi import MessageStream
from gossipd.provenance import Provenance
from protocol.crypto import ed25519_public_key_from_peer_id, verify
from protocol.errors import AuthenticationError, HistoryRewritten, UnexpectedMessage
from protocol.messages import ErrorMsg, ReceiptInfo, ReceiptSig, encode_message
from protocol.receipt import ReceiptBody, receipt_digest, sign_receipt

log = logging.getLogger("gossipd.receipts")

ALGORITHM = "gossip-sgd"
COMPRESSION = "none"


@dataclass(frozen=True)
class ExchangeFacts:
    """What both sides of one exchange agree on once parameters are swapped."""

    initiator: bool
    exchange_id: bytes
    local_peer: bytes
    remote_peer: bytes
    time_ms: int  # the initiator's Hello time
    local_step: int
    remote_step: int
    sent_hash: bytes
    received_hash: bytes


@dataclass(frozen=True)
class Announcement:
    """Our side of a receipt, fixed before the Hello: what the Hello carries, and the peer's
    head (seq, hash) that its seen_seq names (None: never saw it)."""

    info: ReceiptInfo
    seen: tuple[int, bytes] | None


def announce(provenance: Provenance, remote_peer: bytes, samples: int) -> Announcement:
    """Our ReceiptInfo for an exchange with `remote_peer`, taken before our Hello."""
    seen = provenance.peer_head(remote_peer)
    seq, head = provenance.ledger.head
    return Announcement(ReceiptInfo(samples=samples, head_seq=seq, head_hash=head,
                                    seen_seq=-1 if seen is None else seen[0]), seen)


def receipt_body(facts: ExchangeFacts, mine: ReceiptInfo, theirs: ReceiptInfo) -> bytes:
    """The canonical receipt bytes both sides build from the facts and the two ReceiptInfos."""
    ini, res = (mine, theirs) if facts.initiator else (theirs, mine)
    ids = (facts.local_peer, facts.remote_peer) if facts.initiator \
        else (facts.remote_peer, facts.local_peer)
    steps = (facts.local_step, facts.remote_step) if facts.initiator \
        else (facts.remote_step, facts.local_step)
    hashes = (facts.sent_hash, facts.received_hash) if facts.initiator \
        else (facts.received_hash, facts.sent_hash)
    return ReceiptBody(facts.exchange_id, ids[0], ids[1], facts.time_ms, steps[0], steps[1],
                       hashes[0], hashes[1], ALGORITHM, COMPRESSION, ini.samples, res.samples,
                       (ini.head_seq, ini.head_hash), (res.head_seq, res.head_hash)).to_bytes()


async def swap_signatures(ms: MessageStream, facts: ExchangeFacts, seed: bytes,
                          provenance: Provenance, mine: Announcement, theirs: ReceiptInfo
                          ) -> dict[str, bytes]:
    """The receipt round after the parameters: send our ReceiptSig, read the peer's, check it;
    return the doubly signed receipt (not yet in the ledger)."""
    body = receipt_body(facts, mine.info, theirs)
    # Only up to the head we announced: other exchanges may have appended since. None: the
    # peer last saw us more than KEEP_DIGESTS records ago; it gets none and cannot check.
    digests = provenance.ledger.digests_since(theirs.seen_seq, upto=mine.info.head_seq) or []
    my_sig = sign_receipt(seed, body)
    await ms.send(encode_message(ReceiptSig(sig=my_sig, digests=digests)))
    reply = await ms.receive()
    if isinstance(reply, ErrorMsg):
        from gossipd.exchange import PeerRefused

        raise PeerRefused(reply.code, reply.message)
    if not isinstance(reply, ReceiptSig):
        raise UnexpectedMessage(f"expected ReceiptSig, got {type(reply).__name__}")
    try:
        verify(ed25519_public_key_from_peer_id(facts.remote_peer), receipt_digest(body), reply.sig)
    except AuthenticationError:
        raise HistoryRewritten("the peer's receipt signature does not verify") from None
    check_history(facts.remote_peer, mine.seen, theirs, reply.digests)
    sigs = (my_sig, reply.sig) if facts.initiator else (reply.sig, my_sig)
    return {"body": body, "initiator_sig": sigs[0], "responder_sig": sigs[1]}


def check_history(peer: bytes, seen: tuple[int, bytes] | None, theirs: ReceiptInfo,
                  digests: Sequence[bytes]) -> None:
    """HistoryRewritten unless the peer's announced head extends the head we saw before."""
    if seen is None:
        return
    old_seq, old_head = seen
    grown = theirs.head_seq - old_seq
    if grown > KEEP_DIGESTS and not digests:
        # Too far apart to prove in one message: not evidence of a rewrite, and said so.
        log.warning("cannot check the ledger of %s: it grew by %d records since we last "
                    "saw it (more than %d)", peer.hex()[-12:], grown, KEEP_DIGESTS)
    elif grown < 0 or len(digests) != grown or fold(old_head, list(digests)) != theirs.head_hash:
        raise HistoryRewritten(
            f"peer's ledger head {theirs.head_seq} does not extend the head {old_seq} it "
            "showed before: its history was rewritten")
