"""The result every affinity method returns: a labelled ``T x T`` matrix that saves as JSON and CSV.

Orientation, the same for every method: ``values[i, j]`` is the affinity of task ``i`` (the row,
the source) **onto** task ``j`` (the column, the target). Symmetric measures (gradient cosine,
label correlation) have ``values[i, j] == values[j, i]``; TAG's lookahead and the pairwise
transfer gain do not. ``NaN`` marks an entry that could not be measured; ``notes`` says why.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mtlzoo.errors import InvalidArgumentError, UnknownComponentError, suggestion

#: what each kind of affinity is, for titles, legends and the JSON record
DESCRIPTIONS: dict[str, str] = {
    "gradient": "cosine of per-task gradients on the shared parameters, averaged over steps",
    "lookahead": "TAG lookahead Z(i→j) = 1 − L_j(θ_s − η∇L_i) / L_j(θ_s), averaged over steps",
    "performance": "gain of task j when trained with i: −Δm_j (%) of the pair model against j alone",
    "data": "association of the tasks' labels over samples (phi / Pearson / Cramér's V / correlation ratio)",
}


def _to_float(value: Any) -> float:
    return float("nan") if value is None else float(value)


@dataclass
class AffinityMatrix:
    """A ``T x T`` affinity matrix with its task names; ``values[i, j]``: affinity of i onto j."""

    kind: str
    tasks: list[str]
    values: np.ndarray
    symmetric: bool = False
    counts: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tasks = [str(t) for t in self.tasks]
        self.values = np.asarray(self.values, dtype=np.float64)
        T = len(self.tasks)
        if self.values.shape != (T, T):
            raise InvalidArgumentError(
                f"affinity matrix {self.kind!r}: values must be {T} x {T} for tasks {self.tasks}, got shape "
                f"{self.values.shape}")
        if len(set(self.tasks)) != T:
            raise InvalidArgumentError(f"affinity matrix {self.kind!r}: task names repeat: {self.tasks}")
        if self.counts is not None:
            self.counts = np.asarray(self.counts, dtype=np.int64)

    # -- access -----------------------------------------------------------------------------------
    def index(self, task: str) -> int:
        if task not in self.tasks:
            raise UnknownComponentError(f"no task {task!r} in this affinity matrix.{suggestion(task, self.tasks)} "
                                        f"Tasks: {self.tasks}")
        return self.tasks.index(task)

    def __getitem__(self, pair: tuple[str, str]) -> float:
        """``matrix["left", "sum"]``: the affinity of ``left`` onto ``sum``."""
        source, target = pair
        return float(self.values[self.index(source), self.index(target)])

    @property
    def description(self) -> str:
        return DESCRIPTIONS.get(self.kind, self.kind)

    def as_dict(self) -> dict[str, dict[str, float]]:
        """``{source: {target: value}}`` (NaN kept as float NaN)."""
        return {a: {b: float(self.values[i, j]) for j, b in enumerate(self.tasks)} for i, a in enumerate(self.tasks)}

    # -- serialisation ----------------------------------------------------------------------------
    def to_json_dict(self) -> dict[str, Any]:
        def clean(x: float) -> float | None:
            return None if not math.isfinite(x) else float(x)

        return {
            "kind": self.kind,
            "description": self.description,
            "orientation": "values[i][j] is the affinity of tasks[i] (row, source) onto tasks[j] (column, target)",
            "symmetric": self.symmetric,
            "tasks": list(self.tasks),
            "values": [[clean(v) for v in row] for row in self.values.tolist()],
            "counts": None if self.counts is None else self.counts.tolist(),
            "notes": list(self.notes),
            "meta": self.meta,
        }

    @classmethod
    def from_json_dict(cls, record: Mapping[str, Any]) -> AffinityMatrix:
        try:
            values = [[_to_float(v) for v in row] for row in record["values"]]
            return cls(kind=record["kind"], tasks=list(record["tasks"]), values=np.array(values, dtype=np.float64),
                       symmetric=bool(record.get("symmetric", False)),
                       counts=None if record.get("counts") is None else np.array(record["counts"]),
                       notes=list(record.get("notes", [])), meta=dict(record.get("meta", {})))
        except (KeyError, TypeError) as exc:
            raise InvalidArgumentError(f"not an affinity record (needs kind, tasks, values): {exc}") from exc

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_json_dict(), indent=2, default=str))
        return path

    @classmethod
    def read_json(cls, path: str | Path) -> AffinityMatrix:
        return cls.from_json_dict(json.loads(Path(path).read_text()))

    def to_csv_text(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["source \\ target", *self.tasks])
        for task, row in zip(self.tasks, self.values.tolist()):
            writer.writerow([task, *("nan" if not math.isfinite(v) else repr(float(v)) for v in row)])
        return buffer.getvalue()

    def to_csv(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_csv_text())
        return path

    @classmethod
    def read_csv(cls, path: str | Path, kind: str = "custom") -> AffinityMatrix:
        """A square CSV with task names in the first row and column (as :meth:`to_csv` writes)."""
        rows = list(csv.reader(Path(path).read_text().splitlines()))
        if len(rows) < 2:
            raise InvalidArgumentError(f"{str(path)!r} is not an affinity CSV: it needs a header row and one row "
                                       "per task")
        tasks = rows[0][1:]
        if [r[0] for r in rows[1:]] != tasks:
            raise InvalidArgumentError(f"{str(path)!r}: the row labels {[r[0] for r in rows[1:]]} must repeat the "
                                       f"column labels {tasks}, in the same order")
        try:
            values = np.array([[float(v) for v in r[1:]] for r in rows[1:]], dtype=np.float64)
        except ValueError as exc:
            raise InvalidArgumentError(f"{str(path)!r}: a cell is not a number ({exc})") from exc
        return cls(kind=kind, tasks=tasks, values=values, symmetric=bool(np.allclose(values, values.T, equal_nan=True)))

    def __repr__(self) -> str:
        return f"AffinityMatrix(kind={self.kind!r}, tasks={self.tasks})"

    def table(self, digits: int = 3) -> str:
        """A plain-text table (rows: source, columns: target)."""
        cells = [["n/a" if not math.isfinite(v) else f"{v:.{digits}g}" for v in row] for row in self.values.tolist()]
        width = max(8, *(len(t) for t in self.tasks), *(len(c) for row in cells for c in row)) + 2
        first = max(len("source \\ target"), *(len(t) for t in self.tasks)) + 2
        lines = ["source \\ target".ljust(first) + "".join(t.rjust(width) for t in self.tasks)]
        for task, row in zip(self.tasks, cells):
            lines.append(task.ljust(first) + "".join(c.rjust(width) for c in row))
        return "\n".join(lines)


def coerce_matrix(matrix: AffinityMatrix | np.ndarray | Sequence[Sequence[float]],
                  tasks: Sequence[str] | None = None) -> AffinityMatrix:
    """An :class:`AffinityMatrix` from itself, or from a square array and (optional) task names."""
    if isinstance(matrix, AffinityMatrix):
        return matrix
    values = np.asarray(matrix, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] != values.shape[1]:
        raise InvalidArgumentError(f"an affinity matrix must be square (T x T), got shape {values.shape}")
    names = list(tasks) if tasks is not None else [f"task{i}" for i in range(values.shape[0])]
    if len(names) != values.shape[0]:
        raise InvalidArgumentError(f"{len(names)} task names for a {values.shape[0]} x {values.shape[0]} matrix")
    return AffinityMatrix(kind="custom", tasks=names, values=values,
                          symmetric=bool(np.allclose(values, values.T, equal_nan=True)))
