"""Helpers for dataset plugins that read files: roots, layouts, decoding, and the errors they raise.

Every reader in mtlzoo turns a problem with the user's data into a :class:`~mtlzoo.errors.DataError`
that names the file (and the sample index) and says what was expected:

- :func:`require_root` checks a dataset's root folder; a missing root prints the expected directory
  layout and where the data usually comes from. Nothing is ever downloaded.
- :func:`load_npy` and :func:`load_image` decode one file, naming it and the sample on failure.
- :func:`check_labels` reports a class label outside the task's range with its value.

``root=None`` falls back to ``$MTLZOO_DATA/<dataset name>`` when the environment variable is set.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mtlzoo.errors import DataError, suggestion

#: the environment variable naming a folder that holds one sub-folder per dataset
DATA_ENV = "MTLZOO_DATA"

SPLIT_ALIASES = {"valid": "val", "validation": "val", "dev": "val", "training": "train", "testing": "test"}


def canonical_split(dataset: str, split: str, allowed: Sequence[str]) -> str:
    """``split`` spelled as the dataset spells it (``valid`` -> ``val``); anything else raises."""
    if not isinstance(split, str):
        raise DataError(f"{dataset}: split must be a string such as 'train', got {split!r}")
    name = SPLIT_ALIASES.get(split.lower(), split.lower())
    if name not in allowed:
        raise DataError(f"{dataset}: unknown split {split!r}.{suggestion(split, allowed)} "
                        f"Splits: {', '.join(allowed)}.")
    return name


def require_root(dataset: str, root: str | os.PathLike[str] | None, layout: str, source: str) -> Path:
    """The dataset's root folder, or a :class:`DataError` showing the layout it should have.

    ``layout`` is the expected directory tree (a few lines), ``source`` where the data usually
    comes from and how it is prepared.
    """
    if root is None and os.environ.get(DATA_ENV):
        root = Path(os.environ[DATA_ENV]) / dataset
    if root is None:
        raise DataError(
            f"{dataset}: no root given. Pass {dataset}(root=\"/path/to/{dataset}\") (or set ${DATA_ENV} to a "
            f"folder holding a '{dataset}' sub-folder).\n{_layout_text(layout, source)}"
        )
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"{dataset}: no data folder at {str(path)!r}.\n{_layout_text(layout, source)}")
    return path


def _layout_text(layout: str, source: str) -> str:
    body = "\n".join("    " + line for line in layout.strip("\n").splitlines())
    return (f"Expected layout:\n{body}\nWhere it comes from: {source}\n"
            "mtlzoo never downloads data; fetch and prepare it once, then point root= at it.")


def missing_file(dataset: str, path: Path, layout: str, source: str, what: str = "file") -> DataError:
    """A :class:`DataError` for a required file or folder that is absent."""
    return DataError(f"{dataset}: missing {what} {str(path)!r}.\n{_layout_text(layout, source)}")


def load_npy(path: Path, index: int | None = None) -> np.ndarray:
    """``np.load`` of one sample file (no pickles); unreadable files raise naming file and index."""
    where = f" (sample {index})" if index is not None else ""
    if not path.is_file():
        raise DataError(f"missing file {str(path)!r}{where}")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read {str(path)!r}{where}: {exc}") from exc
    if not isinstance(array, np.ndarray):
        raise DataError(f"{str(path)!r}{where} holds {type(array).__name__}, not one array")
    return array


def load_image(path: Path, index: int | None = None, size: tuple[int, int] | None = None) -> Tensor:
    """An RGB image file as a float tensor ``[3, H, W]`` in [0, 1], resized (bilinear) to ``size``
    (height, width) when given. Unreadable files raise :class:`DataError` naming file and index."""
    from PIL import Image, UnidentifiedImageError

    where = f" (sample {index})" if index is not None else ""
    if not path.is_file():
        raise DataError(f"missing image {str(path)!r}{where}")
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if size is not None and (img.height, img.width) != tuple(size):
                img = img.resize((size[1], size[0]), Image.BILINEAR)
            array = np.asarray(img, dtype=np.uint8).copy()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot decode image {str(path)!r}{where}: {exc}") from exc
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)


#: ImageNet channel statistics, for backbones pretrained on ImageNet
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_image(image: Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """``(image - mean) / std`` per channel of a ``[C, H, W]`` tensor."""
    m = torch.tensor(mean, dtype=image.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=image.dtype).view(-1, 1, 1)
    return (image - m) / s


def check_labels(values: np.ndarray | Tensor, num_classes: int, where: str, *, ignore: int | None = None) -> None:
    """Raise :class:`DataError` naming ``where`` and the first value outside ``0..num_classes-1``
    (``ignore`` is allowed too) or not a whole number."""
    array = values.numpy() if isinstance(values, Tensor) else np.asarray(values)
    if array.size == 0:
        return
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise DataError(f"{where}: labels contain NaN or infinity")
        whole = array == np.round(array)
        if not whole.all():
            raise DataError(f"{where}: label {array[~whole].flat[0]!r} is not a whole number")
    bad = (array < 0) | (array >= num_classes)
    if ignore is not None:
        bad &= array != ignore
    if bad.any():
        value = array[bad].flat[0]
        value = int(value) if float(value).is_integer() else float(value)
        allowed = f"0..{num_classes - 1}" + (f" (or {ignore} to ignore)" if ignore is not None else "")
        raise DataError(f"{where}: label {value} is outside {allowed}")


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed mixed from integers and strings, stable across processes and platforms
    (unlike ``hash``), for the independent random streams of a seeded dataset or loader."""
    words: list[int] = []
    for part in parts:
        if isinstance(part, str):
            data = part.encode("utf-8")
            words.append(len(data) | 0x8000_0000)  # the length keeps ("ab", "c") apart from ("a", "bc")
            words.extend(data)
        else:
            words.append(int(part) & 0xFFFF_FFFF)
            words.append((int(part) >> 32) & 0xFFFF_FFFF)
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0]) >> 1
