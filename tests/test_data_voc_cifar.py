"""CIFAR-10 and PASCAL VOC detection (and their multi-input pairing) from fixtures in torchvision's layouts."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mtlzoo
from mtlzoo.data import MultiTaskLoader
from mtlzoo.errors import DataError
from mtlzoo_builtin.datasets.voc_cifar import cifar10, voc_cifar, voc_detection


def write_cifar(root: Path, per_batch: int = 4) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"batch_label": name, "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, per_batch).tolist(), "filenames": [f"{i}.png" for i in range(per_batch)]}
        with open(folder / name, "wb") as handle:
            pickle.dump(entry, handle, protocol=2)
    return root


def _annotation(objects, width=50, height=40) -> str:
    body = "".join(
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{box[0]}</xmin>"
        f"<ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object>"
        for name, box, difficult in objects)
    return (f"<annotation><folder>VOC2012</folder><filename>x.jpg</filename><size><width>{width}</width>"
            f"<height>{height}</height><depth>3</depth></size>{body}</annotation>")


VOC_OBJECTS = {
    "2008_000001": [("dog", (10, 5, 30, 25), 0), ("person", (1, 1, 50, 40), 0), ("cat", (2, 2, 4, 4), 1)],
    "2008_000002": [("tvmonitor", (20, 10, 40, 30), 0)],
    "2008_000003": [],
}


def write_voc(root: Path, year: str = "2012") -> Path:
    base = root / "VOCdevkit" / f"VOC{year}"
    for folder in ("ImageSets/Main", "JPEGImages", "Annotations"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for image_id, objects in VOC_OBJECTS.items():
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(base / "JPEGImages" / f"{image_id}.jpg")
        (base / "Annotations" / f"{image_id}.xml").write_text(_annotation(objects))
    ids = list(VOC_OBJECTS)
    (base / "ImageSets" / "Main" / "train.txt").write_text("\n".join(ids[:2]) + "\n")
    (base / "ImageSets" / "Main" / "val.txt").write_text(ids[2] + "\n")
    return root


def test_cifar10_reads_the_python_batches(tmp_path):
    root = write_cifar(tmp_path / "c")
    train = mtlzoo.create_dataset({"name": "cifar10", "root": str(root)})
    assert len(train) == 20 and train.tasks == {"cls": "cls:10"} and train.input_shape == (3, 32, 32)
    with open(root / "cifar-10-batches-py" / "data_batch_2", "rb") as handle:
        entry = pickle.load(handle)
    sample = train[5]  # the second sample of data_batch_2
    expected = entry["data"][1].reshape(3, 32, 32) / 255.0
    assert np.allclose(sample["input"].numpy(), expected, atol=1e-6)
    assert sample["targets"]["cls"].item() == entry["labels"][1]
    assert len(cifar10("test", root=str(root))) == 4
    split = cifar10("train", root=str(root), val_size=6), cifar10("val", root=str(root), val_size=6)
    assert [len(s) for s in split] == [14, 6]


def test_voc_detection_targets_are_boxes_and_labels_scaled_with_the_image(tmp_path):
    root = write_voc(tmp_path / "voc")
    ds = voc_detection(root=str(root), image_size=100)
    assert len(ds) == 2 and ds.tasks == {"det": "detect:21"} and ds.input_shape == (3, 100, 100)
    sample = ds[0]
    assert sample["input"].shape == (3, 100, 100)
    det = sample["targets"]["det"]
    assert det["labels"].tolist() == [12, 15]  # dog, person (the difficult cat is left out)
    assert det["boxes"][0].tolist() == pytest.approx([10 * 2, 5 * 2.5, 30 * 2, 25 * 2.5])  # 50x40 -> 100x100
    keep = voc_detection(root=str(root), image_size=None, keep_difficult=True)
    assert keep[0]["targets"]["det"]["labels"].tolist() == [12, 15, 8] and keep[0]["input"].shape == (3, 40, 50)
    empty = voc_detection("val", root=str(root))[0]["targets"]["det"]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)


def test_voc_cifar_is_multi_input_classification_plus_detection(tmp_path):
    write_cifar(tmp_path)
    write_voc(tmp_path)
    ds = voc_cifar(root=str(tmp_path), image_size=64)
    assert ds.tasks == {"cls": "cls:10", "det": "detect:21"}
    assert ds.input_shape == (3, None, None) and ds.input_shapes["det"] == (3, 64, 64)
    step = next(iter(MultiTaskLoader(ds, 2, policy="all", seed=0)))
    cls, det = step
    assert cls["task"] == "cls" and cls["input"].shape == (2, 3, 32, 32) and cls["targets"]["cls"].shape == (2,)
    assert det["task"] == "det" and isinstance(det["targets"]["det"], list) and len(det["targets"]["det"]) == 2
    assert det["masks"]["det"].all()


def test_bad_voc_and_cifar_files_are_reported(tmp_path):
    root = write_voc(tmp_path / "voc")
    annotations = root / "VOCdevkit" / "VOC2012" / "Annotations"
    (annotations / "2008_000002.xml").write_text(_annotation([("unicorn", (1, 1, 5, 5), 0)]))
    with pytest.raises(DataError, match=r"2008_000002\.xml.*sample 1.*unknown class 'unicorn'"):
        voc_detection(root=str(root))[1]
    (annotations / "2008_000002.xml").write_text("<annotation><object>")
    with pytest.raises(DataError, match=r"cannot parse annotation .*2008_000002\.xml.*sample 1"):
        voc_detection(root=str(root))[1]
    with pytest.raises(DataError, match="no public test annotations"):
        voc_detection("test", root=str(root))
    with pytest.raises(DataError, match=r"VOCdevkit.VOC2007(.|\n)*Expected layout"):
        voc_detection(root=str(root), year=2007)
    cifar = write_cifar(tmp_path / "c")
    with open(cifar / "cifar-10-batches-py" / "test_batch", "wb") as handle:
        pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": [1, 10]}, handle)
    with pytest.raises(DataError, match=r"test_batch.*sample 1.*label 10 is outside 0\.\.9"):
        cifar10("test", root=str(cifar))
    (cifar / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"cannot read .*data_batch_3"):
        cifar10("train", root=str(cifar))
