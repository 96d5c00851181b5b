"""Data egress canary: a node's private training data never leaves it, checked on every byte it
sends, tapped before encryption.

One node trains a plugin task on a data file with a canary planted in some rows: 8 float32
features whose 32 bytes are a random token made for this run. Two in-process nodes (real
Trainer, real exchange, discovery and receipts over the in-memory transport) average for a
while, and three taps record everything they send:

  * sealer: every plaintext handed to the payload AEAD (protocol.crypto.Sealer.push/push_into),
    joined per secretstream, so a pattern split across chunks is still found;
  * frames: every frame handed to gossipd.netapi.MessageStream.send;
  * stream: every byte written to the transport's Stream (send_all), joined per stream: over
    libp2p this is what Noise then encrypts.

The canary must appear in none of them. Positive controls run the same taps on deliberately
leaky tasks: one copies the canary rows into its initial parameters (the sealer tap must see
it, the frame and stream taps only ciphertext), one writes the canary into its layout name,
which travels in the plaintext Hello (the frame and stream taps must see it).
"""

from __future__ import annotations

import random
import secrets
import string
import textwrap
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from gossipd import netapi
from gossipd.config import AveragingConfig, Config, NetworkConfig, TrainConfig
from gossipd.daemon import Node
from gossipd.ledger import Ledger
from gossipd.provenance import Provenance
from gossipd.runner import ModelRunner
from gossipd.tasks import TaskContext
from gossipd.trainer import make_trainer
from protocol import crypto
from tests import fakes
from tests.fakes import MemoryNetwork

FEATURES = 8  # one canary row: 8 float32 = 32 bytes
CANARY_ROWS = (3, 17, 41)

PLUGIN = """
import dataclasses
import jax, jax.numpy as jnp, numpy as np, optax
from gossipd.tasks import Task

def _data(ctx):
    d = np.load(ctx.data_path)
    return d["x"], d["y"]

def factory(ctx):
    x, y = _data(ctx)
    def init(key):
        return {"w": jax.random.normal(key, (x.shape[1], 2)) * 0.1, "b": jnp.zeros(2)}
    def loss(p, batch):
        logp = jax.nn.log_softmax(batch["x"] @ p["w"] + p["b"])
        return -jnp.mean(jnp.take_along_axis(logp, batch["y"][:, None], axis=1))
    def evaluate(p, data):
        hit = jnp.argmax(data["x"] @ p["w"] + p["b"], axis=1) == data["y"]
        return {"accuracy": jnp.mean(hit.astype(jnp.float32))}
    return Task(name="canary", init=init, loss=loss, optimizer=optax.sgd(0.1),
                train_data={"x": x, "y": y}, eval_data={"x": x[:32], "y": y[:32]},
                evaluate=evaluate, batch_size=16)

def leaky_params(ctx):
    # Copies rows of its private data into a parameter leaf that no gradient touches.
    task = factory(ctx)
    rows = jnp.asarray(task.train_data["x"][list(ctx.options["rows"])])
    inner = task.init
    return dataclasses.replace(task, init=lambda key: {**inner(key), "leak": rows},
                               loss=lambda p, b: task.loss({"w": p["w"], "b": p["b"]}, b),
                               evaluate=lambda p, d: task.evaluate({"w": p["w"], "b": p["b"]},
                                                                   d))

def leaky_name(ctx):
    # Names its layout after a row of its data (if that row reads as text): the spec travels
    # in the plaintext Hello.
    task = factory(ctx)
    row = task.train_data["x"][ctx.options["rows"][0]].tobytes()
    return dataclasses.replace(task, layout="lin-" + (row.decode("ascii") if row.isascii()
                                                      else "plain"))
"""


def make_canary() -> bytes:
    """32 random printable bytes that read as 8 moderate float32 values: every 4th byte (the
    high byte of a little-endian float32) is one of '<=>?' (0x3c-0x3f), so each value lies in
    [2**-8, 2): finite, and harmless as a feature. The rest is random letters and digits."""
    alphabet = string.ascii_letters + string.digits
    out = bytearray()
    for _ in range(FEATURES):
        out += "".join(secrets.choice(alphabet) for _ in range(3)).encode()
        out += secrets.choice("<=>?").encode()
    values = np.frombuffer(bytes(out), "<f4")
    assert np.all(np.isfinite(values)) and np.all(np.abs(values) < 2)
    return bytes(out)


def write_data(path: Path, seed: int, canary: bytes | None) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, FEATURES)).astype(np.float32)
    if canary is not None:
        for r in CANARY_ROWS:
            x[r] = np.frombuffer(canary, "<f4")
    y = (x.sum(axis=1) > 0).astype(np.int32)
    np.savez(path, x=x, y=y)
    return path


class Tap:
    """What the nodes sent, per layer; each entry joined per sealer or per stream object."""

    def __init__(self) -> None:
        self.sealer: dict[int, bytearray] = defaultdict(bytearray)
        self.frames: list[bytes] = []
        self.stream: dict[int, bytearray] = defaultdict(bytearray)
        self._keep: list[object] = []  # keeps the tapped objects alive: ids stay unique

    def note(self, table: dict[int, bytearray], owner: object, data: Any) -> None:
        self._keep.append(owner)
        table[id(owner)] += memoryview(data).cast("B")

    def found(self, pattern: bytes) -> dict[str, int]:
        return {
            "sealer": sum(pattern in b for b in self.sealer.values()),
            "frames": sum(pattern in f for f in self.frames),
            "stream": sum(pattern in b for b in self.stream.values()),
        }

    def sealed_bytes(self) -> int:
        return sum(len(b) for b in self.sealer.values())


