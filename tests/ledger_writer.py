"""A process that writes a ledger the way the daemon does, until it is killed (or its bounds run
out): tests/test_ledger_kill.py SIGKILLs it mid-append and checks what survived.

    python -m tests.ledger_writer LEDGER [--records N] [--seconds S]

Receipts go through Provenance exactly as an exchange's do (queued, written unsigned on the
event loop's next turn, sealed and fsync'd by the worker thread); every 7th record is a signed
checkpoint that waits for its fsync, as a saved checkpoint's does. After each record is written
it prints `seq hash` and flushes: a line on stdout is a record the kernel already holds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import trio

from gossipd.ledger import Ledger
from gossipd.provenance import Provenance
from protocol.crypto import peer_id_from_ed25519_public_key, public_key_from_seed
from protocol.receipt import ReceiptBody, params_hash, sign_receipt

SEED_A, SEED_B = b"\x01" * 32, b"\x02" * 32
ID_A, ID_B = (peer_id_from_ed25519_public_key(public_key_from_seed(s)) for s in (SEED_A, SEED_B))


def receipt(n: int, head: tuple[int, bytes]) -> tuple[dict[str, bytes], ReceiptBody]:
    """A receipt both peers really signed (verify checks both signatures)."""
    body = ReceiptBody(n.to_bytes(16, "big"), ID_A, ID_B, 1_800_000_000_000 + n, n, n + 1,
                       params_hash(np.full(4, n, np.float32)), params_hash(np.ones(4, np.float32)),
                       "gossip", "none", 32, 32, head, (n, b"\x22" * 32))
    raw = body.to_bytes()
    return {"body": raw, "initiator_sig": sign_receipt(SEED_A, raw),
            "responder_sig": sign_receipt(SEED_B, raw)}, body


async def write(path: Path, records: int, seconds: float) -> None:
    prov = Provenance(Ledger(path, SEED_A, ID_A))
    ledger = prov.ledger
    deadline = time.monotonic() + seconds
    for n in range(records):
        if time.monotonic() > deadline:
            break
        if n % 7 == 6:
            await prov.append("checkpoint", {"params_hash": bytes(32), "step": n})
        else:
            data, body = receipt(n, ledger.head)
            written = prov.records_written
            prov.record_receipt_soon(data, body=body)
            prov.write_soon()
            while prov.records_written == written:
                await trio.sleep(0)
        seq, head = ledger.head
        sys.stdout.write(f"{seq} {head.hex()}\n")
        sys.stdout.flush()
    prov.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ledger", type=Path)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    trio.run(write, args.ledger, args.records, args.seconds)


if __name__ == "__main__":
    main()
