"""A node's recent time series, for the testnet report and dashboards: one sample every few
seconds of what `status` shows as numbers.

Rules: bounded (the oldest samples are dropped past MAX_SAMPLES, so a long-running node's memory
does not grow); times are seconds since the node started (monotonic) plus one wall-clock anchor,
so series from several nodes line up without trusting their clocks to agree to the millisecond.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

MAX_SAMPLES = 4096
FIELDS = ("step", "loss", "accuracy", "mixes", "live_peers", "exchanges_ok", "exchanges_failed",
          "exchanges_served_ok", "exchanges_served_failed", "bytes_sent", "bytes_received",
          "consensus_estimate", "exchange_seconds_mean", "exchange_seconds_total",
          "receipt_seconds_total", "ledger_bytes")


class History:
    def __init__(self, max_samples: int = MAX_SAMPLES) -> None:
        self.started_wall = time.time()
        self._samples: deque[dict[str, Any]] = deque(maxlen=max_samples)

    def __len__(self) -> int:
        return len(self._samples)

    def record(self, t: float, status: dict[str, Any]) -> None:
        """Keep the FIELDS of one status dict at `t` seconds since the node started."""
        sample: dict[str, Any] = {"t": round(t, 3)}
        sample.update({k: status.get(k) for k in FIELDS})
        self._samples.append(sample)

    def since(self, t: float = -1.0) -> dict[str, Any]:
        return {"started_wall": self.started_wall,
                "samples": [s for s in self._samples if s["t"] > t]}
