"""The receipt round of an exchange: after both parameter streams, before any merge.

    both -> ReceiptInfo{samples, head_seq, head_hash, seen_seq}
    both -> ReceiptSig{sig over the receipt, digests of our records after seen_seq}

Rules:
- Each side builds the same receipt bytes (protocol/receipt.py) from what it sent, what it
  received and the peer's ReceiptInfo, signs it and sends the signature. A peer's parameters are
  merged only once its signature verifies: a peer that refuses to sign gets no merge.
- History check: we remember the newest ledger head each peer showed us (from our own
  receipts; concurrent exchanges may record them out of order, so only a newer seq replaces).
  The peer's digests must fold from that head onto the head it announces now; a peer whose new
  head is behind the old one, or does not extend it, rewrote its history: HistoryRewritten, a
  strike, no merge. A gap of more than KEEP_DIGESTS records cannot be proven in one message; it
  is logged as unchecked (so a peer could hide a rewrite behind such a jump: PROTOCOL.md 4.7).
- Messages here are small (the digests at most 128 KiB), so each side may write before it reads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gossipd.ledger import KEEP_DIGESTS, fold
from gossipd.netapi import MessageStream
from gossipd.provenance import Provenance
from protocol.crypto import ed25519_public_key_from_peer_id, verify
from protocol.errors import AuthenticationError, HistoryRewritten, UnexpectedMessage
from protocol.messages import ErrorMsg, Message, ReceiptInfo, ReceiptSig, encode_message
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


async def _receive(ms: MessageStream, kind: type) -> Message:
    msg = await ms.receive()
    if isinstance(msg, ErrorMsg):
        from gossipd.exchange import PeerRefused

        raise PeerRefused(msg.code, msg.message)
    if not isinstance(msg, kind):
        raise UnexpectedMessage(f"expected {kind.__name__}, got {type(msg).__name__}")
    return msg


async def swap_receipts(ms: MessageStream, facts: ExchangeFacts, seed: bytes,
                        provenance: Provenance, samples: int) -> dict[str, bytes]:
    """Run the receipt round; return the doubly signed receipt (not yet in the ledger)."""
    ledger = provenance.ledger
    seen = provenance.peer_head(facts.remote_peer)
    seq, head = ledger.head
    await ms.send(encode_message(ReceiptInfo(samples=samples, head_seq=seq, head_hash=head,
                                             seen_seq=-1 if seen is None else seen[0])))
    theirs = await _receive(ms, ReceiptInfo)
    assert isinstance(theirs, ReceiptInfo)
    mine = (samples, (seq, head))
    other = (theirs.samples, (theirs.head_seq, theirs.head_hash))
    first, second = (mine, other) if facts.initiator else (other, mine)
    ids = (facts.local_peer, facts.remote_peer) if facts.initiator \
        else (facts.remote_peer, facts.local_peer)
    steps = (facts.local_step, facts.remote_step) if facts.initiator \
        else (facts.remote_step, facts.local_step)
    hashes = (facts.sent_hash, facts.received_hash) if facts.initiator \
        else (facts.received_hash, facts.sent_hash)
    body = ReceiptBody(facts.exchange_id, ids[0], ids[1], facts.time_ms, steps[0], steps[1],
                       hashes[0], hashes[1], ALGORITHM, COMPRESSION, first[0], second[0],
                       first[1], second[1]).to_bytes()
    # Only up to the head we announced: other exchanges may have appended since. None: the
    # peer last saw us more than KEEP_DIGESTS records ago; it gets none and cannot check.
    digests = ledger.digests_since(theirs.seen_seq, upto=seq) or []
    my_sig = sign_receipt(seed, body)
    await ms.send(encode_message(ReceiptSig(sig=my_sig, digests=digests)))
    reply = await _receive(ms, ReceiptSig)
    assert isinstance(reply, ReceiptSig)
    try:
        verify(ed25519_public_key_from_peer_id(facts.remote_peer), receipt_digest(body), reply.sig)
    except AuthenticationError:
        raise HistoryRewritten("the peer's receipt signature does not verify") from None
    if seen is not None:
        old_seq, old_head = seen
        grown = theirs.head_seq - old_seq
        if grown > KEEP_DIGESTS and not reply.digests:
            # Too far apart to prove in one message: not evidence of a rewrite, and said so.
            log.warning("cannot check the ledger of %s: it grew by %d records since we last "
                        "saw it (more than %d)", facts.remote_peer.hex()[-12:], grown,
                        KEEP_DIGESTS)
        elif grown < 0 or len(reply.digests) != grown or \
                fold(old_head, list(reply.digests)) != theirs.head_hash:
            raise HistoryRewritten(
                f"peer's ledger head {theirs.head_seq} does not extend the head {old_seq} it "
                "showed before: its history was rewritten")
    sigs = (my_sig, reply.sig) if facts.initiator else (reply.sig, my_sig)
    return {"body": body, "initiator_sig": sigs[0], "responder_sig": sigs[1]}
