"""CelebA from a fixture in torchvision's CelebA folder layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mtlzoo
from mtlzoo.data import make_loader
from mtlzoo.errors import DataError
from mtlzoo_builtin.datasets.celeba import celeba, task_name

ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair Blond_Hair "
    "Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones "
    "Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline "
    "Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick "
    "Wearing_Necklace Wearing_Necktie Young"
).split()
PARTITION = [0, 0, 0, 1, 2, 2]


def write_celeba(root: Path, n: int = 6) -> tuple[Path, np.ndarray]:
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(0)
    attrs = rng.choice([-1, 1], size=(n, 40))
    lines = [str(n), " ".join(ATTRIBUTES)]
    for i in range(n):
        name = f"{i + 1:06d}.jpg"
        Image.fromarray(rng.integers(0, 255, (218, 178, 3), dtype=np.uint8)).save(folder / "img_align_celeba" / name)
        lines.append(name + " " + " ".join(f"{v:2d}" for v in attrs[i]))  # the file aligns values in columns
    (folder / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (folder / "list_eval_partition.txt").write_text(
        "".join(f"{i + 1:06d}.jpg {p}\n" for i, p in enumerate(PARTITION)))
    return root, (attrs > 0).astype(np.float32)


def test_forty_binary_tasks_named_by_attribute(tmp_path):
    root, attrs = write_celeba(tmp_path)
    ds = mtlzoo.create_dataset({"name": "celeba", "root": str(root), "image_size": 32})
    assert len(ds) == 3 and len(ds.tasks) == 40 and set(ds.tasks.values()) == {"binary"}
    assert "five_o_clock_shadow" in ds.tasks and "smiling" in ds.tasks
    assert all(t.isidentifier() for t in ds.tasks)
    sample = ds[2]
    assert sample["input"].shape == (3, 32, 32) and ds.input_shape == (3, 32, 32)
    assert sample["targets"]["smiling"].item() == attrs[2, ATTRIBUTES.index("Smiling")]
    batch = next(iter(make_loader(ds, 3, shuffle=False)))
    assert batch["targets"]["young"].tolist() == attrs[:3, ATTRIBUTES.index("Young")].tolist()


def test_splits_follow_the_partition_file(tmp_path):
    root, attrs = write_celeba(tmp_path)
    assert [len(celeba(s, root=str(root))) for s in ("train", "val", "test", "all")] == [3, 1, 2, 6]
    test = celeba("test", root=str(root / "celeba"), as_multilabel=True)  # the celeba folder itself works too
    assert test.tasks == {"attributes": "multilabel:40"}
    assert torch.equal(test[1]["targets"]["attributes"], torch.from_numpy(attrs[5]))


def test_attribute_subset_by_file_or_task_name(tmp_path):
    root, _ = write_celeba(tmp_path)
    ds = celeba(root=str(root), attributes=["Smiling", "five_o_clock_shadow"], image_size=None)
    assert list(ds.tasks) == ["smiling", "five_o_clock_shadow"] and ds.input_shape == (3, 218, 178)
    with pytest.raises(DataError, match=r"'Smilng'\. Did you mean '[sS]miling'"):
        celeba(root=str(root), attributes=["Smilng"])


def test_task_names_are_identifiers():
    assert task_name("5_o_Clock_Shadow") == "five_o_clock_shadow"
    assert task_name("Wearing_Hat") == "wearing_hat"


def test_bad_files_are_reported(tmp_path):
    root, _ = write_celeba(tmp_path)
    attr = root / "celeba" / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    lines[4] = lines[4].replace("-1", " 2", 1)
    attr.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"line 5 \(000003.jpg\): attribute value 2 is not -1 or 1"):
        celeba(root=str(root))
    write_celeba(tmp_path / "other")
    good = tmp_path / "other"
    (good / "celeba" / "img_align_celeba" / "000002.jpg").write_bytes(b"\xff\xd8 broken jpeg")
    with pytest.raises(DataError, match=r"000002\.jpg.*sample 1"):
        celeba(root=str(good))[1]
    (tmp_path / "bare").mkdir()
    with pytest.raises(DataError, match=r"missing file .*list_attr_celeba\.txt(.|\n)*Expected layout"):
        celeba(root=str(tmp_path / "bare"))
