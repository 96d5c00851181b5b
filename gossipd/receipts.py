"""The receipt of an exchange: committed to in the Hellos, signed before the parameters,
checked before any merge.

    both -> Hello{..., receipt: ReceiptInfo{samples, head_seq, head_hash, seen_seq, params_hash}}
    both -> ReceiptSig{sig over the receipt, digests of our records after seen_seq}
    both -> ParamsStart + chunks (the parameters whose hash the Hello committed to)

Rules:
- Everything in ReceiptInfo is known before the exchange starts (`announce`), including the
  hash of the vector we will send, so once both Hellos are in, each side can build the whole
  receipt (protocol/receipt.py) and sign it. Each sends its ReceiptSig first on its half of the
  parameter swap and reads the peer's first on the other half: the signature adds no round
  trip. The peer's signature is checked on arrival (`check_signature`), its parameters against
  the hash it committed to once they are complete (`ParamsMismatch`); only then is anything
  merged: a peer that refuses to sign, or signs for other parameters, gets no merge.
- Heads: we announce the ledger's durable head (the last fsync'd record), so no peer ever saw a
  head a power cut could take back.
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
from gossipd.provenance import Provenance
from protocol.crypto import verify
from protocol.errors import (
    AuthenticationError,
    HistoryRewritten,
    ParamsMismatch,
    UnexpectedMessage,
)
from protocol.messages import ErrorMsg, Message, ReceiptInfo, ReceiptSig, encode_message
from protocol.receipt import ReceiptBody, receipt_digest

log = logging.getLogger("gossipd.receipts")

ALGORITHM = "gossip-sgd"
COMPRESSION = "none"


@dataclass(frozen=True)
class ExchangeFacts:
    """What both sides of one exchange agree on once the Hellos are swapped."""

    initiator: bool
    exchange_id: bytes
    local_peer: bytes
    remote_peer: bytes
    time_ms: int  # the initiator's Hello time
    local_step: int
    remote_step: int


@dataclass(frozen=True)
class Announcement:
    """Our side of a receipt, fixed before the Hello: what the Hello carries, and the peer's
    head (seq, hash) that its seen_seq names (None: never saw it)."""

    info: ReceiptInfo
    seen: tuple[int, bytes] | None


def announce(provenance: Provenance, remote_peer: bytes, samples: int,
             sent_hash: bytes) -> Announcement:
    """Our ReceiptInfo for an exchange with `remote_peer`, taken before our Hello;
    `sent_hash` is params_hash of the vector we will send."""
    seen = provenance.peer_head(remote_peer)
    seq, head = provenance.ledger.durable_head
    return Announcement(ReceiptInfo(samples=samples, head_seq=seq, head_hash=head,
                                    seen_seq=-1 if seen is None else seen[0],
                                    params_hash=sent_hash), seen)


def receipt_body(facts: ExchangeFacts, mine: ReceiptInfo, theirs: ReceiptInfo) -> ReceiptBody:
    """The receipt both sides build from the facts and the two ReceiptInfos (its to_bytes()
    are the canonical bytes both sign)."""
    ini, res = (mine, theirs) if facts.initiator else (theirs, mine)
    ids = (facts.local_peer, facts.remote_peer) if facts.initiator \
        else (facts.remote_peer, facts.local_peer)
    steps = (facts.local_step, facts.remote_step) if facts.initiator \
        else (facts.remote_step, facts.local_step)
    return ReceiptBody(facts.exchange_id, ids[0], ids[1], facts.time_ms, steps[0], steps[1],
                       ini.params_hash, res.params_hash, ALGORITHM, COMPRESSION, ini.samples,
                       res.samples, (ini.head_seq, ini.head_hash),
                       (res.head_seq, res.head_hash))


@dataclass(frozen=True)
class Signing:
    """One exchange's receipt, once both Hellos are in: the bytes, our ReceiptSig to send."""

    facts: ExchangeFacts
    fields: ReceiptBody  # parsed, so the ledger need not parse `body` again
    body: bytes
    my_sig: bytes
    message: bytes  # our encoded ReceiptSig
    peer_key: bytes  # the peer's Ed25519 public key, which must have signed the same bytes

    def receipt(self, their_sig: bytes) -> dict[str, bytes]:
        """The doubly signed receipt (as the ledger keeps it)."""
        sigs = (self.my_sig, their_sig) if self.facts.initiator else (their_sig, self.my_sig)
        return {"body": self.body, "initiator_sig": sigs[0], "responder_sig": sigs[1]}


def sign(facts: ExchangeFacts, provenance: Provenance, mine: Announcement,
         theirs: ReceiptInfo) -> Signing:
    """Build and sign the receipt; our ReceiptSig carries the digests of our records after the
    head the peer last saw, up to the head we announced (other exchanges may have appended
    since). None from digests_since: the peer last saw us more than KEEP_DIGESTS records ago;
    it gets none and cannot check."""
    fields = receipt_body(facts, mine.info, theirs)
    body = fields.to_bytes()
    digests = provenance.ledger.digests_since(theirs.seen_seq, upto=mine.info.head_seq) or []
    my_sig = provenance.ledger.signer.sign(receipt_digest(body))  # the node's identity key
    message = encode_message(ReceiptSig(sig=my_sig, digests=digests))
    return Signing(facts, fields, body, my_sig, message, provenance.peer_key(facts.remote_peer))


def check_signature(signing: Signing, reply: Message, mine: Announcement,
                    theirs: ReceiptInfo) -> bytes:
    """The peer's first message after the Hellos must be its ReceiptSig over the same receipt
    bytes, and its ledger must extend what we saw before; returns the peer's signature."""
    if isinstance(reply, ErrorMsg):
        from gossipd.exchange import PeerRefused

        raise PeerRefused(reply.code, reply.message)
    if not isinstance(reply, ReceiptSig):
        raise UnexpectedMessage(f"expected ReceiptSig, got {type(reply).__name__}")
    peer = signing.facts.remote_peer
    try:
        verify(signing.peer_key, receipt_digest(signing.body), reply.sig)
    except AuthenticationError:
        raise HistoryRewritten("the peer's receipt signature does not verify") from None
    check_history(peer, mine.seen, theirs, reply.digests)
    return reply.sig


def check_params(theirs: ReceiptInfo, received_hash: bytes) -> None:
    """The parameters that arrived must be the ones the peer signed for."""
    if received_hash != theirs.params_hash:
        raise ParamsMismatch("the peer's parameters differ from the hash its Hello committed "
                             "to and its receipt signed")


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
