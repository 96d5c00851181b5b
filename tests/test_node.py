"""The node over the in-memory transport: exchange, discovery and faults, on trio's clock."""

from __future__ import annotations

import random
from typing import Any, NamedTuple

import numpy as np
import pytest
import trio
import trio.testing

from gossipd import deadlines
from gossipd.config import AveragingConfig, Config, NetworkConfig, TrainConfig
from gossipd.daemon import Node
from gossipd.membership import Membership
from gossipd.netapi import TransportError
from gossipd.runner import ModelRunner
from protocol.errors import ProtocolError
from protocol.replay import ReplayGuard
from tests.fakes import MemoryNetwork, MemoryTransport


class FakeState(NamedTuple):
    params: np.ndarray
    step: int


class FakeTrainer:
    """A numpy stand-in for gossipd.trainer.Trainer: steps count, parameters stay put."""

    def __init__(self, value: float, n: int = 6, spec: str = "fake/6") -> None:
        self.value = value
        self.num_params = n
        self.spec = spec
        self.device = "cpu (fake)"

    def init(self) -> FakeState:
        return FakeState(np.full(self.num_params, self.value, np.float32), 0)

    def run_steps(self, state: FakeState, n: int) -> tuple[FakeState, float]:
        return state._replace(step=state.step + n), 1.0

    def evaluate(self, flat: np.ndarray) -> float:
        return float(flat.mean())

    def get_params(self, state: FakeState) -> np.ndarray:
        return np.array(state.params, dtype=np.float32)

    def with_params(self, state: FakeState, flat: np.ndarray) -> FakeState:
        return state._replace(params=np.array(flat, dtype=np.float32))


def make_node(net: MemoryNetwork, name: str, value: float, *, bootstrap: tuple[str, ...] = (),
              enabled: bool = True, spec: str = "fake/6", timeout: float = 2.0,
              swarm_key: bytes | None = None, replay: ReplayGuard | None = None,
              robust: str = "none") -> Node:
    """robust="none" by default: these toy vectors (all 0.0 vs all 1.0) are far apart in norm,
    which the robustness checks rightly refuse; the robust tests turn it on."""
    transport: MemoryTransport = net.transport(name)
    cfg = Config(
        network=NetworkConfig(listen=("/memory",), bootstrap=bootstrap, dial_timeout_s=1.0,
                              discovery_interval_s=0.5),
        averaging=AveragingConfig(enabled=enabled, interval_s=0.2, timeout_s=timeout,
                                  robust=robust),
        train=TrainConfig(steps_per_second=40, eval_interval_s=1.0),
    )
    runner = ModelRunner(FakeTrainer(value, spec=spec), 40, 1.0, 0.5)  # type: ignore[arg-type]
    membership = None if swarm_key is None else Membership(
        open=False, members=frozenset(), swarm_key=swarm_key, self_id=transport.peer_id)
    return Node(cfg, transport, runner, transport.seed, random.Random(name),
                membership=membership, replay=replay)


async def start(nursery: trio.Nursery, *nodes: Node) -> None:
    for node in nodes:
        await nursery.start(node.run, None)


async def one_exchange(net: MemoryNetwork, a: Node, b: Node) -> None:
    """Run both nodes, let a start one exchange with b, wait until all is quiet, stop."""
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        await start(nursery, a, b)
        a.peers.add(b.transport.peer_id, ["/memory"], trio.current_time())
        await a._average_once(b.transport.peer_id)
        # b may still be finishing its side (e.g. the tail of a hash in a worker thread, which
        # wait_all_tasks_blocked counts as blocked): wait (bounded) until it is done.
        with trio.move_on_after(5):
            while b.limits.active_exchanges:
                await trio.sleep(0.001)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()


def params(node: Node) -> np.ndarray:
    return node.runner.snapshot()[0]


