"""The node's status, as `gossipctl status`, the metrics and sd_notify STATUS= show it: a read
of the node's parts, nothing changed."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from gossipd.daemon import Node


def status_line(self: Node) -> str:
    """One line for `systemctl status` (sd_notify STATUS=)."""
    t = self.runner.status
    loss = "-" if t.loss is None else f"{t.loss:.3f}"
    acc = "-" if t.accuracy is None else f"{t.accuracy:.3f}"
    now = trio.current_time()
    live = sum(1 for p in self.peers.snapshot(now) if p["live"])
    return (f"step {t.step}, loss {loss}, accuracy {acc}, peers {live}/{len(self.peers)}, "
            f"exchanges {self.stats.ok + self.stats.served_ok} ok "
            f"{self.stats.failed + self.stats.served_failed} failed")

def status(self: Node) -> dict[str, Any]:
    """What `gossipctl status` shows (and the metrics are made of)."""
    now = trio.current_time()
    train = self.runner.status
    return {
        "peer_id": self.transport.peer_id,
        "listen_addrs": self.transport.listen_addrs(),
        "pid": os.getpid(),
        "uptime_s": round(now - self.started_at, 3),
        "task": self.config.train.task,
        "device": self.runner.trainer.device,
        "dashboard_url": self.dashboard_url,
        "spec": self.model.spec,
        "shard": f"{self.config.train.shard_index}/{self.config.train.num_shards}",
        "partition": self.config.train.partition,
        "averaging": self.config.averaging.enabled,
        "training": ("stopped" if not self.participating
                     else "paused" if self.runner.paused
                     else "joining" if self.runner.joining else "running"),
        "join": self.runner.join,
        "algorithm": self.runner.rule.algorithm,
        "robust": self.runner.rule.robust,
        "clipped": train.clipped,
        "diverged": train.diverged,
        "merges_refused": train.merges_refused,
        "outer_steps": train.outer_steps,
        "compression": self.error_feedback.mode,
        "exchange_deadline_s": round(self.exchange_deadline(), 3),
        "resumed_from": self.runner.resumed_from,
        "adopted_step": train.adopted_step,
        "fresh_ignored": train.fresh_ignored,
        "membership": self.membership.mode,
        "refused_non_members": self.membership.refused,
        "refused_busy": dict(self.limits.refused),
        "step": train.step,
        "loss": train.loss,
        "accuracy": train.accuracy,
        "accuracy_step": train.accuracy_step,
        "mixes": train.mixes,
        "known_peers": self.peers.known(),
        "live_peers": sum(1 for p in self.peers.snapshot(now) if p["live"]),
        "exchanges_ok": self.stats.ok,
        "exchanges_failed": self.stats.failed,
        "exchanges_served_ok": self.stats.served_ok,
        "exchanges_served_failed": self.stats.served_failed,
        "last_error": self.stats.last_error,
        "bytes_sent": self.stats.bytes.sent,
        "bytes_received": self.stats.bytes.received,
        "consensus_estimate": self.metrics.consensus_estimate,
        "exchange_seconds_mean": self.stats.mean_seconds(),
        "exchange_seconds_total": round(self.stats.seconds_ok, 4),
        "receipt_seconds_total": round(self.stats.receipt_seconds, 4),
        "ledger_bytes": None if self.provenance is None
        else self.provenance.ledger.size_bytes,
        "ledger_write_errors": None if self.provenance is None
        else self.provenance.write_errors,
    }
