"""Every built-in dataset is registered, listed with its tasks, and takes a split."""

from __future__ import annotations

import inspect

import pytest

from mtlzoo.cli import main
from mtlzoo.plugins import default_zoo

DATASETS = ["celeba", "cifar10", "cityscapes", "multidigits", "multimnist", "nyuv2", "office31", "office_home",
            "tabular", "voc_cifar", "voc_detection"]


@pytest.mark.parametrize("name", DATASETS)
def test_registered_with_tasks_in_the_summary_and_a_split_argument(name):
    entry = default_zoo().datasets.get(name)
    assert "tasks:" in entry.summary
    params = inspect.signature(entry.factory).parameters
    assert params["split"].default == "train"
    assert inspect.getdoc(entry.factory)


def test_cli_lists_every_dataset_with_its_tasks(capsys):
    assert main(["list", "datasets"]) == 0
    out = capsys.readouterr().out
    for name in DATASETS:
        line = next(line for line in out.splitlines() if f"dataset  {name} " in line)
        assert "tasks:" in line


def test_split_in_the_spec_and_as_the_argument_is_a_clear_error():
    import pytest

    import mtlzoo
    from mtlzoo.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match=r"create_dataset\('multidigits', split='test'\)"):
        mtlzoo.create_dataset("multidigits(split=test, size=8)", split="train")