@pytest.fixture()
def tap(monkeypatch: pytest.MonkeyPatch) -> Iterator[Tap]:
    t = Tap()
    push, push_into = crypto.Sealer.push, crypto.Sealer.push_into
    send = netapi.MessageStream.send
    send_all = fakes.MemoryStream.send_all

    def tapped_push(self: crypto.Sealer, piece: bytes, final: bool) -> bytes:
        t.note(t.sealer, self, piece)
        return push(self, piece, final)

    def tapped_push_into(self: crypto.Sealer, piece: crypto.Buffer, final: bool,
                         out: crypto.Buffer) -> int:
        t.note(t.sealer, self, piece)
        return push_into(self, piece, final, out)

    async def tapped_send(self: netapi.MessageStream, frame: bytes | bytearray) -> None:
        t.frames.append(bytes(frame))
        await send(self, frame)

    async def tapped_send_all(self: fakes.MemoryStream, data: bytes) -> None:
        t.note(t.stream, self, data)
        await send_all(self, data)

    monkeypatch.setattr(crypto.Sealer, "push", tapped_push)
    monkeypatch.setattr(crypto.Sealer, "push_into", tapped_push_into)
    monkeypatch.setattr(netapi.MessageStream, "send", tapped_send)
    monkeypatch.setattr(fakes.MemoryStream, "send_all", tapped_send_all)
    yield t


@pytest.fixture()
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "canary_task.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "canary_task"


def make_node(net: MemoryNetwork, name: str, task: str, shard: int, data: Path,
              state: Path) -> Node:
    transport = net.transport(name)
    cfg = Config(
        network=NetworkConfig(listen=("/memory",), dial_timeout_s=2.0, discovery_interval_s=0.3),
        averaging=AveragingConfig(interval_s=0.2, timeout_s=5.0),
        train=TrainConfig(task=task, data_path=data, steps_per_second=40, eval_interval_s=0.5),
    )
    ctx = TaskContext(shard_index=shard, num_shards=2, partition="iid", seed=0, data_path=data,
                      options={"rows": list(CANARY_ROWS)})
    trainer = make_trainer(task, ctx)
    runner = ModelRunner(trainer, 40, 0.5, 0.5)
    state.mkdir()
    ledger = Ledger(state / "ledger.bin", transport.seed,
                    transport.peer_id_bytes(transport.peer_id))
    provenance = Provenance(ledger)
    provenance.record_data_sync(trainer.data_hash, trainer.data_samples, {"train.task": task})
    return Node(cfg, transport, runner, transport.seed, random.Random(name),
                provenance=provenance)


async def exchange_for_a_while(tmp_path: Path, task: str, canary: bytes,
                               refused: bool = False) -> tuple[Node, Node]:
    """Node a (canary data) and node b (clean data) average until each has completed at least
    two exchanges it started and a has trained 40 steps (``refused``: until a's first attempt
    failed, for tasks whose specs differ between the nodes); both nodes' traffic passes the
    taps."""
    net = MemoryNetwork()
    a = make_node(net, "a", task, 0, write_data(tmp_path / "a.npz", 1, canary), tmp_path / "sa")
    b = make_node(net, "b", task, 1, write_data(tmp_path / "b.npz", 2, None), tmp_path / "sb")
    x_a = np.asarray(a.runner.trainer.definition.train_data["x"])  # type: ignore[attr-defined]
    assert x_a.tobytes().count(canary) == len(CANARY_ROWS)  # planted where a trains on it
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        for n in (a, b):
            await nursery.start(n.run, None)
        a.peers.add(b.transport.peer_id, ["/memory"], trio.current_time())
        with trio.move_on_after(60) as waited:
            while (a.stats.failed < 1 if refused else
                   a.stats.ok < 2 or b.stats.ok < 2 or a.runner.status.step < 40):
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    if waited.cancelled_caught:
        pytest.fail(f"no exchanges in time: a {a.status_line()}, last error "
                    f"{a.stats.last_error}; b {b.status_line()}, last error {b.stats.last_error}")
    return a, b


async def test_canary_never_leaves_the_node(tmp_path: Path, plugin: str, tap: Tap) -> None:
    canary = make_canary()
    a, b = await exchange_for_a_while(tmp_path, f"{plugin}:factory", canary)
    # The taps saw real traffic: whole parameter vectors sealed, frames and stream writes.
    num_params = a.runner.trainer.num_params
    assert tap.sealed_bytes() >= 4 * num_params * (a.stats.ok + b.stats.ok)
    assert len(tap.frames) > 10 and tap.stream
    assert a.stats.served_ok + b.stats.served_ok >= 4
    assert tap.found(canary) == {"sealer": 0, "frames": 0, "stream": 0}
    # and the parameters did move: the node trained on the canary rows
    assert not np.array_equal(a.runner.snapshot()[0], a.runner.trainer.get_params(
        a.runner.trainer.init()))


async def test_a_task_leaking_into_its_params_is_caught_before_encryption(
        tmp_path: Path, plugin: str, tap: Tap) -> None:
    canary = make_canary()
    await exchange_for_a_while(tmp_path, f"{plugin}:leaky_params", canary)
    found = tap.found(canary)
    assert found["sealer"] >= 1  # the tap before the AEAD sees the leaked rows
    # ... which leave the node only as ciphertext: the frame and stream taps see none of it
    assert found["frames"] == found["stream"] == 0


async def test_a_task_leaking_into_its_name_is_caught_in_the_frames(
        tmp_path: Path, plugin: str, tap: Tap) -> None:
    canary = make_canary()
    a, _b = await exchange_for_a_while(tmp_path, f"{plugin}:leaky_name", canary, refused=True)
    assert "spec" in (a.stats.last_error or "").lower()  # b trains "lin-plain": refused
    found = tap.found(canary)
    assert found["frames"] >= 1 and found["stream"] >= 1  # a's Hello carried it in plaintext
