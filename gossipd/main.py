"""`gossipd --config PATH`: the daemon's entry point.

Exit status: 0 after a clean stop (SIGTERM/SIGINT), 2 for a config/usage error (the message names
the key and what was expected), 1 for any other start-up failure (message says what to fix).

Start order matters for readiness: identity -> trainer (JAX import, data shard) -> libp2p host ->
control socket. A client that can talk to the control socket therefore talks to a node that is
listening for peers and training.

Checkpoints: before the node serves anyone it resumes from the newest checkpoint in
<state_dir>/checkpoints that fits the model (gossipd/checkpoint.py; a damaged newest file falls
back to the previous one). Without one, `averaging.join` decides how it starts (gossipd/runner.py).
It saves every node.checkpoint_interval_s and once more after SIGTERM/SIGINT, before exiting.

Under systemd (Type=notify, see systemd/): READY=1 goes out only after all of that, STATUS= carries
Node.status_line() every few seconds, WATCHDOG=1 is sent from the event loop itself (so a stalled
loop gets the node restarted), STOPPING=1 on SIGTERM/SIGINT. SIGHUP reloads the config file
(RELOADING=1 ... READY=1 around it); a bad file is logged and the running config is kept.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from gossipd import config as config_mod
from gossipd.identity import IdentityError, create_key_file, load_seed, peer_id_for_seed
from gossipd.logs import reclaim_library_loggers, setup_logging
from gossipd.membership import Membership, MembershipError
from gossipd.membership import build as build_membership
from gossipd.sdnotify import Notifier, watchdog_interval

if TYPE_CHECKING:
    from gossipd.daemon import Node
    from gossipd.provenance import Provenance
    from gossipd.runner import ModelRunner

log = logging.getLogger("gossipd")

EPILOG = """\
examples:
  gossipd --config /etc/gossipd/gossipd.toml      run a node (systemd does this for you)
  gossipd --config node.toml --check              validate a config file and exit
  gossipd --new-key /etc/gossipd/identity.key     create a node key (systemd LoadCredential=)
  gossipctl status                                ask a running node how it is doing

