"""Exact resume from a checkpoint and late joiners: the real trainer through the runner's
capture and resume, nodes over the in-memory transport, and real processes (SIGKILL, restart)."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
import trio
import trio.testing

from gossipd import checkpoint, cli
from gossipd.commands import build_handlers
from gossipd.config import AveragingConfig, Config, NetworkConfig, NodeConfig, TrainConfig
from gossipd.daemon import Node
from gossipd.data import Partition, load_shard
from gossipd.runner import JOIN_WAIT_S, ModelRunner
from gossipd.trainer import Trainer, TrainHyper, TrainState
from tests.fakes import MemoryNetwork
from tests.test_integration import env, wait_status
from tests.test_node import FakeTrainer

TASK = "digits-mlp"


def real_trainer() -> Trainer:
    shard = load_shard(TASK, num_shards=4, shard_index=1, partition=Partition("iid"), seed=0)
    return Trainer(TASK, shard, TrainHyper(), seed=0)


def assert_same_state(a: TrainState, b: TrainState) -> None:
    assert a.step == b.step
    np.testing.assert_array_equal(np.asarray(a.params), np.asarray(b.params))
    la, lb = jax.tree_util.tree_leaves(a.opt_state), jax.tree_util.tree_leaves(b.opt_state)
    assert jax.tree_util.tree_structure(a.opt_state) == jax.tree_util.tree_structure(
        b.opt_state) and la
    for x, y in zip(la, lb, strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    np.testing.assert_array_equal(jax.random.key_data(a.rng), jax.random.key_data(b.rng))


async def test_resume_is_bit_exact(tmp_path: Path, autojump_clock: trio.testing.MockClock
                                   ) -> None:
    trainer = real_trainer()
    first = ModelRunner(trainer, 40, 1.0, 0.5, join="mix")
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run_training)
        while first.status.step < 30:
            await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    saved = await first.capture()
    n, m = saved.step, 25
    checkpoint.save(tmp_path, saved)

    second = ModelRunner(real_trainer(), 40, 1.0, 0.5, join="pull")  # a fresh process's
    info = await trio.to_thread.run_sync(second.resume_from, tmp_path)
    assert info is not None and info.step == n and not second.joining
    assert second.resumed_from == {"step": n, "path": str(info.path),
                                   "params_hash": saved.params_hash}
    assert_same_state(second.state, first.state)
    resumed, _ = second.trainer.run_steps(second.state, m)
    straight, _ = trainer.run_steps(trainer.init(), n + m)
    assert_same_state(resumed, straight)


def node(net: MemoryNetwork, name: str, value: float, join: str | None, *,
         bootstrap: tuple[str, ...] = (), state_dir: Path = Path("/nonexistent"),
         interval: float = 60.0) -> Node:
    transport = net.transport(name)
    cfg = Config(
        node=NodeConfig(state_dir=state_dir, checkpoint_interval_s=interval, checkpoint_keep=3),
        network=NetworkConfig(listen=("/memory",), bootstrap=bootstrap, dial_timeout_s=1.0,
                              discovery_interval_s=0.5),
        averaging=AveragingConfig(interval_s=0.2, timeout_s=2.0, robust="none"),
        train=TrainConfig(steps_per_second=40, eval_interval_s=1.0),
    )
    runner = ModelRunner(FakeTrainer(value), 40, 1.0, 0.5,  # type: ignore[arg-type]
                         join=join)
    return Node(cfg, transport, runner, transport.seed, random.Random(name),
                autosave=state_dir != Path("/nonexistent"))


async def test_late_joiner_adopts_the_swarm_model(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0.02  # steps run in worker threads; see below
    net = MemoryNetwork()
    old = node(net, "old", 1.0, "pull")
    new = node(net, "new", 0.0, "pull", bootstrap=(old.transport.listen_addrs()[0],))
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        await nursery.start(old.run, None)
        await trio.sleep(JOIN_WAIT_S - 1)  # alone: it waits, then trains by itself
        assert old.runner.status.step == 0 and old.status()["training"] == "joining"
        with trio.fail_after(30):
            while old.runner.status.step == 0:
                await trio.sleep(0.1)
        assert old.status()["training"] == "running"
        await nursery.start(new.run, None)
        assert new.status()["training"] == "joining" and new.runner.status.step == 0
        with trio.fail_after(JOIN_WAIT_S / 2):
            while new.runner.status.adopted_step is None:
                await trio.sleep(0.05)
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    # the newcomer took the trained model outright; the trained node ignored the fresh one
    np.testing.assert_array_equal(new.runner.params, 1.0)
    np.testing.assert_array_equal(old.runner.params, 1.0)
    assert old.runner.status.fresh_ignored >= 1 and new.runner.status.step > 0
    assert new.status()["adopted_step"] == new.runner.status.adopted_step > 0
    assert new.status()["training"] == "running" and new.stats.ok + new.stats.served_ok > 2


async def test_periodic_checkpoints_and_status_after_resume(
        tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    # Saves run in worker threads: the clock jumps only after 20 ms of real idle time.
    mock_clock.autojump_threshold = 0.02
    net = MemoryNetwork()
    a = node(net, "a", 2.0, "pull", state_dir=tmp_path, interval=1.0)
    ckpt_dir = tmp_path / checkpoint.DIR_NAME
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        await nursery.start(a.run, None)
        await trio.sleep(JOIN_WAIT_S - 1)
        assert not ckpt_dir.exists()  # an untouched model is never saved
        with trio.fail_after(60):
            while a._saved_key is None or a._saved_key[0] < 200:
                await trio.sleep(0.5)
        assert len(checkpoint.list_checkpoints(ckpt_dir)) == 3  # checkpoint_keep
        a.runner.pause()  # after the running chunk, if any; then saves catch up and stop
        with trio.fail_after(60):
            while a._saved_key != (a.runner.status.step, a.runner.status.mixes):
                await trio.sleep(0.5)
        paused = checkpoint.list_checkpoints(ckpt_dir)
        await trio.sleep(5)
        assert checkpoint.list_checkpoints(ckpt_dir) == paused  # nothing new: no new file
        saved: dict[str, Any] = await build_handlers(a)["checkpoint.save"]({})
        nursery.cancel_scope.cancel()
    assert saved["step"] == a.runner.status.step and len(saved["params_hash"]) == 64
    b = node(MemoryNetwork(), "a", 0.0, "pull", state_dir=tmp_path)
    assert b.status()["resumed_from"] is None
    await trio.to_thread.run_sync(b.runner.resume_from, ckpt_dir)
    assert b.status()["resumed_from"] == {"step": saved["step"], "path": saved["path"],
                                          "params_hash": saved["params_hash"]}
    assert b.status()["training"] == "running"  # resumed: no pulling
    np.testing.assert_array_equal(b.runner.params, 2.0)


@pytest.mark.integration
def test_sigkill_then_restart_resumes_the_saved_checkpoint(tmp_path: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="gsd-") as short:
        sock = Path(short) / "c.sock"
        config = tmp_path / "node.toml"
        config.write_text(
            f'[swarm]\nopen = true\n[node]\nstate_dir = "state"\ncontrol_socket = "{sock}"\n'
            'checkpoint_interval_s = 3600\n[network]\nlisten = ["/ip4/127.0.0.1/tcp/0"]\n'
            '[averaging]\njoin = "mix"\n[train]\nsteps_per_second = 20\n')
        ckpt_dir = tmp_path / "state" / checkpoint.DIR_NAME
        log = tmp_path / "gossipd.log"

        def start() -> subprocess.Popen[bytes]:
            with open(log, "ab") as out:
                return subprocess.Popen(
                    [sys.executable, "-m", "gossipd.main", "--config", str(config)],
                    stdout=out, stderr=subprocess.STDOUT, env=env())

        proc = start()
        try:
            assert wait_status(sock, proc, log)["resumed_from"] is None
            deadline = time.monotonic() + 30
            while cli.request(sock, "status")["step"] == 0 and time.monotonic() < deadline:
                time.sleep(0.1)
            saved = cli.request(sock, "checkpoint.save")
            assert saved["step"] > 0 and len(saved["params_hash"]) == 64
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            sock.unlink(missing_ok=True)  # a killed node leaves its socket behind

            proc = start()
            status = wait_status(sock, proc, log)
            assert status["resumed_from"] == {"step": saved["step"], "path": saved["path"],
                                              "params_hash": saved["params_hash"]}
            assert status["step"] >= saved["step"] and status["training"] == "running"
            proc.send_signal(signal.SIGTERM)  # a clean stop saves once more
            assert proc.wait(timeout=15) == 0
            infos = checkpoint.list_checkpoints(ckpt_dir)
            assert len(infos) == 2 and infos[0].step >= saved["step"]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
