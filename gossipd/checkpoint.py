"""Checkpoints in `<state_dir>/checkpoints/`: one `.npz` file per save, the whole training state.

What a checkpoint holds (format 2), so that a restarted node continues exactly where it stopped:
- `params`: the flat float32 parameters; `params_hash`: their BLAKE2b-256 (protocol.receipt), in
  hex, checked on load;
- `opt_NNNN`: every leaf of the optimizer state pytree in jax.tree_util's flattening order, and
  `opt_structure`: the tree definition plus each leaf's dtype and shape. A checkpoint whose
  structure differs from the running optimizer's is refused: leaves are matched by position, so
  loading them into another optimizer would silently mean something else;
- `rng`: the PRNG key's raw data (jax.random.key_data) and `rng_impl` its implementation, so
  the minibatch stream goes on where it stopped instead of replaying itself;
- `step`, `spec` (the model; a checkpoint fits only a node training the same spec),
  `saved_at` (wall time) and `avg_<name>`: the averaging state, named float32 arrays the runner
  supplies (ModelRunner.averaging_state; may be empty).
Format 1 files (params, step, spec, saved_at only) still load: parameters and step come back,
optimizer state and PRNG key start fresh, and the log says so.

Rules:
- Files are written whole or not at all: a temporary file in the same directory, fsync, rename,
  fsync of the directory. A crash mid-save leaves the previous checkpoints and a stray `.tmp`
  file, which the next start removes.
- Loading never unpickles (`allow_pickle=False`): a checkpoint file is data, not code.
- Newest means most recently saved (`saved_at`), not highest step: a node that started over
  must not have its new checkpoints outranked, and pruned, by old ones.
- After a successful save only the newest KEEP checkpoints of the same spec are kept; files of
  another model are never removed here (the operator decides what to do with them).
- Blocking file I/O and device-to-host copies: the daemon calls these from a worker thread.
"""

from __future__ import annotations

import logging
import os
import re
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from protocol.receipt import params_hash

log = logging.getLogger("gossipd.checkpoint")

DIR_NAME = "checkpoints"
KEEP = 5
FORMAT = 2
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# What a damaged file raises from zipfile/numpy: all mean "unreadable", never a crash.
_READ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)

T = TypeVar("T")


class CheckpointError(Exception):
    """A checkpoint that cannot be read or does not fit; the message names the file."""


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    step: int
    spec: str
    saved_at: float
    size_bytes: int
    params_hash: str | None  # hex; None for format 1 files, which did not store it
    format: int = FORMAT

    def as_dict(self) -> dict[str, object]:
        return {"path": str(self.path), "step": self.step, "spec": self.spec,
                "saved_at": self.saved_at, "size_bytes": self.size_bytes,
                "params_hash": self.params_hash, "format": self.format}


@dataclass(frozen=True)
class Checkpoint:
    """The training state as host arrays: what is written to, and read from, one file."""

    params: np.ndarray
    step: int
    spec: str
    opt_leaves: tuple[np.ndarray, ...] = ()
    opt_structure: str = ""
    rng: np.ndarray | None = None
    rng_impl: str = ""  # "" with rng set: a raw (untyped) uint32 key array
    averaging: dict[str, np.ndarray] = field(default_factory=dict)
    format: int = FORMAT

    @property
    def params_hash(self) -> str:
        return params_hash(self.params).hex()


# -- training state <-> host arrays --
def opt_structure(opt_state: Any) -> tuple[list[Any], str]:
    """The leaves of an optimizer state pytree and its structure fingerprint."""
    leaves, treedef = jax.tree_util.tree_flatten(opt_state)
    shapes = ",".join(f"{np.dtype(np.asarray(x).dtype).str}{tuple(np.shape(x))}" for x in leaves)
    return leaves, f"{treedef}|{shapes}"


