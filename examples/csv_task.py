"""An example gossipd task plugin: a classifier for a CSV file of your own.

Use it as ``train.task = "csv_task:factory"`` with ``train.data_path`` naming a CSV whose first
row is a header, whose last column is an integer class label and whose other columns are
numbers. The directory holding this file must be importable (PYTHONPATH, or install it as a
package). The CSV stays on the node: only the model's parameters are exchanged.

What it shows:
- the factory gets a gossipd.tasks.TaskContext and returns a gossipd.tasks.Task;
- every node must agree on the held-out rows and on the feature scaling without sending data:
  both are pure functions of the file (each node of this example holds the same file and takes
  its own share of the training rows; with truly private files, give every node the same
  held-out file and fixed scaling constants in [train.options]);
- options come from [train.options] (here: hidden, lr, holdout_every).
"""

from __future__ import annotations

import csv
import zlib
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gossipd.tasks import Task, TaskContext, TaskError


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(features float32 [n, d], labels int32 [n]) from a header + rows CSV."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        raise TaskError(f"csv_task: {path} needs a header row and at least one data row")
    try:
        table = np.array([[float(v) for v in row] for row in rows[1:]], dtype=np.float64)
    except ValueError as exc:
        raise TaskError(f"csv_task: {path}: every value must be a number ({exc})") from None
    return table[:, :-1].astype(np.float32), table[:, -1].astype(np.int32)


def factory(ctx: TaskContext) -> Task:
    if ctx.data_path is None:
        raise TaskError("csv_task: set train.data_path to your CSV file")
    x, y = read_csv(ctx.data_path)
    hidden = int(ctx.options.get("hidden", 32))
    lr = float(ctx.options.get("lr", 0.05))
    every = int(ctx.options.get("holdout_every", 5))
    classes = int(y.max()) + 1
    # Held-out rows: every `every`-th row by a hash of its content, the same on every node.
    tags = np.array([zlib.crc32(r.tobytes()) for r in x])
    test = tags % every == 0
    mean, std = x[~test].mean(axis=0), x[~test].std(axis=0) + 1e-6
    x = (x - mean) / std
    train_idx = np.flatnonzero(~test)
    # This node's share of the training rows (iid by row hash and the swarm seed).
    mine = train_idx[(tags[train_idx] + ctx.seed) % ctx.num_shards == ctx.shard_index]
    if mine.size == 0:
        raise TaskError(f"csv_task: shard {ctx.shard_index} of {ctx.num_shards} has no rows")
    d = x.shape[1]

    def init(key: jax.Array) -> dict[str, jax.Array]:
        k1, k2 = jax.random.split(key)
        return {"w1": jax.random.normal(k1, (d, hidden)) * jnp.sqrt(2.0 / d),
                "b1": jnp.zeros(hidden),
                "w2": jax.random.normal(k2, (hidden, classes)) * jnp.sqrt(1.0 / hidden),
                "b2": jnp.zeros(classes)}

    def logits(p: Any, xb: jax.Array) -> jax.Array:
        out: jax.Array = jax.nn.relu(xb @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
        return out

    def loss(p: Any, batch: Any) -> jax.Array:
        logp = jax.nn.log_softmax(logits(p, batch["x"]))
        return -jnp.mean(jnp.take_along_axis(logp, batch["y"][:, None], axis=1))

    def evaluate(p: Any, data: Any) -> dict[str, jax.Array]:
        hit = jnp.argmax(logits(p, data["x"]), axis=1) == data["y"]
        return {"accuracy": jnp.mean(hit.astype(jnp.float32)), "loss": loss(p, data)}

    return Task(
        name="csv-mlp",
        init=init,
        loss=loss,
        optimizer=optax.sgd(lr, momentum=0.9),
        train_data={"x": x[mine], "y": y[mine]},
        eval_data={"x": x[test], "y": y[test]},
        evaluate=evaluate,
        metric="accuracy",
        batch_size=int(ctx.options.get("batch_size", 32)),
    )


def write_example_csv(path: Path) -> None:
    """A CSV to try the plugin with: scikit-learn's bundled breast-cancer table (569 rows,
    30 features, label 0/1). `python examples/csv_task.py OUT.csv` writes it."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([*data.feature_names, "label"])
        for row, label in zip(data.data, data.target, strict=True):
            w.writerow([*(f"{v:.6g}" for v in row), int(label)])


if __name__ == "__main__":
    import sys

    write_example_csv(Path(sys.argv[1] if len(sys.argv) > 1 else "example.csv"))