async def test_push_pull_exchange_averages_both_sides() -> None:
    net = MemoryNetwork()
    a, b = make_node(net, "a", 0.0), make_node(net, "b", 1.0)
    await one_exchange(net, a, b)
    np.testing.assert_allclose(params(a), 0.5)
    np.testing.assert_allclose(params(b), 0.5)
    assert a.stats.ok == 1 and b.stats.served_ok == 1
    assert a.stats.bytes.sent > 0 and a.stats.bytes.sent == b.stats.bytes.received
    assert b.transport.peer_id in a.peers and a.transport.peer_id in b.peers


async def test_four_nodes_with_one_bootstrap_all_know_each_other(
        autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    first = make_node(net, "n0", 0.0)
    boot = (first.transport.listen_addrs()[0],)
    others = [make_node(net, f"n{i}", float(i), bootstrap=boot) for i in range(1, 4)]
    nodes = [first, *others]
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        await start(nursery, *nodes)
        with trio.fail_after(30):
            while not all(len(n.peers) == 3 for n in nodes):
                await trio.sleep(0.1)
        await trio.sleep(10)  # averaging runs on the simulated clock
        nursery.cancel_scope.cancel()
    for n in nodes:
        assert set(n.peers.known()) == {m.transport.peer_id for m in nodes} - {n.transport.peer_id}
    vectors = [params(n) for n in nodes]
    assert max(float(np.abs(v - 1.5).max()) for v in vectors) < 0.2  # converging to the mean
    assert all(n.stats.ok > 0 for n in nodes)
    # instant exchanges on the simulated clock: the adaptive deadline fell to its floor
    assert all(n.exchange_deadline() == deadlines.FLOOR_S < 2.0 for n in nodes)
    assert all(n.status()["exchange_deadline_s"] == deadlines.FLOOR_S for n in nodes)


async def test_diloco_nodes_exchange_once_per_cycle_of_inner_steps(
        mock_clock: trio.testing.MockClock) -> None:
    from gossipd.runner import AveragingRule

    # Steps run in a worker thread: jump the clock only after 20 ms of real idle time, so
    # training is not starved of simulated time while a chunk is in flight.
    mock_clock.autojump_threshold = 0.02

    net = MemoryNetwork()
    a, b = make_node(net, "a", 0.0), make_node(net, "b", 1.0)
    for node in (a, b):
        node.runner.rule = AveragingRule("diloco", inner_steps=40, outer_lr=1.0,
                                         outer_momentum=0.0)
        node.runner._outer = None  # anchored at the first exchange's snapshot
    a.peers.add(b.transport.peer_id, ["/memory"], trio.current_time())
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        await start(nursery, a, b)
        await trio.sleep(10)  # 40 steps/s: 400 steps, about 10 cycles of 40
        nursery.cancel_scope.cancel()
    started = a.stats.ok + a.stats.failed + b.stats.ok + b.stats.failed
    assert 0 < started <= 2 * 11  # the interval alone would start ~50 per node
    assert a.runner.status.outer_steps > 0 and b.runner.status.outer_steps > 0
    np.testing.assert_allclose(params(a), params(b), atol=1e-6)  # lr 1, mu 0: plain averaging
    assert a.status()["algorithm"] == "diloco"


async def test_frozen_peer_costs_one_timeout_and_training_goes_on(
        mock_clock: trio.testing.MockClock) -> None:
    # Training steps run in a worker thread: let the clock jump only after 20 ms of real idle
    # time, so a step in flight finishes before simulated seconds pass.
    mock_clock.autojump_threshold = 0.02
    net = MemoryNetwork()
    a, b = make_node(net, "a", 0.0, timeout=3.0), make_node(net, "b", 1.0)
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        await start(nursery, a, b)
        net.frozen.add(b.transport.peer_id)
        a.peers.add(b.transport.peer_id, ["/memory"], trio.current_time())
        step_before = a.runner.status.step
        t0 = trio.current_time()
        await a._average_once(b.transport.peer_id)
        elapsed = trio.current_time() - t0
        assert a.runner.status.step > step_before  # training kept going during the stall
        nursery.cancel_scope.cancel()
    assert 3.0 <= elapsed < 3.5
    assert a.stats.failed == 1 and a.stats.ok == 0
    entry = a.peers.get(b.transport.peer_id)
    # discovery's ask to the frozen peer times out too, so failures may be 2
    assert entry is not None and entry.failures >= 1 and entry.exchanges_failed == 1
    np.testing.assert_allclose(params(a), 0.0)  # nothing half-applied
    # the stalled connection is dropped, so the next attempt dials afresh (healed partitions)
    assert isinstance(a.transport, MemoryTransport)
    assert b.transport.peer_id in a.transport.disconnects


async def test_tampered_params_are_rejected_with_a_strike() -> None:
    net = MemoryNetwork()
    a, b = make_node(net, "a", 0.0), make_node(net, "b", 1.0)

    sent: list[int] = []

    def flip_late_byte(data: bytes) -> bytes:
        # b answers with Hello, ParamsStart, then chunks: flip one ciphertext byte of the
        # first chunk frame.
        sent.append(len(data))
        if len(sent) == 3:
            data = data[:-5] + bytes([data[-5] ^ 0x01]) + data[-4:]
        return data

    b.transport.tamper_outgoing = flip_late_byte  # type: ignore[attr-defined]
    await one_exchange(net, a, b)
    assert a.stats.failed == 1
    entry = a.peers.get(b.transport.peer_id)
    assert entry is not None and entry.strikes == 1
    assert "IntegrityError" in (a.stats.last_error or "")
    np.testing.assert_allclose(params(a), 0.0)


async def test_different_model_is_refused_and_counted() -> None:
    net = MemoryNetwork()
    a, b = make_node(net, "a", 0.0), make_node(net, "b", 1.0, spec="other/6")
    await one_exchange(net, a, b)
    assert a.stats.failed == 1 and b.stats.served_failed == 1
    assert "spec" in (a.stats.last_error or "").lower()
    np.testing.assert_allclose(params(a), 0.0)
    np.testing.assert_allclose(params(b), 1.0)


async def test_unreachable_peer_is_backed_off(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    a, b = make_node(net, "a", 0.0), make_node(net, "b", 1.0)
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        await start(nursery, a, b)
        net.down.add(b.transport.peer_id)
        a.peers.add(b.transport.peer_id, ["/memory"], trio.current_time())
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    entry = a.peers.get(b.transport.peer_id)
    assert entry is not None
    # 0.2 s interval over 5 s would be ~25 attempts without backoff; 1+2 s backoff allows ~3.
    assert 1 <= a.stats.failed <= 4


async def test_local_only_node_refuses_averaging() -> None:
    net = MemoryNetwork()
    a, b = make_node(net, "a", 0.0), make_node(net, "b", 1.0, enabled=False)
    await one_exchange(net, a, b)
    assert a.stats.failed == 1
    np.testing.assert_allclose(params(b), 1.0)


def test_status_has_the_documented_fields() -> None:
    async def body() -> dict[str, Any]:
        net = MemoryNetwork()
        return make_node(net, "a", 0.0).status()

    status = trio.run(body)
    for key in ("peer_id", "listen_addrs", "step", "loss", "accuracy", "known_peers",
                "exchanges_ok", "exchanges_failed", "bytes_sent", "bytes_received"):
        assert key in status


@pytest.mark.parametrize("busy", [False, True])
async def test_remote_params_arriving_mid_chunk_are_not_lost(busy: bool) -> None:
    runner = ModelRunner(FakeTrainer(0.0), 40, 1.0, 0.5)  # type: ignore[arg-type]
    runner._busy = busy
    runner.apply_remote(np.ones(6, np.float32), 3)
    if busy:
        np.testing.assert_allclose(runner.snapshot()[0], 0.0)
        assert len(runner._pending) == 1
    else:
        np.testing.assert_allclose(runner.snapshot()[0], 0.5)


async def test_secret_only_swarm_averages_members_and_strikes_outsiders() -> None:
    net = MemoryNetwork()
    key = b"\x42" * 32
    a, b = make_node(net, "a", 0.0, swarm_key=key), make_node(net, "b", 1.0, swarm_key=key)
    x = make_node(net, "x", 9.0, swarm_key=b"\x43" * 32)
    await one_exchange(net, a, b)
    np.testing.assert_allclose(params(a), 0.5)
    assert b.membership.proven(a.transport.peer_id)
    await one_exchange(net, x, a)
    assert x.stats.failed == 1 and a.stats.served_failed == 1
    assert "swarm" in (x.stats.last_error or "")
    entry = a.peers.get(x.transport.peer_id)
    assert entry is not None and entry.strikes == 1
    np.testing.assert_allclose(params(a), 0.5)  # nothing mixed in from the outsider
    assert not a.membership.proven(x.transport.peer_id)


async def test_secret_only_swarm_hides_the_peer_list_from_unproven_peers() -> None:
    from gossipd import discovery

    net = MemoryNetwork()
    key = b"\x42" * 32
    a, x = make_node(net, "a", 0.0, swarm_key=key), make_node(net, "x", 9.0, swarm_key=key)
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        await start(nursery, a, x)
        x.peers.add(a.transport.peer_id, ["/memory"], trio.current_time())
        with pytest.raises((TransportError, ProtocolError)):  # the stream is reset
            await discovery.ask(x.transport, a.transport.peer_id, x.peers, trio.current_time,
                                1.0)
        await x._average_once(a.transport.peer_id)  # proves the secret
        assert x.stats.ok == 1
        with trio.fail_after(5):  # a counts its side once the last chunk from x is in
            while not a.membership.proven(x.transport.peer_id):
                await trio.sleep(0.01)
        await discovery.ask(x.transport, a.transport.peer_id, x.peers, trio.current_time, 1.0)
        nursery.cancel_scope.cancel()


async def test_responder_records_served_hellos_in_its_replay_table() -> None:
    net = MemoryNetwork()
    guard = ReplayGuard()
    a, b = make_node(net, "a", 0.0), make_node(net, "b", 1.0, replay=guard)
    await one_exchange(net, a, b)
    await one_exchange(net, a, b)
    assert len(guard) == 2 and b.stats.served_ok == 2


async def test_reload_applies_live_keys_and_reports_restart_keys(tmp_path: Any) -> None:
    import dataclasses

    from gossipd.config import ConfigError

    net = MemoryNetwork()
    a = make_node(net, "a", 0.0)
    old = a.config
    new = dataclasses.replace(
        old,
        averaging=dataclasses.replace(old.averaging, interval_s=2.0, weight=0.25),
        network=dataclasses.replace(old.network, listen=("/elsewhere",)),
    )
    result = a.reload(new)
    assert result == {"applied": ["averaging.interval_s", "averaging.weight"],
                      "needs_restart": ["network.listen"]}
    assert a.config.averaging.interval_s == 2.0 and a.runner.weight == 0.25
    assert a.config.network.listen == old.network.listen  # not applied: needs a restart
    assert a.reload(a.config) == {"applied": [], "needs_restart": []}
    with pytest.raises(ConfigError):
        a.reload_from_file()  # started without a file
    bad = tmp_path / "bad.toml"
    bad.write_text("[averaging]\ninterval_s = -1\n")
    a.config_path = bad
    with pytest.raises(ConfigError):
        a.reload_from_file()
    assert a.config.averaging.interval_s == 2.0  # untouched by the failed reload
    assert "step 0" in a.status_line()


async def test_history_is_sampled_and_bounded(autojump_clock: trio.testing.MockClock) -> None:
    from gossipd.history import History

    net = MemoryNetwork()
    a = make_node(net, "a", 0.0)
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        await start(nursery, a)
        await trio.sleep(5.5)  # eval_interval_s = 1.0 in make_node
        nursery.cancel_scope.cancel()
    samples = a.history.since()["samples"]
    # (steps run in a worker thread, so how many land between samples depends on the machine)
    assert 4 <= len(samples) <= 6 and all("step" in s and "bytes_sent" in s for s in samples)
    assert [s["t"] for s in samples] == sorted({s["t"] for s in samples})
    assert a.history.since(samples[-2]["t"])["samples"] == samples[-1:]
    small = History(max_samples=3)
    for i in range(10):
        small.record(float(i), {"step": i})
    assert [s["step"] for s in small.since()["samples"]] == [7, 8, 9]


async def test_reload_logs_applied_keys_and_warns_about_restart_keys(
        caplog: pytest.LogCaptureFixture) -> None:
    import dataclasses
    import logging

    net = MemoryNetwork()
    a = make_node(net, "a", 0.0)
    new = dataclasses.replace(
        a.config, averaging=dataclasses.replace(a.config.averaging, interval_s=3.0),
        train=dataclasses.replace(a.config.train, task="digits-mlp", hidden=32))
    with caplog.at_level(logging.INFO, logger="gossipd.node"):
        a.reload(new)
    levels = {r.getMessage(): r.levelno for r in caplog.records}
    assert levels["reloaded: averaging.interval_s"] == logging.INFO
    assert levels["reload: needs a restart to apply: train.hidden"] == logging.WARNING


async def test_a_frozen_peer_does_not_stall_averaging_with_the_others(
        autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    a, b, c = (make_node(net, n, v, timeout=3.0) for n, v in (("a", 0.0), ("b", 1.0), ("c", 2.0)))
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        await start(nursery, a, b, c)
        net.frozen.add(b.transport.peer_id)
        for peer in (b, c):
            a.peers.add(peer.transport.peer_id, ["/memory"], trio.current_time())
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    entry_c = a.peers.get(c.transport.peer_id)
    assert entry_c is not None and entry_c.exchanges_ok >= 10  # ~every 0.2 s, b or not
    entry_b = a.peers.get(b.transport.peer_id)
    assert entry_b is not None and entry_b.exchanges_ok == 0


async def test_robust_nodes_clip_a_noisy_liar_and_lower_its_reputation(
        autojump_clock: trio.testing.MockClock) -> None:
    """Three honest nodes near 1.0 and one that sends Gaussian noise (averaging.attack): the
    honest ones stay near their mean, clip the liar's updates and score it lowest."""
    import dataclasses

    net = MemoryNetwork()
    honest = [make_node(net, f"h{i}", 1.0 + 0.01 * i, robust="clip") for i in range(3)]
    liar = make_node(net, "liar", 1.0, robust="clip")
    liar.config = dataclasses.replace(
        liar.config, averaging=dataclasses.replace(liar.config.averaging, attack="noise"))
    liar.defence.attack = "noise"
    liar.model = dataclasses.replace(liar.model, tamper=liar.defence.tamper)
    nodes = [*honest, liar]
    for n in nodes:
        for m in nodes:
            if m is not n:
                n.peers.add(m.transport.peer_id, ["/memory"], trio.current_time())
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        await start(nursery, *nodes)
        await trio.sleep(30)
        nursery.cancel_scope.cancel()
    for h in honest:
        assert float(np.abs(params(h) - 1.01).max()) < 0.1  # plain averaging: ~0.5 off
        rows = {r["peer_id"]: r for r in h.peer_rows()}
        bad = rows[liar.transport.peer_id]["reputation"]
        good = [rows[o.transport.peer_id]["reputation"] for o in honest if o is not h]
        assert bad is not None and all(g is not None and g["score"] > bad["score"] for g in good)
        assert bad["clipped"] + bad["clipped_hard"] + bad["rejected"] > 0
    assert sum(h.runner.status.clipped for h in honest) > 0


async def test_a_node_whose_vector_is_not_finite_sends_nothing_and_keeps_running() -> None:
    net = MemoryNetwork()
    a, b = make_node(net, "a", 0.0), make_node(net, "b", 1.0)
    import dataclasses

    a.model = dataclasses.replace(a.model, tamper=lambda v: np.full_like(v, np.inf))
    await one_exchange(net, a, b)
    assert a.stats.failed == 1 and a.stats.ok == 0 and "not finite" in str(a.stats.last_error)
    assert a.peers.get(b.transport.peer_id).strikes == 0  # type: ignore[union-attr]
    np.testing.assert_allclose(params(b), 1.0)  # b merged nothing
