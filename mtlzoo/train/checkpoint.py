"""Training checkpoints: written atomically, loadable with ``torch.load(weights_only=True)``.

A checkpoint holds everything a run needs to continue exactly: model, optimizer, scheduler and
weighting state, the data position, every RNG state, the step counters, the history and the
config. It is written to a temporary file in the same directory, flushed to disk and renamed over
the old one, so a crash (even SIGKILL) leaves either the previous checkpoint or the new one.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtlzoo.errors import MtlzooError


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [v.tolist() if isinstance(v, np.ndarray) else v for v in np.random.get_state()],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, *rest = state["python"]
    random.setstate((version, tuple(rest[0]), *rest[1:]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    if not path.is_file():
        raise MtlzooError(f"no checkpoint at {str(path)!r}; nothing to resume (run without --resume to start fresh)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise MtlzooError(f"checkpoint {str(path)!r} could not be read ({exc}); it may be corrupt") from exc


def preflight(run_dir: Path, needed_bytes: int) -> None:
    """Fail before training if the run directory is not writable or the disk is too full."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"x" * 1024)
        probe.unlink()
    except OSError as exc:
        raise MtlzooError(
            f"run directory {str(run_dir)!r} is not writable: {exc}; choose another with run_dir=..."
        ) from exc
    free = shutil.disk_usage(run_dir).free
    if free < needed_bytes:
        raise MtlzooError(
            f"only {free / 2**20:.1f} MiB free under {str(run_dir)!r}, but checkpoints need about "
            f"{needed_bytes / 2**20:.1f} MiB; free some space or choose another run_dir"
        )
