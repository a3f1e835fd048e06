"""Office-31 and Office-Home from a fixture in the LibMTL layout (domain image folders + list files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mtlzoo
from mtlzoo.data import MultiInputDataset, MultiTaskLoader
from mtlzoo.errors import DataError
from mtlzoo_builtin.datasets.office import office31, office_home


def write_office(root: Path, domains, classes: int, lists: str, per_split=(("train", 4), ("val", 2), ("test", 2))):
    rng = np.random.default_rng(0)
    listing = root / "data_txt" / lists
    listing.mkdir(parents=True)
    for domain in domains:
        for split, n in per_split:
            lines = []
            for i in range(n):
                label = int(rng.integers(0, classes))
                rel = f"{domain}/images/class_{label}/frame_{split}_{i:04d}.jpg"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(root / rel)
                lines.append(f"{rel} {label}")
            (listing / f"{domain}_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_office31_is_multi_input_with_one_task_per_domain(tmp_path):
    root = write_office(tmp_path / "office31", ("amazon", "dslr", "webcam"), 31, "office-31")
    ds = mtlzoo.create_dataset({"name": "office31", "root": str(root), "image_size": 24})
    assert isinstance(ds, MultiInputDataset)
    assert ds.tasks == {"amazon": "cls:31", "dslr": "cls:31", "webcam": "cls:31"}
    assert ds.sizes() == {"amazon": 4, "dslr": 4, "webcam": 4} and ds.input_shape == (3, 24, 24)
    sample = ds.datasets["dslr"][1]
    assert set(sample["targets"]) == {"dslr"} and sample["input"].shape == (3, 24, 24)
    first = (root / "data_txt" / "office-31" / "dslr_train.txt").read_text().splitlines()[1]
    assert sample["targets"]["dslr"].item() == int(first.split()[-1])
    loader = MultiTaskLoader(ds, 2, policy="all", seed=0)
    step = next(iter(loader))
    assert [b["task"] for b in step] == ["amazon", "dslr", "webcam"]
    assert all(b["input"].shape == (2, 3, 24, 24) for b in step)
    assert len(office31("trainval", root=str(root)).datasets["amazon"]) == 6


def test_normalisation_uses_imagenet_statistics(tmp_path):
    root = write_office(tmp_path / "o", ("amazon", "dslr", "webcam"), 31, "office-31")
    raw = office31(root=str(root), image_size=8, normalize=False).datasets["amazon"][0]["input"]
    norm = office31(root=str(root), image_size=8).datasets["amazon"][0]["input"]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    torch.testing.assert_close(norm, (raw - mean) / std)


def test_office_home_domains_and_subset(tmp_path):
    root = write_office(tmp_path / "oh", ("Art", "Clipart", "Product", "Real_World"), 65, "office-home",
                        per_split=(("test", 2),))
    ds = office_home("test", root=str(root), domains=["Real_World", "art"], image_size=16)
    assert ds.tasks == {"art": "cls:65", "real_world": "cls:65"}
    with pytest.raises(DataError, match="no task 'cartoon'"):
        office_home("test", root=str(root), domains=["cartoon"])


def test_bad_lists_and_images_are_reported(tmp_path):
    root = write_office(tmp_path / "office31", ("amazon", "dslr", "webcam"), 31, "office-31")
    listing = root / "data_txt" / "office-31" / "webcam_val.txt"
    listing.write_text("webcam/images/class_1/x.jpg 31\n")
    with pytest.raises(DataError, match=r"webcam_val\.txt' line 1: label 31 is outside 0\.\.30"):
        office31("val", root=str(root))
    listing.write_text("webcam/images/class_1/missing.jpg 3\n")
    with pytest.raises(DataError, match=r"missing image .*missing\.jpg.*sample 0"):
        office31("val", root=str(root)).datasets["webcam"][0]
    (root / "data_txt" / "office-31" / "dslr_test.txt").unlink()
    with pytest.raises(DataError, match=r"dslr_test\.txt(.|\n)*Expected layout(.|\n)*gatech"):
        office31("test", root=str(root))
