"""Multi-target tabular data from CSV fixtures (the MMoE / PLE setting)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

import mtlzoo
from mtlzoo.data import make_loader
from mtlzoo.errors import DataError, InvalidArgumentError
from mtlzoo_builtin.datasets.tabular import tabular

HEADER = ["age", "income", "city", "ctr", "cvr", "price", "stars"]
ROWS = [
    [25, 3.5, "paris", 1, 0, 10.0, 4],
    [31, "", "rome", 0, "", 12.5, 2],      # missing income (-> mean) and missing cvr label
    [47, 8.0, "paris", 1, 1, "", 0],       # missing price label
    [52, 6.5, "oslo", 0, 0, 7.25, 3],
]


def write_csv(path: Path, rows=ROWS, header=HEADER, delimiter=",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_targets_types_missing_labels_and_features(tmp_path):
    write_csv(tmp_path / "data" / "train.csv")
    write_csv(tmp_path / "data" / "test.csv", rows=[[40, 5.0, "berlin", 1, 1, 9.0, 1]])
    spec = (f'tabular(path="{tmp_path}/data/{{split}}.csv", categorical=[city], '
            "targets={ctr: binary, cvr: binary, price: regression, stars: cls:5})")
    ds = mtlzoo.create_dataset(spec)
    assert ds.tasks == {"ctr": "binary", "cvr": "binary", "price": "regression", "stars": "cls:5"}
    assert len(ds) == 4
    assert ds.feature_names == ["age", "income", "city=<unknown>", "city=oslo", "city=paris", "city=rome"]
    assert ds.input_shape == (6,)
    ages = np.array([25, 31, 47, 52], dtype=np.float64)
    expected_age = (ages - ages.mean()) / ages.std()
    assert np.allclose(ds.inputs[:, 0].numpy(), expected_age, atol=1e-6)
    assert ds.inputs[1, 1].item() == pytest.approx(0.0, abs=1e-6)  # a missing number is the mean: 0 once standardised
    assert ds.inputs[:, 2:].tolist()[2] == [0, 0, 1, 0]  # paris
    assert "cvr" not in ds[1]["targets"] and "price" not in ds[2]["targets"]
    assert ds[3]["targets"]["stars"].dtype == torch.int64 and ds[3]["targets"]["price"].item() == 7.25
    batch = next(iter(make_loader(ds, 4, shuffle=False)))
    assert batch["masks"]["cvr"].tolist() == [True, False, True, True]
    test = tabular("test", path=str(tmp_path / "data" / "{split}.csv"), categorical=["city"],
                   targets={"ctr": "binary", "cvr": "binary", "price": "regression", "stars": "cls:5"})
    assert test.inputs[0, 2:].tolist() == [1, 0, 0, 0]  # berlin is unseen in training -> index 0
    assert test.inputs[0, 0].item() == pytest.approx((40 - ages.mean()) / ages.std(), abs=1e-5)


def test_index_encoding_and_split_column(tmp_path):
    rows = [[*r, s] for r, s in zip(ROWS, ["train", "train", "val", "test"])]
    path = write_csv(tmp_path / "all.csv", rows=rows, header=[*HEADER, "split"])
    kwargs = {"path": str(path), "targets": {"ctr": "binary"}, "features": ["age", "city"], "categorical": ["city"],
              "encoding": "index", "split_column": "split"}
    train, val = tabular("train", **kwargs), tabular("val", **kwargs)
    assert len(train) == 2 and len(val) == 1
    assert train.inputs[:, 1].tolist() == [1.0, 2.0]  # paris, rome in the training vocabulary
    assert val.inputs[0, 1].item() == 1.0 and train.categorical["city"]["cardinality"] == 3


def test_random_split_is_seeded_and_partitions_the_rows(tmp_path):
    rows = [[i, i * 0.5, "a", i % 2, 0, float(i), 0] for i in range(50)]
    path = write_csv(tmp_path / "big.csv", rows=rows)
    kw = {"path": str(path), "targets": {"ctr": "binary"}, "features": ["age"], "standardize": False}
    parts = {s: set(tabular(s, **kw).inputs[:, 0].long().tolist()) for s in ("train", "val", "test")}
    assert [len(p) for p in parts.values()] == [40, 5, 5]
    assert set().union(*parts.values()) == set(range(50)) and not parts["val"] & parts["test"]
    assert parts["test"] == set(tabular("test", **kw).inputs[:, 0].long().tolist())


def test_semicolon_csv(tmp_path):
    path = write_csv(tmp_path / "d.csv", delimiter=";")
    ds = tabular(path=str(path), targets={"price": "regression"}, features=["age"], delimiter=";",
                 val_fraction=0, test_fraction=0)
    assert len(ds) == 4


def test_bad_values_are_reported_with_row_and_column(tmp_path):
    bad_label = [list(r) for r in ROWS]
    bad_label[2][3] = 2
    path = write_csv(tmp_path / "a.csv", rows=bad_label)
    with pytest.raises(DataError, match=r"a\.csv' line 4 \(row 2\), column 'ctr': binary label '2' is not 0 or 1"):
        tabular(path=str(path), targets={"ctr": "binary"}, features=["age"], val_fraction=0, test_fraction=0)
    with pytest.raises(DataError, match=r"column 'stars': label '4' is outside 0\.\.2"):
        tabular(path=str(write_csv(tmp_path / "b.csv")), targets={"stars": "cls:3"}, features=["age"],
                val_fraction=0, test_fraction=0)
    with pytest.raises(DataError, match=r"column 'city': 'paris' is not a number.*categorical"):
        tabular(path=str(write_csv(tmp_path / "c.csv")), targets={"ctr": "binary"}, features=["city"],
                val_fraction=0, test_fraction=0)
    with pytest.raises(DataError, match=r"no column 'clicks'.*Columns"):
        tabular(path=str(write_csv(tmp_path / "d.csv")), targets={"clicks": "binary"})
    with pytest.raises(InvalidArgumentError, match=r"type 'binar'\. Did you mean 'binary'"):
        tabular(path=str(write_csv(tmp_path / "e.csv")), targets={"ctr": "binar"})
    with pytest.raises(DataError, match="no file at"):
        tabular(path=str(tmp_path / "nope.csv"), targets={"ctr": "binary"})
    ragged = tmp_path / "f.csv"
    ragged.write_text("a,b,ctr\n1,2,0\n3,1\n")
    with pytest.raises(DataError, match=r"f\.csv' line 3: 2 fields, the header has 3"):
        tabular(path=str(ragged), targets={"ctr": "binary"})


def test_parquet_without_pandas_says_what_to_install(tmp_path):
    path = tmp_path / "x.parquet"
    path.write_bytes(b"PAR1")
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match="pandas and pyarrow"):
            tabular(path=str(path), targets={"ctr": "binary"})
    else:
        with pytest.raises(DataError, match=r"x\.parquet"):
            tabular(path=str(path), targets={"ctr": "binary"})
