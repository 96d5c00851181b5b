"""Control commands: what `gossipctl` can ask of a running node, one handler per command.

Wire: the request is a JSON object with "cmd" and the command's arguments (gossipd/control.py).

  status                      node, training and exchange counters
  params                      the current parameters (base64 float32)
  peers                       the peer table
  peers.add     addr          learn a peer from '/ip4/.../tcp/.../p2p/<peer id>'
  peers.remove  peer          forget a peer (it may be learned again by peer exchange)
  peers.ban     peer [seconds]   refuse a peer both ways (for `seconds`, default until unban)
  peers.unban   peer
  train         action        start | pause | resume | stop
  average-now   [peer]        one exchange right away; its outcome
  checkpoint.save             write the whole training state to <state_dir>/checkpoints/; its
                              step, path and params_hash
  checkpoint.list             saved checkpoints, most recent first
  config.show                 the running configuration, every key
  config.reload               read the config file again (like SIGHUP)
  history       [since]       time series sampled every train.eval_interval_s (bounded)
  evaluate      data          test accuracy of the given parameters (base64 float32)
  metrics                     Prometheus text format
  log-level     level         debug | info | warning | error (until restart or reload)
  provenance                  the ledger's lineage: contributors, exchanges, data, checkpoints
  provenance.seal             seal and fsync the ledger; its path and sealed size (for export)

Rules: arguments are validated here and a bad one is a ClientError naming the argument and what
was expected; handlers never touch the network except `average-now`, which runs under the
node's exchange deadlines; file I/O runs in a worker thread.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import trio

from gossipd import checkpoint
from gossipd import config as config_mod
from gossipd.control import ClientError, Handler
from gossipd.membership import MembershipError
from gossipd.peers import split_p2p_addr

if TYPE_CHECKING:
    from gossipd.daemon import Node

LOG_LEVELS = ("debug", "info", "warning", "error")
TRAIN_ACTIONS = ("start", "pause", "resume", "stop")


def _str_arg(req: dict[str, Any], name: str, choices: tuple[str, ...] | None = None) -> str:
    value = req.get(name)
    if not isinstance(value, str) or not value:
        raise ClientError(f"argument {name!r} must be a non-empty string")
    if choices is not None and value not in choices:
        raise ClientError(f"argument {name!r} must be one of {', '.join(choices)}; got {value!r}")
    return value


def _peer_arg(node: Node, req: dict[str, Any]) -> str:
    peer = _str_arg(req, "peer")
    if not peer.isalnum() or not 20 <= len(peer) <= 128:
        raise ClientError(f"{peer!r} is not a peer ID (12D3KooW...)")
    if peer == node.transport.peer_id:
        raise ClientError("that is this node's own peer ID")
    return peer


def build_handlers(node: Node) -> dict[str, Handler]:
    ckpt_dir = node.checkpoint_dir

    def now() -> float:
        return trio.current_time()

    def peers_add(req: dict[str, Any]) -> Any:
        addr = _str_arg(req, "addr")
        try:
            base, peer = split_p2p_addr(addr)
        except ValueError as exc:
            raise ClientError(str(exc)) from None
        if not node.membership.allows(peer):
            raise ClientError(f"{peer} is not a member of this swarm (swarm.members)")
        new = node.peers.add(peer, [base], now())
        entry = node.peers.get(peer)
        if entry is None:
            raise ClientError(f"peer table is full ({node.peers.max_peers}: network.max_peers)")
        return {"peer_id": peer, "new": new, "addrs": entry.addrs}

    def peers_remove(req: dict[str, Any]) -> Any:
        peer = _peer_arg(node, req)
        if not node.peers.remove(peer):
            raise ClientError(f"unknown peer {peer}")
        return {"peer_id": peer, "removed": True}

    def peers_ban(req: dict[str, Any]) -> Any:
        peer = _peer_arg(node, req)
        seconds = req.get("seconds")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(
                seconds, int | float) or not 0 < seconds <= 10**9):
            raise ClientError("argument 'seconds' must be a positive number")
        node.peers.ban(peer, now(), None if seconds is None else float(seconds))
        return {"peer_id": peer, "banned_for_s": seconds}

    def peers_unban(req: dict[str, Any]) -> Any:
        peer = _peer_arg(node, req)
        if not node.peers.unban(peer):
            raise ClientError(f"{peer} is not banned")
        return {"peer_id": peer, "banned": False}

    def train(req: dict[str, Any]) -> Any:
        action = _str_arg(req, "action", TRAIN_ACTIONS)
        if action in ("start", "resume"):
            node.runner.resume()
        else:
            node.runner.pause()
        if action in ("start", "stop"):
            node.participating = action == "start"
        return {"training": node.status()["training"]}

    async def average_now(req: dict[str, Any]) -> Any:
        peer = None if req.get("peer") is None else _peer_arg(node, req)
        return await node.average_now(peer)

    async def checkpoint_save(_req: dict[str, Any]) -> Any:
        try:
            return await node.save_checkpoint()
        except OSError as exc:
            raise ClientError(f"checkpoint not saved: {exc}") from None

    async def provenance(_req: dict[str, Any]) -> Any:
        if node.provenance is None:
            raise ClientError("this node keeps no provenance ledger")
        names = {node.transport.peer_id_bytes(p): p for p in node.peers.known()}
        return await node.provenance.lineage(names)

    async def provenance_seal(_req: dict[str, Any]) -> Any:
        if node.provenance is None:
            raise ClientError("this node keeps no provenance ledger")
        try:
            return await node.provenance.sealed_extent()
        except OSError as exc:
            raise ClientError(f"the ledger could not be sealed: {exc}") from None

    async def checkpoint_list(_req: dict[str, Any]) -> Any:
        infos = await trio.to_thread.run_sync(checkpoint.list_checkpoints, ckpt_dir)
        return [c.as_dict() for c in infos]

    def config_reload(_req: dict[str, Any]) -> Any:
        try:
            return node.reload_from_file()
        except (config_mod.ConfigError, MembershipError) as exc:
            raise ClientError(f"reload refused, running config unchanged: {exc}") from None

    async def evaluate(req: dict[str, Any]) -> Any:
        data = _str_arg(req, "data")
        try:
            flat = np.frombuffer(base64.b64decode(data, validate=True), dtype="<f4")
        except ValueError:
            raise ClientError("argument 'data' must be base64 of little-endian float32") from None
        if flat.size != node.model.num_params or not np.all(np.isfinite(flat)):
            raise ClientError(f"expected {node.model.num_params} finite float32 parameters "
                              f"({node.model.spec}), got {flat.size}")
        accuracy = await trio.to_thread.run_sync(node.runner.trainer.evaluate, flat.copy())
        return {"accuracy": accuracy}

    def history(req: dict[str, Any]) -> Any:
        since = req.get("since", -1.0)
        if isinstance(since, bool) or not isinstance(since, int | float):
            raise ClientError("argument 'since' must be a number of seconds")
        return node.history.since(float(since))

    def log_level(req: dict[str, Any]) -> Any:
        level = _str_arg(req, "level", LOG_LEVELS)
        logging.getLogger().setLevel(level.upper())
        return {"log_level": level}

    handlers: dict[str, Callable[[dict[str, Any]], Any]] = {
        "status": lambda _req: node.status(),
        "params": lambda _req: node.params(),
        "peers": lambda _req: node.peer_rows(),
        "peers.add": peers_add,
        "peers.remove": peers_remove,
        "peers.ban": peers_ban,
        "peers.unban": peers_unban,
        "train": train,
        "average-now": average_now,
        "checkpoint.save": checkpoint_save,
        "checkpoint.list": checkpoint_list,
        "config.show": lambda _req: config_mod.flatten(node.config),
        "config.reload": config_reload,
        "history": history,
        "evaluate": evaluate,
        "metrics": lambda _req: {"content_type": node.metrics_content_type,
                                 "text": node.render_metrics()},
        "log-level": log_level,
        "provenance": provenance,
        "provenance.seal": provenance_seal,
    }
    return handlers
