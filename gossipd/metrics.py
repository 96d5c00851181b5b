"""Prometheus metrics of one node, in a registry of its own.

Rules:
- Every metric lives in the `CollectorRegistry` owned by a `NodeMetrics`, never in
  prometheus_client's global default registry, and this module keeps no mutable globals: two
  nodes in one process (tests, the testnet harness) never see each other's numbers, and no
  library that registers into the default registry leaks into our output.
- The daemon keeps cumulative ints (mixes, bytes, refusals, strikes). They are exported as
  Counters advanced by the growth of those totals: the values only grow, so the scraper must see
  the counter type for rate()/increase() to apply. A counter never goes backwards: a total that
  reads smaller than last time (a source whose scope shrank, such as a sum over a peer table
  that lost a peer) holds the counter where it is and counts growth from the new value.
  In-process totals never really restart without this object restarting too, so holding is
  the safe reading: it can only undercount, never invent traffic.
- Label values are fixed sets (roles, outcomes) so a bug cannot grow label cardinality;
  an unknown value raises ValueError, which the daemon's tests catch.
- Unknown values (loss before the first step, accuracy before the first evaluation, the
  consensus estimate before the first mix) are exported as NaN, not 0, so a dashboard shows a
  gap instead of a false perfect score.
"""

from __future__ import annotations

import math
from typing import Any, Final

import numpy as np
import prometheus_client
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gossipd.exchange import PeerRefused
from gossipd.netapi import TransportError
from protocol.errors import ProtocolError

CONTENT_TYPE: Final[str] = prometheus_client.CONTENT_TYPE_LATEST

ROLES: Final = ("initiated", "served")
OUTCOMES: Final = ("ok", "protocol_error", "refused", "transport_error", "timeout")

# An exchange on loopback takes a few ms; a large model over a slow link can take up to
# averaging.timeout_s (default 10 s, so the top bucket leaves room for raised timeouts).
EXCHANGE_BUCKETS_S: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# Weight of the newest exchange in the consensus-distance EWMA: about the last five exchanges
# (a few seconds at the default averaging interval) dominate the estimate.
CONSENSUS_EWMA_ALPHA: Final = 0.2


def outcome_of(exc: BaseException | None) -> str:
    """The `outcome` label of an exchange that ended with `exc` (None: it succeeded)."""
    if exc is None:
        return "ok"
    if isinstance(exc, ProtocolError):
        return "protocol_error"
    if isinstance(exc, PeerRefused):
        return "refused"
    if isinstance(exc, TransportError):
        return "transport_error"
    if isinstance(exc, trio.TooSlowError):
        return "timeout"
    return "transport_error"