config: TOML with sections [node] [swarm] [network] [averaging] [train]; see README.md.
signals: SIGTERM/SIGINT stop cleanly, SIGHUP reloads the config file (peers, intervals, log level).
exit status: 0 clean stop, 1 start-up failure, 2 config error.
"""

# How often STATUS= is refreshed for `systemctl status`.
STATUS_INTERVAL_S = 5.0
EXIT_STACKS_AFTER_S = 8.0  # interpreter exit taking longer than this logs every thread's stack
# Each 20,000 ledger records checked at start (~1 s) asks systemd for this much more time.
LEDGER_CHECK_EXTEND_S = 60.0


def _build_trainer(cfg: config_mod.Config) -> object:
    from gossipd.tasks import TaskContext
    from gossipd.trainer import make_trainer

    t = cfg.train
    # Only what the config set: each task keeps its own tuned defaults for the rest.
    hyper = {k: getattr(t, k) for k in ("lr", "lr_min", "decay_steps", "batch_size",
                                         "momentum", "l2") if getattr(t, k) is not None}
    hyper["hidden"] = t.hidden
    ctx = TaskContext(shard_index=t.shard_index, num_shards=t.num_shards,
                      partition=t.partition, seed=t.seed, data_path=t.data_path,
                      options=dict(t.options), hyper=hyper)
    trainer = make_trainer(t.task, ctx, t.compute_dtype)
    trainer.warm_up(trainer.init())
    return trainer


def _open_provenance(cfg: config_mod.Config, seed: bytes, trainer: Any,
                     notifier: Notifier) -> Provenance:
    """Open (and repair) the ledger and record the data set it trains on, if new. Checking a
    long ledger takes a while (one pass, ~40 us a record): systemd is told it is progressing,
    so a start never runs into TimeoutStartSec= however long the ledger has grown."""
    from gossipd.ledger import FILE_NAME as LEDGER_FILE
    from gossipd.provenance import Provenance
    from protocol.crypto import peer_id_from_ed25519_public_key, public_key_from_seed

    def progress(records: int) -> None:
        notifier.extend_timeout(LEDGER_CHECK_EXTEND_S, f"checking the ledger: {records} records")

    t0 = time.monotonic()
    provenance = Provenance.open(cfg.node.state_dir / LEDGER_FILE, seed,
                                 peer_id_from_ed25519_public_key(public_key_from_seed(seed)),
                                 progress=progress)
    ledger = provenance.ledger
    log.info("ledger %s: %d records, %d read and checked in %.2f s%s", ledger.path,
             len(ledger), ledger.checked_at_open, time.monotonic() - t0,
             " (those before covered by its index, ledger.idx)" if ledger.resumed else "")
    if ledger.dropped_bytes:
        log.warning("ledger %s: dropped a torn last record (%d bytes) left by a crash",
                    ledger.path, ledger.dropped_bytes)
    if ledger.sealed_at_open:
        log.info("ledger %s: sealed %d records a crash left unsealed (checked, none lost)",
                 ledger.path, ledger.sealed_at_open)
    task = {k: v for k, v in config_mod.flatten(cfg).items() if k.startswith("train.")}
    provenance.record_data_sync(trainer.data_hash, trainer.data_samples, task)
    seq, head = ledger.head
    log.info("ledger %s: %d records, head %d %s", ledger.path, len(ledger), seq,
             head.hex()[:16])
    return provenance


def _reload(node: Node, notifier: Notifier) -> None:
    """SIGHUP: apply the config file again. Never stops the node: a file that does not load or
    validate is logged as an error and the running config stays."""
    notifier.reloading()
    try:
        result = node.reload_from_file()
    except (config_mod.ConfigError, MembershipError) as exc:
        log.error("reload: %s; keeping the running config", exc)
    except Exception:
        log.exception("reload failed; keeping the running config")
    else:
        if not result["applied"] and not result["needs_restart"]:
            log.info("reload of %s: nothing changed", node.config_path)
    notifier.ready(node.status_line())


async def _report(node: Node, notifier: Notifier, watchdog_s: float | None) -> None:
    """STATUS= every few seconds and, with a watchdog, WATCHDOG=1 at half its timeout. Both run
    on the event loop, so a loop that stops running also stops the pings."""
    ping = None if watchdog_s is None else watchdog_s / 2
    next_status = trio.current_time() + STATUS_INTERVAL_S
    next_ping = trio.current_time()
    while True:
        now = trio.current_time()
        if ping is not None and now >= next_ping:
            notifier.watchdog()
            next_ping = now + ping
        if now >= next_status:
            notifier.status(node.status_line())
            next_status = now + STATUS_INTERVAL_S
        await trio.sleep_until(min(next_status, next_ping) if ping is not None else next_status)


async def _run(cfg: config_mod.Config, seed: bytes, membership: Membership,
               config_path: Path | None = None, notifier: Notifier | None = None) -> None:
    from gossipd.compress import ErrorFeedback
    from gossipd.control import bind_control_socket, remove_socket
    from gossipd.daemon import Node
    from gossipd.exchange import wall_clock_ms
    from gossipd.replaylog import FILE_NAME, ReplayLog
    from gossipd.runner import AveragingRule, ModelRunner
    from gossipd.transport import open_transport

    reclaim_library_loggers()  # importing libp2p detached its logger; see gossipd/logs.py
    notifier = notifier or Notifier({})
    trainer = _build_trainer(cfg)
    a = cfg.averaging
    runner = ModelRunner(
        trainer,  # type: ignore[arg-type]
        cfg.train.steps_per_second, cfg.train.eval_interval_s, a.weight,
        join=a.join,
        rule=AveragingRule(a.algorithm, a.inner_steps, a.outer_lr, a.outer_momentum,
                           a.staleness_halflife),
        error_feedback=ErrorFeedback(a.compression),
    )
    await _resume(runner, cfg)
    socket_path = cfg.node.socket_path
    replay = ReplayLog(cfg.node.state_dir / FILE_NAME,
                       int(cfg.averaging.replay_window_s * 1000), wall_clock_ms())
    log.info("replay table: %d exchange id(s) restored from %s", replay.restored, replay.path)
    provenance = _open_provenance(cfg, seed, trainer, notifier)
    signals_ctx = trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    with contextlib.closing(replay), signals_ctx as signals:
        async with open_transport(
            seed, cfg.network.listen, membership.allows, membership.refuse
        ) as transport:
            log.info("swarm membership: %s", membership.mode)
            log.info("peer id %s", transport.peer_id)
            for addr in transport.listen_addrs():
                log.info("listening on %s", addr)
            listener = await bind_control_socket(socket_path)
            try:
                async with trio.open_nursery() as nursery:
                    node = Node(cfg, transport, runner, seed, membership=membership,
                                replay=replay, config_path=config_path,
                                provenance=provenance, autosave=True)
                    await nursery.start(node.run, listener)
                    log.info("control socket %s; node ready", socket_path)
                    notifier.ready(node.status_line())
                    nursery.start_soon(_report, node, notifier, watchdog_interval())
                    async for signum in signals:
                        if signum == signal.SIGHUP:
                            _reload(node, notifier)
                            continue
                        log.info("received %s, stopping", signal.Signals(signum).name)
                        notifier.stopping()
                        nursery.cancel_scope.cancel()
                        break
                # A clean stop: every task has ended, so the state is the last whole chunk.
                if cfg.node.checkpoint_interval_s > 0:
                    await node.autosave_checkpoint("shutdown")
                await provenance.flush()  # every queued ledger record on disk before exit
            finally:
                remove_socket(socket_path)
    log.info("stopped")


async def _resume(runner: ModelRunner, cfg: config_mod.Config) -> None:
    from gossipd.checkpoint import DIR_NAME

    info = await trio.to_thread.run_sync(runner.resume_from, cfg.node.state_dir / DIR_NAME)
    if info is not None:
        log.info("resumed from checkpoint %s at step %d", info.path, info.step)
    elif cfg.averaging.join == "pull":
        log.info("no checkpoint to resume from; taking a peer's model before training")
    else:
        log.info("no checkpoint to resume from; training from the start")


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _startup_problem(exc: BaseException) -> str | None:
    """A start-up failure the operator can fix (socket in use, port taken), or None for a bug."""
    from gossipd.control import ControlSocketError
    from gossipd.ledger import LedgerError
    from gossipd.tasks import TaskError

    for leaf in _leaves(exc):
        if isinstance(leaf, ControlSocketError | LedgerError | TaskError):
            return str(leaf)
        if isinstance(leaf, OSError):
            return f"{leaf} (is another node using the same port or state directory?)"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gossipd",
        description="gossipd node: trains a model on this machine's private data and averages "
        "parameters with random peers over libp2p (encrypted, no central server).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="path of the TOML config (required)")
    parser.add_argument("--check", action="store_true", help="validate the config and exit")
    parser.add_argument("--new-key", type=Path, metavar="PATH",
                        help="create a new identity key file (mode 0600), print its peer ID and "
                        "exit; never replaces an existing file")
    args = parser.parse_args(argv)
    if args.new_key is not None:
        try:
            seed = create_key_file(args.new_key)
        except (IdentityError, OSError) as exc:
            print(f"gossipd: {exc}", file=sys.stderr)
            return 1
        print(peer_id_for_seed(seed))
        return 0
    if args.config is None:
        parser.error("--config is required")
    notifier = Notifier()
    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as exc:
        print(f"gossipd: {exc}", file=sys.stderr)
        notifier.status(f"config error: {exc}")
        return 2
    if args.check:
        print(f"gossipd: {args.config} is valid")
        return 0
    setup_logging(cfg.node.log_level)
    try:
        seed, key_path = load_seed(cfg.node.state_dir)
    except (IdentityError, OSError) as exc:
        print(f"gossipd: {exc}", file=sys.stderr)
        notifier.status(f"start-up failed: {exc}")
        return 1
    log.info("identity key %s", key_path)
    try:
        membership = build_membership(
            cfg.swarm.open, cfg.swarm.members, cfg.swarm.members_file, cfg.swarm.secret_file,
            self_id=peer_id_for_seed(seed),
        )
    except MembershipError as exc:
        print(f"gossipd: {exc}", file=sys.stderr)
        notifier.status(f"config error: {exc}")
        return 2
    # A reload request before the node runs has nothing to reload, and SIGHUP's default action
    # would kill the process; the node's own signal receiver takes over once it runs.
    previous_sighup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        trio.run(_run, cfg, seed, membership, args.config, notifier)
    except KeyboardInterrupt:  # a second Ctrl-C before the signal receiver existed
        return 130
    except Exception as exc:
        problem = _startup_problem(exc)
        if problem is None:
            raise
        print(f"gossipd: {problem}", file=sys.stderr)
        notifier.status(f"start-up failed: {problem}")
        return 1
    finally:
        notifier.close()
        signal.signal(signal.SIGHUP, previous_sighup)
        # The node has stopped; what is left is the interpreter's own exit. Should that hang
        # (a library thread that never ends), the stacks of every thread go to the log before
        # the service manager's SIGKILL, so the cause is on record.
        faulthandler.dump_traceback_later(EXIT_STACKS_AFTER_S, exit=False)
    return 0


def entry() -> None:
    """The `gossipd` command: main(), then an immediate exit. Once the node has stopped (state
    saved, files closed, logs flushed below) nothing is left to do, but the interpreter's own
    teardown garbage-collects every JAX and libp2p object first: seconds of CPU, and with many
    nodes on few cores it outlasted a 15 s stop timeout. os._exit skips it."""
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
