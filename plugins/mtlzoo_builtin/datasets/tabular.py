"""``tabular``: multi-target tabular data from a CSV (or Parquet) file.

The recommendation-system setting of MMoE (Ma et al., "Modeling Task Relationships in Multi-task
Learning with Multi-gate Mixture-of-Experts", KDD 2018) and PLE (Tang et al., "Progressive Layered
Extraction", RecSys 2020): one row per example, several target columns (click, conversion,
price...) predicted from the same feature columns. Name the targets and their task types::

    tabular(path="/data/ali/{split}.csv", targets={ctr: binary, cvr: binary, price: regression},
            categorical=[city, device])

- **Files**: ``path`` with ``{split}`` is one file per split; otherwise one file, split by a
  ``split_column`` (values train/val/test) or at random by ``split_seed`` into
  ``1 - val_fraction - test_fraction`` / ``val_fraction`` / ``test_fraction`` of the rows.
  CSV needs only the standard library (``delimiter=``); ``.parquet`` needs pandas and pyarrow.
- **Targets**: ``binary`` (0/1), ``regression`` (a number) or ``cls:K`` (0..K-1). An empty cell
  (or NaN) is a missing label: that task is masked for that row (partial labels).
- **Features**: ``features`` (default: every other column) are numbers, standardised with the
  training rows' mean and standard deviation (``standardize``); an empty numeric cell becomes the
  training mean. Columns in ``categorical`` are coded from the training rows' values (sorted),
  index 0 standing for a value unseen in training or empty; ``encoding=onehot`` expands each into
  K+1 indicator columns, ``encoding=index`` keeps one column holding the code (as a float) for an
  embedding layer, with ``ds.categorical[col] = {"offset": i, "cardinality": K + 1}``.

The input is a float vector ``[F]``; ``ds.feature_names`` names its entries (``city=paris``).
Task names are the target column names (made identifiers: ``click-rate`` -> ``click_rate``).
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtlzoo import hookimpl
from mtlzoo import spec as specs
from mtlzoo.data import TensorMultiTaskDataset
from mtlzoo.data.files import canonical_split, derive_seed
from mtlzoo.errors import DataError, InvalidArgumentError, MtlzooError, suggestion

TARGET_TYPES = ("binary", "regression", "cls")
LAYOUT = """\
train.csv / val.csv / test.csv      (path="/data/x/{split}.csv"), or one file with split_column= or random splits
  header row: feature and target column names, e.g. user_age,city,ctr,cvr
  one example per row; an empty target cell is a missing label"""


def _identifier(name: str) -> str:
    out = re.sub(r"[^0-9a-zA-Z_]", "_", name)
    return "t_" + out if out[:1].isdigit() or not out else out


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "") or (
        isinstance(value, float) and math.isnan(value))


def read_table(path: Path, delimiter: str = ",") -> tuple[list[str], dict[str, list[Any]], list[int]]:
    """Header, columns (lists of raw values) and each row's line number in the file."""
    if not path.is_file():
        raise DataError(f"tabular: no file at {str(path)!r}.\nExpected:\n{LAYOUT}\nmtlzoo never downloads data.")
    if path.suffix == ".parquet":
        try:
            import pandas as pd
        except ImportError as exc:
            raise DataError(f"{str(path)!r}: reading Parquet needs pandas and pyarrow (pip install pandas pyarrow); "
                            "a CSV file needs neither") from exc
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises its own error types
            raise DataError(f"cannot read {str(path)!r}: {exc}") from exc
        header = [str(c) for c in frame.columns]
        return header, {str(c): frame[c].tolist() for c in frame.columns}, list(range(2, len(frame) + 2))
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            header = next(reader, None)
            if not header:
                raise DataError(f"{str(path)!r} is empty; the first row must name the columns")
            header = [h.strip() for h in header]
            columns: dict[str, list[Any]] = {h: [] for h in header}
            lines = []
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise DataError(f"{str(path)!r} line {reader.line_num}: {len(row)} fields, the header has "
                                    f"{len(header)}")
                for name, cell in zip(header, row):
                    columns[name].append(cell)
                lines.append(reader.line_num)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {str(path)!r}: {exc}") from exc
    if len(set(header)) != len(header):
        raise DataError(f"{str(path)!r}: duplicate column names in the header {header}")
    return header, columns, lines