def capture(trainer: Any, state: Any, averaging: dict[str, np.ndarray]) -> Checkpoint:
    """Copy a training state to host memory (blocking: run it in a worker thread). Works for
    any state with `params` and `step`; `opt_state` and `rng` are taken when present."""
    leaves, structure = opt_structure(getattr(state, "opt_state", None))
    rng = getattr(state, "rng", None)
    rng_data, impl = None, ""
    if rng is not None:
        if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
            rng_data, impl = np.asarray(jax.random.key_data(rng)), str(jax.random.key_impl(rng))
        else:
            rng_data = np.asarray(rng)
    return Checkpoint(
        params=np.asarray(trainer.get_params(state), dtype=np.float32), step=int(state.step),
        spec=str(trainer.spec), opt_leaves=tuple(np.array(x) for x in leaves),
        opt_structure=structure, rng=rng_data, rng_impl=impl, averaging=dict(averaging))


def restore(trainer: Any, template: Any, ckpt: Checkpoint, path: Path | str = "checkpoint"
            ) -> Any:
    """`template` (a fresh trainer.init() state) with everything `ckpt` holds put back.
    CheckpointError if its optimizer state does not fit the running optimizer."""
    state = trainer.with_params(template, ckpt.params)
    fields_ = getattr(state, "_fields", ())
    updates: dict[str, Any] = {"step": ckpt.step}
    if ckpt.format < 2:  # format 1: parameters and step only
        return state._replace(**updates)
    if "opt_state" in fields_:
        structure = opt_structure(state.opt_state)[1]
        if structure != ckpt.opt_structure:
            raise CheckpointError(
                f"{path}: optimizer state does not fit this node's optimizer (train settings "
                f"changed?): saved {_short(ckpt.opt_structure)}, running {_short(structure)}")
        treedef = jax.tree_util.tree_structure(state.opt_state)
        updates["opt_state"] = jax.tree_util.tree_unflatten(
            treedef, [jnp.asarray(x) for x in ckpt.opt_leaves])
    if "rng" in fields_ and ckpt.rng is not None:
        if ckpt.rng_impl:
            updates["rng"] = jax.random.wrap_key_data(jnp.asarray(ckpt.rng), impl=ckpt.rng_impl)
        else:
            updates["rng"] = jnp.asarray(ckpt.rng)
    return state._replace(**updates)


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# -- files --
def save(directory: Path, ckpt: Checkpoint, keep: int = KEEP) -> CheckpointInfo:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    saved_at = time.time()
    digest = ckpt.params_hash
    arrays: dict[str, Any] = {
        "format": np.int64(FORMAT), "params": np.asarray(ckpt.params, dtype="<f4"),
        "params_hash": np.str_(digest), "step": np.int64(ckpt.step), "spec": np.str_(ckpt.spec),
        "saved_at": np.float64(saved_at), "opt_structure": np.str_(ckpt.opt_structure),
        "opt_count": np.int64(len(ckpt.opt_leaves)), "rng_impl": np.str_(ckpt.rng_impl),
    }
    for i, leaf in enumerate(ckpt.opt_leaves):
        arrays[f"opt_{i:04d}"] = np.asarray(leaf)
    if ckpt.rng is not None:
        arrays["rng"] = np.asarray(ckpt.rng)
    for name, value in ckpt.averaging.items():
        if not _NAME.fullmatch(name):
            raise ValueError(f"averaging state name {name!r} must match {_NAME.pattern}")
        arrays[f"avg_{name}"] = np.asarray(value, dtype="<f4")
    final = directory / f"step-{ckpt.step:012d}-{int(saved_at * 1000):013d}.npz"
    tmp = directory / f".{final.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, allow_pickle=False, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(directory)
    same = [c for c in list_checkpoints(directory) if c.spec == ckpt.spec]
    for old in same[keep:]:
        old.path.unlink(missing_ok=True)
    return CheckpointInfo(final, ckpt.step, ckpt.spec, saved_at, final.stat().st_size, digest)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable: without this a power loss may forget the new name."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stray_temp_files(directory: Path) -> int:
    """Temporary files left by a save that crashed; called at start, before any save."""
    removed = 0
    for tmp in directory.glob(".step-*.tmp"):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def _info(path: Path, data: Any) -> CheckpointInfo:
    fmt = int(data["format"]) if "format" in data.files else 1
    digest = str(data["params_hash"]) if "params_hash" in data.files else None
    return CheckpointInfo(path, int(data["step"]), str(data["spec"]), float(data["saved_at"]),
                          path.stat().st_size, digest, fmt)