def pair_distance(local: np.ndarray, remote: np.ndarray) -> float:
    """Mean squared difference ||local - remote||^2 / n of two equally shaped vectors.

    For random pairs of N nodes, E||x_i - x_j||^2 = 2N/(N-1) * D, where D is the mean squared
    distance of the nodes to their mean (gossipd.mixing.consensus_distance). So
    D ~= n * pair_distance * (N - 1) / (2N): this per-parameter figure tracks consensus from a
    single node without collecting anyone else's parameters.
    """
    a = np.asarray(local, dtype=np.float64)
    b = np.asarray(remote, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ValueError(f"need two equal non-empty 1-d vectors, got {a.shape} and {b.shape}")
    diff = a - b
    return float(diff @ diff) / a.size


class _FromTotal:
    """Advances a Counter by the growth of a cumulative total; never moves it backwards."""

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._last = 0.0

    def feed(self, total: float) -> None:
        if total < 0:
            return
        if total > self._last:
            self._counter.inc(total - self._last)
        self._last = total  # a smaller total rebases (see the module rules)


def _number(status: dict[str, Any], *keys: str) -> float | None:
    """The first of `keys` that holds a finite number, or None."""
    for key in keys:
        value = status.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            f = float(value)
            if math.isfinite(f):
                return f
    return None


def _gauge_value(status: dict[str, Any], key: str) -> float:
    value = _number(status, key)
    return math.nan if value is None else value


class NodeMetrics:
    def __init__(self, peer_id: str, task: str, spec: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        Gauge("gossipd_info", "Constant 1; labels identify the node and its model.",
              ["peer_id", "task", "spec", "version"], registry=r,
              ).labels(peer_id=peer_id, task=task, spec=spec, version="1").set(1)
        self._step = Gauge("gossipd_training_step", "Training steps completed.", registry=r)
        self._loss = Gauge("gossipd_training_loss", "Loss of the last training chunk.",
                           registry=r)
        self._accuracy = Gauge("gossipd_test_accuracy",
                               "Test accuracy at the last evaluation (0..1).", registry=r)
        self._exchanges = Counter("gossipd_exchanges", "Averaging exchanges by role and outcome.",
                                  ["role", "outcome"], registry=r)
        self._duration = Histogram("gossipd_exchange_duration_seconds",
                                   "Wall time of averaging exchanges, any outcome.", ["role"],
                                   buckets=EXCHANGE_BUCKETS_S, registry=r)
        for role in ROLES:  # every series exists from the start, at 0
            self._duration.labels(role=role)
            for outcome in OUTCOMES:
                self._exchanges.labels(role=role, outcome=outcome)
        self._peers_known = Gauge("gossipd_peers_known", "Peers in the peer table.", registry=r)
        self._peers_live = Gauge("gossipd_peers_live", "Known peers not backed off.", registry=r)
        self._uptime = Gauge("gossipd_uptime_seconds", "Seconds since the node started.",
                             registry=r)
        self._consensus = Gauge(
            "gossipd_consensus_distance_estimate",
            "EWMA over recent mixes of ||local - remote||^2 / n_params before mixing.",
            registry=r)
        self._consensus.set(math.nan)
        self._consensus_ewma: float | None = None
        self._totals: dict[tuple[str, ...], _FromTotal] = {}
        for keys, name, doc in (
            (("mixes",), "gossipd_mixes", "Remote parameter vectors mixed into the model."),
            (("bytes_sent",), "gossipd_exchange_sent_bytes",
             "Bytes sent by averaging exchanges, any outcome."),
            (("bytes_received",), "gossipd_exchange_received_bytes",
             "Bytes received by averaging exchanges, any outcome."),
            (("strikes", "strikes_total"), "gossipd_strikes",
             "Protocol violations counted against peers."),
            (("refused_non_members",), "gossipd_refused_non_members",
             "Streams refused because the peer is not a swarm member."),
        ):
            self._totals[keys] = _FromTotal(Counter(name, doc, registry=r))
        self._loss.set(math.nan)
        self._accuracy.set(math.nan)

    def observe_exchange(self, role: str, outcome: str, seconds: float) -> None:
        if role not in ROLES:
            raise ValueError(f"exchange role {role!r} is not one of {ROLES}")
        if outcome not in OUTCOMES:
            raise ValueError(f"exchange outcome {outcome!r} is not one of {OUTCOMES}")
        self._exchanges.labels(role=role, outcome=outcome).inc()
        self._duration.labels(role=role).observe(max(0.0, seconds))

    @property
    def consensus_estimate(self) -> float | None:
        """The EWMA of pair distances so far; None before the first mix."""
        return self._consensus_ewma

    def observe_mix(self, distance: float) -> None:
        """Fold one pair_distance() into the consensus estimate; non-finite or negative
        values (an overflow, a bug) are ignored so they cannot poison the average."""
        if not math.isfinite(distance) or distance < 0:
            return
        prev = self._consensus_ewma
        ewma = distance if prev is None else prev + CONSENSUS_EWMA_ALPHA * (distance - prev)
        self._consensus_ewma = ewma
        self._consensus.set(ewma)

    def update(self, status: dict[str, Any]) -> None:
        """Take Node.status()'s dict; missing or non-numeric keys leave their metric as is."""
        step = _number(status, "step")
        if step is not None:
            self._step.set(step)
        for key, gauge in (("loss", self._loss), ("accuracy", self._accuracy)):
            if key in status:  # present but None: not known yet
                gauge.set(_gauge_value(status, key))
        known = status.get("known_peers")
        if isinstance(known, list | tuple | set | frozenset):
            self._peers_known.set(len(known))
        elif (n := _number(status, "known_peers")) is not None:
            self._peers_known.set(n)
        for key, gauge in (("live_peers", self._peers_live), ("uptime_s", self._uptime)):
            value = _number(status, key)
            if value is not None:
                gauge.set(value)
        for keys, counter in self._totals.items():
            total = _number(status, *keys)
            if total is not None:
                counter.feed(total)

    def render(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)
