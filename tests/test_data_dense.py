"""NYUv2 and Cityscapes from fixtures written in the preprocessed .npy layout (MTAN / LibMTL)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import mtlzoo
from mtlzoo.data import make_loader
from mtlzoo.errors import DataError
from mtlzoo_builtin.datasets._npy_layout import hflip, scale_crop
from mtlzoo_builtin.datasets.cityscapes import cityscapes
from mtlzoo_builtin.datasets.nyuv2 import nyuv2

H, W = 12, 16


def _unit_normals(rng: np.random.Generator) -> np.ndarray:
    n = rng.normal(size=(H, W, 3)).astype(np.float32)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    n[0, :2] = 0  # invalid pixels
    return n


def write_nyuv2(root: Path, counts=(("train", 3), ("val", 2)), classes: int = 13, label_dir: str = "label",
                normals: bool = True) -> Path:
    rng = np.random.default_rng(0)
    for split, n in counts:
        for folder in ["image", label_dir, "depth"] + (["normal"] if normals else []):
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            np.save(root / split / "image" / f"{i}.npy", rng.random((H, W, 3), dtype=np.float32))
            label = rng.integers(-1, classes, (H, W)).astype(np.float32)  # the released files store floats
            np.save(root / split / label_dir / f"{i}.npy", label)
            depth = rng.uniform(0.5, 8.0, (H, W, 1)).astype(np.float32)
            depth[-1, -3:] = 0  # invalid
            np.save(root / split / "depth" / f"{i}.npy", depth)
            if normals:
                np.save(root / split / "normal" / f"{i}.npy", _unit_normals(rng))
    return root


def test_nyuv2_reads_the_layout_with_the_documented_shapes(tmp_path):
    root = write_nyuv2(tmp_path / "nyuv2")
    ds = mtlzoo.create_dataset({"name": "nyuv2", "root": str(root)})
    assert len(ds) == 3 and ds.input_shape == (3, H, W)
    assert ds.tasks == {"seg": "seg:13", "depth": "depth", "normal": "normal"}
    sample = ds[1]
    image = np.load(root / "train" / "image" / "1.npy")
    assert torch.equal(sample["input"], torch.from_numpy(np.moveaxis(image, -1, 0)))
    assert sample["targets"]["seg"].dtype == torch.int64 and sample["targets"]["seg"].shape == (H, W)
    assert sample["targets"]["seg"].min() >= -1
    assert sample["targets"]["depth"].shape == (1, H, W) and sample["targets"]["depth"][0, -1, -1] == 0
    assert sample["targets"]["normal"].shape == (3, H, W)
    assert len(mtlzoo.create_dataset({"name": "nyuv2", "root": str(root)}, split="val")) == 2
    batch = next(iter(make_loader(ds, 2, shuffle=False)))
    assert batch["input"].shape == (2, 3, H, W) and batch["targets"]["normal"].shape == (2, 3, H, W)


def test_cityscapes_prefers_label_n_folders_and_has_no_normals(tmp_path):
    root = write_nyuv2(tmp_path / "cs", classes=7, label_dir="label_7", normals=False)
    ds = cityscapes(root=str(root))
    assert ds.tasks == {"seg": "seg:7", "depth": "depth"} and set(ds[0]["targets"]) == {"seg", "depth"}
    # LibMTL names the folder plain 'label'
    plain = write_nyuv2(tmp_path / "libmtl", classes=19, label_dir="label", normals=False)
    assert cityscapes(root=str(plain), classes=19, split="test").tasks["seg"] == "seg:19"
    assert cityscapes(root=str(root), tasks=["depth"]).tasks == {"depth": "depth"}


def test_scale_crop_divides_depth_by_the_scale_and_keeps_labels_discrete():
    image = torch.rand(3, 12, 16)
    seg = torch.randint(-1, 5, (12, 16))
    depth = torch.full((1, 12, 16), 6.0)
    depth[0, :, :4] = 0.0
    normal = torch.nn.functional.normalize(torch.randn(3, 12, 16), dim=0)
    sample = {"input": image, "targets": {"seg": seg, "depth": depth, "normal": normal}}
    out = scale_crop(sample, 1.5, top=2, left=3)
    assert out["input"].shape == image.shape and out["targets"]["seg"].dtype == torch.int64
    assert set(out["targets"]["seg"].unique().tolist()) <= set(seg[2:10, 3:13].unique().tolist())
    valid = out["targets"]["depth"] > 0
    assert torch.allclose(out["targets"]["depth"][valid], torch.tensor(4.0))  # 6 / 1.5
    assert out["targets"]["depth"][0, :, 0].eq(0).all()  # invalid stays invalid (nearest)
    norms = out["targets"]["normal"].norm(dim=0)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)  # nearest keeps unit vectors
    # a crop at scale 1 is the identity
    same = scale_crop(sample, 1.0, 0, 0)
    assert torch.allclose(same["input"], image) and torch.equal(same["targets"]["seg"], seg)


def test_horizontal_flip_mirrors_everything_and_negates_normal_x():
    normal = torch.nn.functional.normalize(torch.randn(3, 4, 5), dim=0)
    sample = {"input": torch.rand(3, 4, 5), "targets": {"normal": normal, "seg": torch.randint(0, 3, (4, 5))}}
    out = hflip(sample)
    assert torch.equal(out["input"], sample["input"].flip(-1))
    assert torch.equal(out["targets"]["seg"], sample["targets"]["seg"].flip(-1))
    assert torch.equal(out["targets"]["normal"][0], -normal[0].flip(-1))
    assert torch.equal(out["targets"]["normal"][1:], normal[1:].flip(-1))
    assert torch.equal(hflip(out)["targets"]["normal"], normal)


def test_augmented_samples_keep_shapes_and_valid_targets(tmp_path):
    root = write_nyuv2(tmp_path / "nyuv2", counts=(("train", 2), ("val", 1)))
    ds = nyuv2(root=str(root), augment=True, scales=[1.5])
    torch.manual_seed(0)
    for _ in range(4):
        sample = ds[0]
        assert sample["input"].shape == (3, H, W)
        norms = sample["targets"]["normal"].norm(dim=0)
        assert ((norms - 1).abs() < 1e-5).logical_or(norms == 0).all()
        assert sample["targets"]["seg"].min() >= -1 and sample["targets"]["seg"].max() < 13


# ---------------------------------------------------------------------------------- bad input
def test_missing_root_prints_the_layout_and_the_source(tmp_path):
    with pytest.raises(DataError) as info:
        nyuv2(root=str(tmp_path / "nowhere"))
    message = str(info.value)
    assert "nowhere" in message and "label/0.npy" in message and "lorenmt/mtan" in message
    assert "never downloads" in message
    with pytest.raises(DataError, match="no root given"):
        nyuv2()


def test_corrupt_and_misshaped_files_name_the_file_and_sample(tmp_path):
    root = write_nyuv2(tmp_path / "nyuv2")
    (root / "train" / "depth" / "2.npy").write_bytes(b"not an array")
    ds = nyuv2(root=str(root))
    with pytest.raises(DataError, match=r"depth.2\.npy.*sample 2"):
        ds[2]
    np.save(root / "train" / "normal" / "1.npy", np.zeros((H, W), np.float32))
    with pytest.raises(DataError, match=r"normal.1\.npy.*sample 1.*H x W x 3"):
        ds[1]
    np.save(root / "train" / "label" / "0.npy", np.zeros((H + 1, W), np.float32))
    with pytest.raises(DataError, match=r"label.0\.npy.*\(13, 16\).*\(12, 16\)"):
        ds[0]


def test_label_out_of_range_is_reported_with_its_value(tmp_path):
    root = write_nyuv2(tmp_path / "nyuv2")
    label = np.zeros((H, W), np.float32)
    label[3, 4] = 13
    np.save(root / "train" / "label" / "1.npy", label)
    with pytest.raises(DataError, match=r"label.1\.npy.*sample 1.*label 13 is outside 0\.\.12"):
        nyuv2(root=str(root))[1]


def test_a_missing_numbered_file_is_reported(tmp_path):
    root = write_nyuv2(tmp_path / "nyuv2")
    (root / "train" / "normal" / "1.npy").unlink()
    with pytest.raises(DataError, match=r"normal.1\.npy.*sample 1"):
        nyuv2(root=str(root))
