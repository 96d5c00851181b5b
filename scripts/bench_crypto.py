#!/usr/bin/env python3
"""Payload-encryption throughput: gossipd's secretstream path against raw libsodium secretbox.

    scripts/bench_crypto.py [--sizes 1,10,100] [--repeat 3] [--json]

For each plaintext size (MiB) two round trips are timed with time.perf_counter, in the same run:

  * gossipd: protocol.crypto.seal(key, plaintext) (default 1 MiB chunks, XChaCha20-Poly1305
    secretstream) followed by protocol.crypto.open_sealed(key, header, chunks, size);
  * wire: what an exchange does apart from the socket: AveragingSession.params_frames (encode the
    float32 vector, seal each chunk (the session picks up to 1 MiB), frame it) on one side,
    FrameDecoder + from_wire + AveragingSession.receive (open each chunk, decode, NaN check) on
    the other;
  * secretbox: nacl.bindings.crypto_secretbox(plaintext, nonce, key) on the whole buffer (XSalsa20-
    Poly1305) followed by crypto_secretbox_open(...), the cheapest authenticated encryption PyNaCl
    offers, as the reference.

Throughput is plaintext MB/s (10**6 bytes per second) of seal+open together, best of --repeat runs.
ratio = gossipd MB/s / secretbox MB/s (wire ratio likewise, handshake excluded); the target is
ratio >= 0.5 at 100 MiB. All round trips are checked against the input outside the timed part.
Exit status 0 whether or not the target is met (this is a measurement); 1 when a round trip does
not reproduce its input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nacl.bindings as sodium  # noqa: E402
import numpy as np  # noqa: E402

from protocol.crypto import (  # noqa: E402
    open_sealed,
    peer_id_from_ed25519_public_key,
    public_key_from_seed,
    seal,
)
from protocol.framing import FrameDecoder  # noqa: E402
from protocol.messages import from_wire  # noqa: E402
from protocol.session import AveragingSession  # noqa: E402

MIB = 1 << 20
TARGET_RATIO = 0.5
TARGET_SIZE_MIB = 100.0


def _gossipd_round_trip(key: bytes, plaintext: bytes) -> bytes:
    header, chunks = seal(key, plaintext)
    return open_sealed(key, header, chunks, len(plaintext))


def _keyed_pair(num_params: int) -> tuple[AveragingSession, AveragingSession]:
    seeds = (b"\x01" * 32, b"\x02" * 32)
    ids = [peer_id_from_ed25519_public_key(public_key_from_seed(s)) for s in seeds]
    a, b = (
        AveragingSession(initiator=i == 0, local_peer_id=ids[i], local_seed=seeds[i],
                         remote_peer_id=ids[1 - i], spec="bench", num_params=num_params, step=0)
        for i in (0, 1)
    )
    for sender, receiver in ((a, b), (b, a)):
        dec = FrameDecoder()
        dec.feed(sender.hello())
        body = dec.next_frame()
        assert body is not None
        receiver.receive(from_wire(body))
    return a, b


def _wire_round_trip(pair: tuple[AveragingSession, AveragingSession], plaintext: bytes) -> bytes:
    """Session path for plaintext viewed as float32 parameters; returns their bytes."""
    flat = np.frombuffer(plaintext, dtype="<f4")
    a, b = pair
    dec = FrameDecoder()
    for frame in a.params_frames(flat, 0):
        dec.feed(frame)
        while (body := dec.next_frame()) is not None:
            result = b.receive(from_wire(body))
            if result is not None:
                return result[0].astype("<f4").tobytes()
    return b""


def _finite_float32(nbytes: int) -> bytes:
    """Random finite float32 values (random bytes would contain NaNs, which peers refuse)."""
    rng = np.random.default_rng(0)
    return rng.standard_normal(nbytes // 4, dtype=np.float32).astype("<f4").tobytes()


def _secretbox_round_trip(key: bytes, plaintext: bytes) -> bytes:
    nonce = os.urandom(sodium.crypto_secretbox_NONCEBYTES)
    box: bytes = sodium.crypto_secretbox(plaintext, nonce, key)
    opened: bytes = sodium.crypto_secretbox_open(box, nonce, key)
    return opened


def _best_of(
    fn: Callable[[bytes, bytes], bytes], key: bytes, plaintext: bytes, repeat: int
) -> tuple[float, bytes]:
    """Shortest wall time of ``repeat`` calls, and the last call's result (checked later)."""
    best = float("inf")
    result = b""
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn(key, plaintext)
        best = min(best, time.perf_counter() - start)
        if result != plaintext:
            break
    return best, result


