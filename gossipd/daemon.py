"""The node: a thin trio shell composing transport, peer table, trainer, averaging and control.

Tasks under one nursery (structured concurrency; any crash stops the node cleanly):
  training   paced JAX steps in a worker thread            (gossipd/runner.py)
  evaluation test accuracy every train.eval_interval_s      (gossipd/runner.py)
  discovery  peer exchange every network.discovery_interval_s (gossipd/discovery.py)
  averaging  every averaging.interval_s (+-25% jitter), one push-pull with a random live peer
  control    the Unix control socket                        (gossipd/control.py)
  checkpoints every node.checkpoint_interval_s, when the node was started with autosave
Inbound streams are served by handlers registered on the transport.

Rules: every network operation runs under a deadline; a failure is counted against the peer (with
backoff) and never stops training. Bad input from a peer is a strike for that peer.
Checkpoints: one save at a time; the state is captured between chunks (ModelRunner.capture) and
written from a worker thread. A failed automatic save is logged and retried at the next interval;
it never stops the node. Automatic saves skip a model that is untouched (step 0, no mix: saving
it would make a restart resume instead of pulling) or unchanged since the last save.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import random
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import trio

if TYPE_CHECKING:
    # libp2p pulls in trio-typing, whose stale trio stubs shadow trio's own types and lack
    # trio.TaskStatus; trio_typing.TaskStatus is the same protocol.
    from trio_typing import TaskStatus

from gossipd import checkpoint, deadlines, discovery, exchange, node_status
from gossipd import config as config_mod
from gossipd.compress import ErrorFeedback
from gossipd.config import Config
from gossipd.defence import Defence
from gossipd.history import History
from gossipd.limits import InboundLimits
from gossipd.membership import Membership, check_member_ids, read_members_file
from gossipd.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gossipd.metrics import NodeMetrics, outcome_of, pair_distance
from gossipd.netapi import Stream, Transport, TransportError
from gossipd.peers import PeerTable
from gossipd.provenance import Provenance
from gossipd.runner import ModelRunner
from protocol.errors import ProtocolError
from protocol.messages import AVG_PROTOCOL_ID, PEERS_PROTOCOL_ID
from protocol.receipt import params_hash
from protocol.replay import ReplayCheck

log = logging.getLogger("gossipd.node")

JITTER = 0.25
MAX_OUTGOING = 2  # exchanges this node has started and not finished, at most


@dataclass
class ExchangeStats:
    ok: int = 0
    failed: int = 0
    served_ok: int = 0
    served_failed: int = 0
    last_error: str | None = None
    bytes: exchange.ByteCounter = field(default_factory=exchange.ByteCounter)
    seconds_ok: float = 0.0  # total duration of successful exchanges, both roles
    receipt_seconds: float = 0.0  # of which the receipt round and its ledger record

    def mean_seconds(self) -> float | None:
        n = self.ok + self.served_ok
        return round(self.seconds_ok / n, 4) if n else None


class Node:
    def __init__(
        self,
        config: Config,
        transport: Transport,
        runner: ModelRunner,
        seed: bytes,
        rng: random.Random | None = None,
        membership: Membership | None = None,
        replay: ReplayCheck | None = None,
        config_path: Path | None = None,
        provenance: Provenance | None = None,
        autosave: bool = False,
    ) -> None:
        self.config = config
        # Periodic and shutdown checkpoints: gossipd.main turns them on; in-memory test nodes
        # leave them off. `checkpoint.save` works either way.
        self.autosave = autosave
        self.checkpoint_dir = config.node.state_dir / checkpoint.DIR_NAME
        self._save_lock = trio.Lock()
        self._saved_key: tuple[int, int] | None = None  # (step, mixes) of the last save
        self.config_path = config_path
        self.provenance = provenance
        self._step_at_exchange = 0
        self._counted_step = 0  # the step the last receipt's sample count was read at
        self.membership = membership or Membership(open=True, members=frozenset())
        self.transport = transport
        self.runner = runner
        self.rng = rng or random.Random()
        self.peers = PeerTable(transport.peer_id, config.network.max_peers, self.rng,
                               admit=self.membership.allows)
        self.defence = Defence(config.averaging.robust, config.averaging.attack, seed, self.peers,
                               trio.current_time)
        self.stats = ExchangeStats()
        self.discovery_stats = discovery.DiscoveryStats()
        # One error-feedback state per node: what compression left out of earlier sends. The
        # runner holds it, so checkpoints carry the residual.
        if runner.error_feedback.mode != config.averaging.compression:
            runner.error_feedback = ErrorFeedback(config.averaging.compression)
        self.error_feedback = runner.error_feedback
        # Exchange deadlines follow observed exchange times; averaging.timeout_s is the ceiling.
        self.deadline_state = deadlines.deadline_init()
        self.model = exchange.LocalModel(
            peer_id_bytes=transport.peer_id_bytes(transport.peer_id),
            seed=seed,
            spec=runner.trainer.spec,
            num_params=runner.trainer.num_params,
            snapshot=runner.snapshot,
            apply_remote=self._apply_remote,
            merge_remote=self._merge_remote,
            provenance=provenance,
            samples_since_exchange=self._samples_since_exchange,
            swarm_key=self.membership.swarm_key,
            replay=replay,
            compression=config.averaging.compression,
            compress=self.error_feedback,
            check_remote=self.defence.check_remote,
            merge_from=self._merge_from,
            tamper=None if config.averaging.attack == "none" else self.defence.tamper,
        )
        # Robust mixing: norm checks in the exchange, clipping in the runner, reputations here.
        runner.rule = dataclasses.replace(runner.rule,
                                          robust=config.averaging.robust == "clip")
        runner.on_clip = self.defence.on_clip
        self.started_at = trio.current_time()
        self.metrics = NodeMetrics(transport.peer_id, config.train.task, runner.trainer.spec)
        self.history = History()
        self.dashboard_url: str | None = None
        # `gossipctl train stop` takes the node out of averaging (both ways) and pauses training;
        # `train start` brings both back. Pause/resume touch only training.
        self.participating = True
        self.limits = InboundLimits(max_exchanges=config.network.max_inbound_exchanges,
                                    rate=config.network.peer_streams_per_s,
                                    burst=4 * config.network.peer_streams_per_s)

    # -- inbound --
    def _admit(self, stream: Stream) -> bool:
        """Every handler checks membership (and bans) itself, whatever the transport did."""
        if self.peers.is_banned(stream.remote_peer, trio.current_time()):
            return False
        if self.membership.allows(stream.remote_peer):
            return True
        self.membership.refuse(stream.remote_peer)
        return False

    async def _on_avg_stream(self, stream: Stream) -> None:
        peer_id = stream.remote_peer
        if (not self._admit(stream) or not self.config.averaging.enabled
                or not self.participating
                or not self.limits.allow_stream(peer_id, trio.current_time())
                or not self.limits.start_exchange(peer_id)):
            await stream.reset()
            return
        try:
            self.peers.add(peer_id, [], trio.current_time())
            await self._counted(peer_id, exchange.respond(
                self.transport, stream, self.model, self.exchange_deadline(),
                self.stats.bytes,
            ), served=True)
        finally:
            self.limits.finish_exchange(peer_id)

    async def _on_peers_stream(self, stream: Stream) -> None:
        # In a secret-only swarm, IDs prove nothing: peer lists go only to peers that proved
        # the secret in an averaging exchange (a newcomer averages with its bootstrap first).
        if (not self._admit(stream) or not self.membership.proven(stream.remote_peer)
                or not self.limits.allow_stream(stream.remote_peer, trio.current_time())):
            await stream.reset()
            return
        await discovery.serve(
            self.transport, stream, self.peers, self.discovery_stats, trio.current_time,
            self.config.network.dial_timeout_s,
        )

    def _apply_remote(self, remote: np.ndarray, remote_step: int) -> None:
        self.metrics.observe_mix(pair_distance(self.runner.params, remote))
        self.runner.apply_remote(remote, remote_step)

    def _samples_since_exchange(self) -> int:
        """Local samples trained since the last completed exchange (for its receipt)."""
        batch = int(getattr(self.runner.trainer, "batch_size", 1))
        # Read when the Hello is built; the merge moves the base only to this step, so steps
        # trained while the exchange was in flight count in the next receipt.
        self._counted_step = self.runner.status.step
        return max(0, self._counted_step - self._step_at_exchange) * batch

    def _merge_remote(self, sent: np.ndarray, remote: np.ndarray, remote_step: int) -> None:
        """The exchange's merge rule (gossipd/mixing.py merge): C + w * (R - S)."""
        self.metrics.observe_mix(pair_distance(sent, remote))
        self.runner.merge_remote(sent, remote, remote_step)
        self._step_at_exchange = max(self._step_at_exchange, self._counted_step)

    def _merge_from(self, peer_id: str, sent: np.ndarray, remote: np.ndarray,
                    remote_step: int) -> None:
        self.defence.received(remote)
        self.metrics.observe_mix(pair_distance(sent, remote))
        self.runner.merge_remote(sent, remote, remote_step, peer=peer_id)
        self._step_at_exchange = max(self._step_at_exchange, self._counted_step)

    def peer_rows(self) -> list[dict[str, object]]:
        """`gossipctl peers`: the peer table plus each peer's reputation."""
        return self.defence.peer_rows()

    async def _counted(self, peer_id: str, attempt: Awaitable[object], *, served: bool) -> None:
        """Run one exchange; count its outcome for the node and the peer. Never raises for
        peer-caused failures: a protocol violation is a strike, a transport failure or timeout
        backs the peer off."""
        role = "served" if served else "initiated"
        t0 = trio.current_time()
        limit = self.exchange_deadline()
        try:
            outcome = await attempt
        except (ProtocolError, exchange.PeerRefused, TransportError, trio.TooSlowError) as exc:
            if isinstance(exc, trio.TooSlowError):
                self.deadline_state = deadlines.observe_timeout(self.deadline_state, limit)
                # A stalled link (a healed partition, a peer that froze): the next exchange
                # dials afresh instead of queueing behind TCP's retransmission backoff.
                await self.transport.disconnect(peer_id)
            self.metrics.observe_exchange(role, outcome_of(exc), trio.current_time() - t0)
            if served:
                self.stats.served_failed += 1
            else:
                self.stats.failed += 1
            self.stats.last_error = f"{peer_id[-8:]}: {type(exc).__name__}: {exc}"[:300]
            self.peers.record_exchange(peer_id, False, trio.current_time())
            if isinstance(exc, ProtocolError):
                count = self.peers.strike(peer_id)
                log.warning("strike %d for %s: %s", count, peer_id, exc)
            else:
                log.info("exchange with %s failed: %s: %s", peer_id, type(exc).__name__, exc)
        else:
            self.deadline_state = deadlines.observe(self.deadline_state, trio.current_time() - t0)
            self.metrics.observe_exchange(role, "ok", trio.current_time() - t0)
            self.stats.seconds_ok += trio.current_time() - t0
            if isinstance(outcome, exchange.ExchangeOutcome):
                self.stats.receipt_seconds += outcome.receipt_s
            if served:
                self.stats.served_ok += 1
            else:
                self.stats.ok += 1
            self.membership.prove(peer_id)
            self.peers.record_exchange(peer_id, True, trio.current_time())

    # -- outbound --
    async def _connect_and_initiate(self, peer_id: str) -> None:
        entry = self.peers.get(peer_id)
        if entry is not None and not self.transport.is_connected(peer_id):
            with trio.fail_after(self.config.network.dial_timeout_s):
                await self.transport.connect(peer_id, entry.addrs)
        await exchange.initiate(
            self.transport, peer_id, self.model, self.exchange_deadline(), self.stats.bytes
        )

    def exchange_deadline(self) -> float:
        """Seconds the next exchange may take (gossipd/deadlines.py)."""
        return deadlines.deadline(self.deadline_state, self.config.averaging.timeout_s)

    async def _average_once(self, peer_id: str) -> None:
        await self._counted(peer_id, self._connect_and_initiate(peer_id), served=False)

    async def average_now(self, peer_id: str | None = None) -> dict[str, Any]:
        """One exchange right away, with `peer_id` or a random live peer; its outcome."""
        if peer_id is None:
            peer_id = self.peers.pick(trio.current_time())
            if peer_id is None:
                return {"ok": False, "peer_id": None, "error": "no live peer to average with"}
        elif peer_id not in self.peers:
            return {"ok": False, "peer_id": peer_id, "error": "unknown peer (gossipctl peers)"}
        elif self.peers.is_banned(peer_id, trio.current_time()):
            return {"ok": False, "peer_id": peer_id, "error": "peer is banned (gossipctl peers "
                    "unban PEER)"}
        before = self.stats.ok
        await self._average_once(peer_id)
        ok = self.stats.ok > before
        return {"ok": ok, "peer_id": peer_id, "error": None if ok else self.stats.last_error}

    async def _averaging_loop(self) -> None:
        """Start one exchange per interval with a random live peer, in the background: a frozen
        peer holds one of MAX_OUTGOING slots until its deadline, not the whole loop. A peer
        already in an exchange we started is not picked again meanwhile."""
        busy: set[str] = set()
        async with trio.open_nursery() as nursery:
            while True:
                # Settings are read every round, so a reload takes effect at the next exchange.
                interval = self.config.averaging.interval_s
                await trio.sleep(interval * self.rng.uniform(1 - JITTER, 1 + JITTER))
                # diloco: one exchange per completed cycle of inner steps, one at a time
                slots = 1 if self.runner.rule.algorithm == "diloco" else MAX_OUTGOING
                if (not self.config.averaging.enabled or not self.participating
                        or len(busy) >= slots or not self.runner.outer_due):
                    continue
                peer_id = self.peers.pick(trio.current_time(), exclude=busy)
                if peer_id is not None:
                    busy.add(peer_id)
                    nursery.start_soon(self._average_in_slot, peer_id, busy)

    async def _average_in_slot(self, peer_id: str, busy: set[str]) -> None:
        try:
            await self._average_once(peer_id)
        finally:
            busy.discard(peer_id)

    async def _history_loop(self) -> None:
        while True:
            await trio.sleep(self.config.train.eval_interval_s)
            self.history.record(trio.current_time() - self.started_at, self.status())

    # -- checkpoints --
    async def save_checkpoint(self) -> dict[str, Any]:
        """Capture the whole training state between chunks and write it (worker thread); the
        ledger records the parameter hash. Returns the file's info."""
        async with self._save_lock:
            key = (self.runner.status.step, self.runner.status.mixes)
            ckpt = await self.runner.capture()
            info = await trio.to_thread.run_sync(
                checkpoint.save, self.checkpoint_dir, ckpt, self.config.node.checkpoint_keep)
            self._saved_key = key
        if self.provenance is not None:
            await self.provenance.append("checkpoint", {"params_hash": params_hash(ckpt.params),
                                                        "step": ckpt.step,
                                                        "file": info.path.name})
        log.info("checkpoint %s: step %d, %d bytes", info.path, info.step, info.size_bytes)
        return info.as_dict()

    async def autosave_checkpoint(self, why: str) -> dict[str, Any] | None:
        """An automatic save (periodic, shutdown): skipped while there is nothing new to save,
        logged and given up on failure."""
        status = self.runner.status
        key = (status.step, status.mixes)
        if key == (0, 0) or key == self._saved_key:
            return None
        try:
            return await self.save_checkpoint()
        except (OSError, ValueError, checkpoint.CheckpointError) as exc:
            log.error("%s checkpoint failed: %s", why, exc)
            return None

    async def _checkpoint_loop(self) -> None:
        interval = self.config.node.checkpoint_interval_s  # needs a restart to change
        if not self.autosave or interval <= 0:
            return
        while True:
            await trio.sleep(interval)
            await self.autosave_checkpoint("periodic")

    async def _discovery_loop(self) -> None:
        while True:
            await discovery.discovery_round(
                self.transport, self.peers, self.config.network.bootstrap,
                self.discovery_stats, trio.current_time, self.config.network.dial_timeout_s,
            )
            await trio.sleep(self.config.network.discovery_interval_s)

    # -- reload --
    def reload(self, new: Config) -> dict[str, list[str]]:
        """Apply the reloadable keys of `new` (config.RELOADABLE); report the rest as needing a
        restart, without applying any of them. Raises MembershipError for an unusable member
        list, leaving everything as it was."""
        applied, restart = config_mod.changes(self.config, new)
        if restart:  # the operator asked for it and will not get it: a warning
            log.warning("reload: needs a restart to apply: %s", ", ".join(restart))
        if not applied:
            return {"applied": [], "needs_restart": restart}
        if {"swarm.members", "swarm.members_file"} & set(applied):
            ids = list(new.swarm.members)
            if new.swarm.members_file is not None:
                ids += read_members_file(new.swarm.members_file)
            check_member_ids(ids)
            self.membership.members = frozenset(ids)
        merged = self.config  # restart-only keys keep their running values
        for key in applied:
            section, name = key.split(".", 1)
            part = dataclasses.replace(getattr(merged, section),
                                       **{name: getattr(getattr(new, section), name)})
            merged = dataclasses.replace(merged, **{section: part})
        self.config = merged
        self.runner.weight = self.config.averaging.weight
        self.runner.eval_interval_s = self.config.train.eval_interval_s
        logging.getLogger().setLevel(self.config.node.log_level.upper())
        log.info("reloaded: %s", ", ".join(applied))
        return {"applied": applied, "needs_restart": restart}

    def reload_from_file(self) -> dict[str, list[str]]:
        """Read the config file again and apply it (SIGHUP, `gossipctl config reload`).
        ConfigError/MembershipError leave the running config untouched."""
        if self.config_path is None:
            raise config_mod.ConfigError("this node was not started from a config file")
        return self.reload(config_mod.load(self.config_path))

    def status_line(self) -> str:
        """One line for `systemctl status` (sd_notify STATUS=)."""
        return node_status.status_line(self)

    # -- control --
    def status(self) -> dict[str, Any]:
        return node_status.status(self)

    metrics_content_type = METRICS_CONTENT_TYPE

    def render_metrics(self) -> str:
        status = self.status()
        status["strikes_total"] = self.peers.strikes_total()
        self.metrics.update(status)
        return self.metrics.render().decode()

    def params(self) -> dict[str, Any]:
        flat, step = self.runner.snapshot()
        return {
            "spec": self.model.spec,
            "step": step,
            "dtype": "<f4",
            "n": int(flat.size),
            "data": base64.b64encode(flat.astype("<f4").tobytes()).decode(),
        }

    async def run(
        self, control: trio.SocketListener | None,
        *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        from gossipd.commands import build_handlers
        from gossipd.control import serve_control

        self.transport.set_handler(AVG_PROTOCOL_ID, self._on_avg_stream)
        self.transport.set_handler(PEERS_PROTOCOL_ID, self._on_peers_stream)
        async with trio.open_nursery() as nursery:
            await nursery.start(self.runner.run_training)
            await nursery.start(self.runner.run_evaluation)
            nursery.start_soon(self._discovery_loop)
            nursery.start_soon(self._averaging_loop)
            nursery.start_soon(self._history_loop)
            nursery.start_soon(self._checkpoint_loop)
            if control is not None:
                await nursery.start(serve_control, control, build_handlers(self))
            address = config_mod.listen_address(self.config.node.metrics_listen)
            if address is not None:
                from gossipd.metrics_http import serve_metrics

                await nursery.start(serve_metrics, address[0], address[1],
                                    lambda: self.render_metrics().encode())
            address = config_mod.listen_address(self.config.node.dashboard_listen)
            if address is not None:
                from gossipd.dashboard import node_routes
                from gossipd.metrics_http import serve_http

                port = await nursery.start(
                    lambda task_status: serve_http(*address, node_routes(self),
                                                   what="dashboard", task_status=task_status))
                self.dashboard_url = f"http://{address[0]}:{port}/"
            task_status.started()
