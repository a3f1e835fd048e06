"""Run logs: JSON lines and CSV for programs, TensorBoard for people.

Every record is one dict of scalars with a ``kind`` (``train`` per logging step, ``eval`` per
epoch) plus ``epoch`` and ``step``. ``metrics.jsonl`` holds them all; ``train.csv`` and
``eval.csv`` hold one kind each with a fixed header (columns added later are appended).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any


def _scalar(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class RunLogger:
    """Appends records to the run directory; safe to reopen after a resume."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, enabled: bool = True) -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard not installed: JSON and CSV still hold everything
                self.writer = None

    def log(self, kind: str, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, **{k: _scalar(v) for k, v in record.items()}}
        with open(self.run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        path = self.run_dir / f"{kind}.csv"
        fields = list(record)
        if path.exists():
            with open(path, newline="") as handle:
                header = next(csv.reader(handle), [])
            fields = header + [f for f in fields if f not in header]
            if fields != header:  # a new column: rewrite with the wider header
                rows = list(csv.DictReader(open(path, newline="")))
                with open(path, "w", newline="") as handle:
                    writer = csv.DictWriter(handle, fieldnames=fields)
                    writer.writeheader()
                    writer.writerows(rows)
        with open(path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            if handle.tell() == 0:
                writer.writeheader()
            writer.writerow(record)
        if self.writer is not None:
            step = int(record.get("step", 0))
            for key, value in record.items():
                if key not in ("kind", "epoch", "step") and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


def read_records(run_dir: Path, kind: str | None = None) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if kind is None or r["kind"] == kind]