def _task_type(column: str, value: Any) -> tuple[str, str, int | None]:
    """(task spec string, type, classes) for one ``targets`` entry."""
    try:
        ref = specs.as_ref(value, f"target {column!r}")
    except MtlzooError as exc:
        raise InvalidArgumentError(f"tabular: target {column!r}: {exc}") from exc
    if ref.name not in TARGET_TYPES:
        raise InvalidArgumentError(f"tabular: target {column!r} has type {ref.name!r}."
                                   f"{suggestion(ref.name, TARGET_TYPES)} Types: binary, regression, cls:K.")
    if ref.name == "cls":
        out = ref.kwargs.get("out")
        if not isinstance(out, int) or out < 2:
            raise InvalidArgumentError(f"tabular: target {column!r}: cls needs a class count, e.g. cls:5")
        return f"cls:{out}", "cls", out
    return ref.name, ref.name, None


class _Rows:
    """The rows of one file with their line numbers, for messages."""

    def __init__(self, path: Path, columns: dict[str, list[Any]], lines: list[int], keep: np.ndarray | None = None):
        self.path = path
        idx = np.arange(len(lines)) if keep is None else keep
        self.columns = {c: [v[i] for i in idx] for c, v in columns.items()}
        self.lines = [lines[i] for i in idx]

    def __len__(self) -> int:
        return len(self.lines)

    def where(self, i: int, column: str) -> str:
        return f"{str(self.path)!r} line {self.lines[i]} (row {i}), column {column!r}"


def _numbers(rows: _Rows, column: str) -> np.ndarray:
    out = np.empty(len(rows), dtype=np.float64)
    for i, value in enumerate(rows.columns[column]):
        if _missing(value):
            out[i] = np.nan
            continue
        try:
            out[i] = float(value)
        except (TypeError, ValueError):
            raise DataError(f"{rows.where(i, column)}: {value!r} is not a number (list the column in "
                            "categorical=[...] if it holds categories)") from None
        if not math.isfinite(out[i]):
            raise DataError(f"{rows.where(i, column)}: {value!r} is not finite")
    return out


def _split_rows(columns: dict[str, list[Any]], lines: list[int], split: str, split_column: str | None,
                val_fraction: float, test_fraction: float, split_seed: int, path: Path) -> dict[str, np.ndarray]:
    n = len(lines)
    if split_column is not None:
        if split_column not in columns:
            raise DataError(f"{str(path)!r} has no split column {split_column!r}.{suggestion(split_column, columns)}")
        names = []
        for i, value in enumerate(columns[split_column]):
            try:
                names.append(canonical_split("tabular", str(value).strip(), ("train", "val", "test")))
            except DataError:
                raise DataError(f"{str(path)!r} line {lines[i]}: split column {split_column!r} holds {value!r}; "
                                "expected train, val or test") from None
        return {s: np.array([i for i, v in enumerate(names) if v == s], dtype=np.int64)
                for s in ("train", "val", "test")}
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise InvalidArgumentError(f"tabular: val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must "
                                   "be in [0, 1) and sum to less than 1")
    order = np.random.default_rng(derive_seed(split_seed, "tabular")).permutation(n)
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    return {"test": np.sort(order[:n_test]), "val": np.sort(order[n_test: n_test + n_val]),
            "train": np.sort(order[n_test + n_val:])}


