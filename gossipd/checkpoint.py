"""Model checkpoints in `<state_dir>/checkpoints/`: one `.npz` file per saved step.

Rules:
- A checkpoint holds the flat float32 parameters, the step, the model spec and the wall time it
  was taken; nothing else is needed to tell whether it fits the running model.
- Files are written whole or not at all: a temporary file in the same directory, fsync, then
  rename, so a crash mid-save leaves the previous checkpoints intact and no torn file.
- Loading never unpickles (`allow_pickle=False`): a checkpoint file is data, not code.
- The newest KEEP checkpoints are kept; older ones are removed after a successful save.
- Blocking file I/O: the daemon calls these from a worker thread.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DIR_NAME = "checkpoints"
KEEP = 5


class CheckpointError(Exception):
    """A checkpoint that cannot be read or does not fit; the message names the file."""


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    step: int
    spec: str
    saved_at: float
    size_bytes: int

    def as_dict(self) -> dict[str, object]:
        return {"path": str(self.path), "step": self.step, "spec": self.spec,
                "saved_at": self.saved_at, "size_bytes": self.size_bytes}


def save(directory: Path, flat: np.ndarray, step: int, spec: str, keep: int = KEEP
         ) -> CheckpointInfo:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    saved_at = time.time()
    final = directory / f"step-{step:012d}.npz"
    tmp = directory / f".{final.name}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, params=np.asarray(flat, dtype="<f4"), step=np.int64(step),
                 spec=np.str_(spec), saved_at=np.float64(saved_at))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    for old in list_checkpoints(directory)[keep:]:
        old.path.unlink(missing_ok=True)
    return CheckpointInfo(final, step, spec, saved_at, final.stat().st_size)


def _read(path: Path) -> tuple[np.ndarray, CheckpointInfo]:
    try:
        with np.load(path, allow_pickle=False) as data:
            params = np.array(data["params"], dtype=np.float32)
            info = CheckpointInfo(path, int(data["step"]), str(data["spec"]),
                                  float(data["saved_at"]), path.stat().st_size)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable: {exc}") from exc
    if params.ndim != 1:
        raise CheckpointError(f"checkpoint {path} holds params of shape {params.shape}")
    return params, info


def list_checkpoints(directory: Path) -> list[CheckpointInfo]:
    """Readable checkpoints, newest step first; unreadable files are skipped."""
    out = []
    for path in directory.glob("step-*.npz"):
        try:
            out.append(_read(path)[1])
        except CheckpointError:
            continue
    return sorted(out, key=lambda c: c.step, reverse=True)


def load(path: Path, spec: str, num_params: int) -> tuple[np.ndarray, CheckpointInfo]:
    """Parameters and info of `path`; CheckpointError unless it fits the running model."""
    params, info = _read(path)
    if info.spec != spec or params.size != num_params:
        raise CheckpointError(f"checkpoint {path} is for {info.spec} ({params.size} params), "
                              f"this node trains {spec} ({num_params} params)")
    if not np.all(np.isfinite(params)):
        raise CheckpointError(f"checkpoint {path} holds NaN or infinite parameters")
    return params, info