def read_info(path: Path) -> CheckpointInfo:
    """The small fields only (cheap: npz members are read on access)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return _info(path, data)
    except _READ_ERRORS as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable: {exc}") from exc


def list_checkpoints(directory: Path, *, on_unreadable: Callable[[CheckpointError], None]
                     | None = None) -> list[CheckpointInfo]:
    """Readable checkpoints, most recently saved first; unreadable files are skipped."""
    out = []
    for path in directory.glob("step-*.npz"):
        try:
            out.append(read_info(path))
        except CheckpointError as exc:
            if on_unreadable is not None:
                on_unreadable(exc)
    return sorted(out, key=lambda c: (c.saved_at, c.step), reverse=True)


def load(path: Path, spec: str, num_params: int) -> tuple[Checkpoint, CheckpointInfo]:
    """Everything in `path`; CheckpointError unless it is whole and fits the running model."""
    try:
        with np.load(path, allow_pickle=False) as data:
            info = _info(path, data)
            params = np.array(data["params"], dtype=np.float32)
            if info.format >= 2:
                leaves = tuple(np.array(data[f"opt_{i:04d}"])
                               for i in range(int(data["opt_count"])))
                rng = np.array(data["rng"]) if "rng" in data.files else None
                averaging = {k[4:]: np.array(data[k], dtype=np.float32)
                             for k in data.files if k.startswith("avg_")}
                ckpt = Checkpoint(params, info.step, info.spec, leaves,
                                  str(data["opt_structure"]), rng, str(data["rng_impl"]),
                                  averaging, info.format)
            else:
                ckpt = Checkpoint(params, info.step, info.spec, format=1)
    except _READ_ERRORS as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable: {exc}") from exc
    if info.format > FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {info.format}; this gossipd reads "
                              f"formats 1-{FORMAT}")
    if info.spec != spec or params.shape != (num_params,):
        raise CheckpointError(f"checkpoint {path} is for {info.spec} ({params.size} params), "
                              f"this node trains {spec} ({num_params} params)")
    if not np.all(np.isfinite(params)):
        raise CheckpointError(f"checkpoint {path} holds NaN or infinite parameters")
    if info.params_hash is not None and info.params_hash != ckpt.params_hash:
        raise CheckpointError(f"checkpoint {path} is damaged: its parameters do not match the "
                              "hash saved with them")
    return ckpt, info


def load_newest(directory: Path, spec: str, num_params: int, fit: Callable[[Checkpoint, Path], T]
                ) -> tuple[T, Checkpoint, CheckpointInfo] | None:
    """The most recently saved checkpoint of `spec` that loads and that `fit` accepts (fit
    raises CheckpointError to refuse one; its result is returned). A damaged or refused file is
    logged as a warning and the next older one is tried; None if there is none."""
    if not directory.is_dir():
        return None
    if remove_stray_temp_files(directory):
        log.info("removed temporary files of an interrupted save in %s", directory)
    infos = list_checkpoints(directory, on_unreadable=lambda e: log.warning("%s; skipped", e))
    for info in infos:
        if info.spec != spec:
            log.info("checkpoint %s is for %s, not %s; skipped", info.path, info.spec, spec)
            continue
        try:
            ckpt, info = load(info.path, spec, num_params)
            fitted = fit(ckpt, info.path)
        except CheckpointError as exc:
            log.warning("%s; trying an older checkpoint", exc)
            continue
        if ckpt.format < FORMAT:
            log.warning("checkpoint %s is format %d (parameters and step only): optimizer state "
                        "and PRNG key start fresh", info.path, ckpt.format)
        return fitted, ckpt, info
    return None