def _mb_per_s(nbytes: int, seconds: float) -> float:
    return nbytes / 1e6 / seconds if seconds > 0 else float("inf")


def measure(size_mib: float, repeat: int) -> dict[str, Any]:
    nbytes = int(size_mib * MIB) // 4 * 4
    plaintext = _finite_float32(nbytes)
    key = os.urandom(32)
    g_time, g_out = _best_of(_gossipd_round_trip, key, plaintext, repeat)
    pairs = iter([_keyed_pair(nbytes // 4) for _ in range(repeat)])  # handshakes not timed
    w_time, w_out = _best_of(lambda _k, p: _wire_round_trip(next(pairs), p), key, plaintext,
                             repeat)
    s_time, s_out = _best_of(_secretbox_round_trip, key, plaintext, repeat)
    g_rate = _mb_per_s(nbytes, g_time)
    w_rate = _mb_per_s(nbytes, w_time)
    s_rate = _mb_per_s(nbytes, s_time)
    return {
        "size_mib": size_mib,
        "bytes": nbytes,
        "gossipd_s": g_time,
        "secretbox_s": s_time,
        "gossipd_mb_s": g_rate,
        "secretbox_mb_s": s_rate,
        "ratio": g_rate / s_rate if s_rate > 0 else 0.0,
        "wire_s": w_time,
        "wire_mb_s": w_rate,
        "wire_ratio": w_rate / s_rate if s_rate > 0 else 0.0,
        "gossipd_ok": g_out == plaintext,
        "wire_ok": w_out == plaintext,
        "secretbox_ok": s_out == plaintext,
    }


def _parse_sizes(text: str) -> list[float]:
    try:
        sizes = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text}") from None
    if not sizes or any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError("sizes must be positive numbers of MiB")
    return sizes


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--sizes",
        type=_parse_sizes,
        default=[1.0, 10.0, 100.0],
        help="comma-separated plaintext sizes in MiB (default: 1,10,100)",
    )
    parser.add_argument(
        "--repeat",
        type=_positive_int,
        default=3,
        help="timed runs per size and path; the best (shortest) counts (default: 3)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of the table"
    )
    return parser


def _verdict(results: list[dict[str, Any]]) -> bool | None:
    """Whether the 100 MiB ratio meets the target; None when 100 MiB was not measured."""
    for row in results:
        if row["size_mib"] == TARGET_SIZE_MIB:
            return bool(row["ratio"] >= TARGET_RATIO)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    results = [measure(size, args.repeat) for size in args.sizes]
    met = _verdict(results)
    ok = all(row["gossipd_ok"] and row["wire_ok"] and row["secretbox_ok"] for row in results)
    if args.json:
        report = {
            "repeat": args.repeat,
            "target_ratio": TARGET_RATIO,
            "target_size_mib": TARGET_SIZE_MIB,
            "target_met": met,
            "round_trips_ok": ok,
            "results": results,
        }
        print(json.dumps(report, indent=2))
    else:
        print(f"{'MiB':>8}  {'gossipd MB/s':>12}  {'secretbox MB/s':>14}  {'ratio':>6}  "
              f"{'wire MB/s':>9}  {'wire ratio':>10}")
        for row in results:
            print(
                f"{row['size_mib']:>8g}  {row['gossipd_mb_s']:>12.1f}  "
                f"{row['secretbox_mb_s']:>14.1f}  {row['ratio']:>6.2f}  "
                f"{row['wire_mb_s']:>9.1f}  {row['wire_ratio']:>10.2f}"
            )
        if met is None:
            print(f"target {TARGET_RATIO}x: not measured (no {TARGET_SIZE_MIB:g} MiB size)")
        else:
            print(f"target {TARGET_RATIO}x: {'met' if met else 'NOT met'}")
    for row in results:
        for path in ("gossipd", "wire", "secretbox"):
            if not row[f"{path}_ok"]:
                print(f"{path} round trip mismatch at {row['size_mib']:g} MiB", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
