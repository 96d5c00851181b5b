"""`gossipd --config PATH`: the daemon's entry point.

Exit status: 0 after a clean stop (SIGTERM/SIGINT), 2 for a config/usage error (the message names
the key and what was expected), 1 for any other start-up failure (message says what to fix).

Start order matters for readiness: identity -> trainer (JAX import, data shard) -> libp2p host ->
control socket. A client that can talk to the control socket therefore talks to a node that is
listening for peers and training.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from pathlib import Path

import trio

from gossipd import config as config_mod
from gossipd.identity import IdentityError, load_or_create_seed, peer_id_for_seed
from gossipd.membership import Membership, MembershipError
from gossipd.membership import build as build_membership

log = logging.getLogger("gossipd")

EPILOG = """\
examples:
  gossipd --config /etc/gossipd/gossipd.toml      run a node (systemd does this for you)
  gossipd --config node.toml --check              validate a config file and exit
  gossipctl status                                ask a running node how it is doing

config: TOML with sections [node] [network] [averaging] [train]; see README.md for every key.
exit status: 0 clean stop, 1 start-up failure, 2 config error.
"""


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # py-libp2p logs routine dial failures at ERROR and some warnings on the root logger;
    # the daemon reports those failures itself, once, with the peer named.
    libp2p_level = logging.DEBUG if level == "debug" else logging.CRITICAL
    for name in ("libp2p", "multiaddr", "async_service", "jax", "absl"):
        logging.getLogger(name).setLevel(max(libp2p_level, logging.getLogger().level))


def _build_trainer(cfg: config_mod.Config) -> object:
    from gossipd.data import load_shard
    from gossipd.trainer import Trainer, TrainHyper

    t = cfg.train
    d = TrainHyper()
    hyper = TrainHyper(
        hidden=t.hidden,
        lr=d.lr if t.lr is None else t.lr,
        lr_min=d.lr_min if t.lr_min is None else t.lr_min,
        decay_steps=d.decay_steps if t.decay_steps is None else t.decay_steps,
        batch_size=d.batch_size if t.batch_size is None else t.batch_size,
        l2=d.l2 if t.l2 is None else t.l2,
        momentum=d.momentum if t.momentum is None else t.momentum,
    )
    shard = load_shard(
        t.task, num_shards=t.num_shards, shard_index=t.shard_index,
        partition=t.parsed_partition, seed=t.seed,
    )
    return Trainer(t.task, shard, hyper, t.seed)


async def _run(cfg: config_mod.Config, seed: bytes, membership: Membership) -> None:
    from gossipd.control import bind_control_socket, remove_socket
    from gossipd.daemon import Node
    from gossipd.exchange import wall_clock_ms
    from gossipd.replaylog import FILE_NAME, ReplayLog
    from gossipd.runner import ModelRunner
    from gossipd.transport import open_transport

    trainer = _build_trainer(cfg)
    runner = ModelRunner(
        trainer,  # type: ignore[arg-type]
        cfg.train.steps_per_second, cfg.train.eval_interval_s, cfg.averaging.weight,
    )
    socket_path = cfg.node.socket_path
    replay = ReplayLog(cfg.node.state_dir / FILE_NAME,
                       int(cfg.averaging.replay_window_s * 1000), wall_clock_ms())
    log.info("replay table: %d exchange id(s) restored from %s", replay.restored, replay.path)
    signals_ctx = trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT)
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
                                replay=replay)
                    await nursery.start(node.run, listener)
                    log.info("control socket %s; node ready", socket_path)
                    async for signum in signals:
                        log.info("received %s, stopping", signal.Signals(signum).name)
                        nursery.cancel_scope.cancel()
                        break
            finally:
                remove_socket(socket_path)
    log.info("stopped")


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _startup_problem(exc: BaseException) -> str | None:
    """A start-up failure the operator can fix (socket in use, port taken), or None for a bug."""
    from gossipd.control import ControlSocketError

    for leaf in _leaves(exc):
        if isinstance(leaf, ControlSocketError):
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
    parser.add_argument("--config", required=True, type=Path, help="path of the TOML config")
    parser.add_argument("--check", action="store_true", help="validate the config and exit")
    args = parser.parse_args(argv)
    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as exc:
        print(f"gossipd: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(f"gossipd: {args.config} is valid")
        return 0
    _setup_logging(cfg.node.log_level)
    try:
        seed = load_or_create_seed(cfg.node.state_dir)
    except (IdentityError, OSError) as exc:
        print(f"gossipd: {exc}", file=sys.stderr)
        return 1
    try:
        membership = build_membership(
            cfg.swarm.open, cfg.swarm.members, cfg.swarm.members_file, cfg.swarm.secret_file,
            self_id=peer_id_for_seed(seed),
        )
    except MembershipError as exc:
        print(f"gossipd: {exc}", file=sys.stderr)
        return 2
    try:
        trio.run(_run, cfg, seed, membership)
    except KeyboardInterrupt:  # a second Ctrl-C before the signal receiver existed
        return 130
    except Exception as exc:
        problem = _startup_problem(exc)
        if problem is None:
            raise
        print(f"gossipd: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