def tabular(split: str = "train", path: str | None = None, targets: Mapping[str, Any] | None = None,
            features: Sequence[str] | None = None, categorical: Sequence[str] = (), encoding: str = "onehot",
            split_column: str | None = None, val_fraction: float = 0.1, test_fraction: float = 0.1,
            split_seed: int = 0, standardize: bool = True, delimiter: str = ",") -> TensorMultiTaskDataset:
    """Multi-target tabular data (CSV, or Parquet with pandas); one task per target column.

    path: the file, or a pattern with {split}. targets: {column: binary | regression | cls:K}.
    features: feature columns (default: all others). categorical: columns holding categories.
    encoding: onehot | index. split_column: a column naming each row's split; otherwise
    val_fraction / test_fraction of the rows at random (split_seed). standardize: z-score the
    numeric features with training statistics. delimiter: the CSV field separator.
    """
    split = canonical_split("tabular", split, ("train", "val", "test"))
    if path is None:
        raise DataError(f"tabular: give path= to a CSV or Parquet file.\nExpected:\n{LAYOUT}")
    if not targets or not isinstance(targets, Mapping):
        raise InvalidArgumentError("tabular: targets must name the target columns and their types, e.g. "
                                   "targets={ctr: binary, price: regression}")
    if encoding not in ("onehot", "index"):
        raise InvalidArgumentError(f"tabular: encoding must be onehot or index, got {encoding!r}")
    kinds = {str(col): _task_type(str(col), value) for col, value in targets.items()}
    categorical = [categorical] if isinstance(categorical, str) else list(categorical)

    if "{split}" in str(path):
        train_file = Path(str(path).format(split="train")).expanduser()
        header, columns, lines = read_table(train_file, delimiter)
        train_rows = _Rows(train_file, columns, lines)
        if split == "train":
            rows = train_rows
        else:
            own = Path(str(path).format(split=split)).expanduser()
            own_header, own_columns, own_lines = read_table(own, delimiter)
            if own_header != header:
                raise DataError(f"{str(own)!r} has columns {own_header}, the training file {header}")
            rows = _Rows(own, own_columns, own_lines)
    else:
        file = Path(str(path)).expanduser()
        header, columns, lines = read_table(file, delimiter)
        parts = _split_rows(columns, lines, split, split_column, val_fraction, test_fraction, split_seed, file)
        train_rows, rows = _Rows(file, columns, lines, parts["train"]), _Rows(file, columns, lines, parts[split])

    for column in [*kinds, *categorical, *(features or [])]:
        if column not in header:
            raise DataError(f"{str(train_rows.path)!r} has no column {column!r}.{suggestion(column, header)} "
                            f"Columns: {', '.join(header)}.")
    if features is None:
        features = [c for c in header if c not in kinds and c != split_column]
    features = [features] if isinstance(features, str) else list(features)
    overlap = set(features) & set(kinds)
    if overlap:
        raise InvalidArgumentError(f"tabular: column(s) {sorted(overlap)} are both features and targets")

    blocks, names, cat_info, offset = [], [], {}, 0
    for column in features:
        if column in categorical:
            vocab = sorted({str(v).strip() for v in train_rows.columns[column] if not _missing(v)})
            code = {v: i + 1 for i, v in enumerate(vocab)}
            idx = np.array([0 if _missing(v) else code.get(str(v).strip(), 0) for v in rows.columns[column]])
            if encoding == "onehot":
                blocks.append(np.eye(len(vocab) + 1, dtype=np.float32)[idx])
                names += [f"{column}=<unknown>"] + [f"{column}={v}" for v in vocab]
                width = len(vocab) + 1
            else:
                blocks.append(idx.astype(np.float32)[:, None])
                names.append(column)
                width = 1
            cat_info[column] = {"offset": offset, "cardinality": len(vocab) + 1, "vocabulary": vocab}
            offset += width
            continue
        train_values = _numbers(train_rows, column)
        values = train_values if rows is train_rows else _numbers(rows, column)
        mean = float(np.nanmean(train_values)) if np.isfinite(train_values).any() else 0.0
        std = float(np.nanstd(train_values)) if np.isfinite(train_values).any() else 1.0
        values = np.where(np.isnan(values), mean, values)
        if standardize:
            values = (values - mean) / (std if std > 0 else 1.0)
        blocks.append(values.astype(np.float32)[:, None])
        names.append(column)
        offset += 1
    inputs = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(rows), 0), np.float32)

    tasks, target_tensors, labelled = {}, {}, {}
    for column, (task_spec, kind, classes) in kinds.items():
        task = _identifier(column)
        if task in tasks:
            raise DataError(f"tabular: two target columns map to the task name {task!r}; rename one")
        present = np.array([not _missing(v) for v in rows.columns[column]], dtype=bool)
        values = np.zeros(len(rows), dtype=np.float64)
        numbers = _numbers(rows, column)
        values[present] = numbers[present]
        for i in np.flatnonzero(present):
            v = values[i]
            if kind == "binary" and v not in (0.0, 1.0):
                raise DataError(f"{rows.where(int(i), column)}: binary label {rows.columns[column][i]!r} is not 0 or 1")
            if kind == "cls" and (v != round(v) or not 0 <= v < classes):
                raise DataError(f"{rows.where(int(i), column)}: label {rows.columns[column][i]!r} is outside "
                                f"0..{classes - 1}")
        tasks[task] = task_spec
        target_tensors[task] = (torch.from_numpy(values.astype(np.int64)) if kind == "cls"
                                else torch.from_numpy(values.astype(np.float32)))
        labelled[task] = torch.from_numpy(present)
    ds = TensorMultiTaskDataset(torch.from_numpy(np.ascontiguousarray(inputs)), target_tensors, tasks, labelled)
    ds.feature_names = names
    ds.categorical = cat_info
    ds.path = rows.path
    return ds


@hookimpl
def mtlzoo_register_datasets(register):
    register("tabular", tabular, tags=("tabular",), paper="Ma et al., KDD 2018 (MMoE); Tang et al., RecSys 2020 (PLE)",
             summary="Multi-target rows from a CSV/Parquet file; tasks: one per target column "
                     "(binary, regression or cls:K)")
