"""Every registered strategy, backbone, head and task meets its contract the moment it exists.

The lists are read from the registry at collection time, so a new plugin is tested without
writing a test for it; component-specific behaviour lives in each family's own test file.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import mtlzoo
from mtlzoo.plugins import default_zoo
from mtlzoo.testing import check_strategy

ZOO = default_zoo()
TINY_TAGS = ZOO.backbones.get("tiny").tags


def _strategies():
    for entry in ZOO.strategies.list(include_deprecated=False):
        yield pytest.param(entry.name, id=entry.name)


@pytest.mark.parametrize("name", list(_strategies()))
def test_every_strategy_builds_on_tiny_and_passes_check_strategy(name):
    entry = ZOO.strategies.get(name)
    if not entry.requires <= TINY_TAGS:
        pytest.fail(f"strategy {name!r} requires {sorted(entry.requires)}, which the reference backbone lacks")
    model = mtlzoo.create_model(f"{name}(backbone=tiny(widths=[8, 16, 16]), tasks=[cls:3, seg:2])")
    outputs = check_strategy(model, torch.randn(2, 3, 16, 16))
    assert outputs["cls"].shape == (2, 3) and outputs["seg"].shape == (2, 2, 16, 16)


@pytest.mark.parametrize("kind", ["backbone", "strategy", "head", "task", "weighting", "dataset"])
def test_every_component_has_a_summary_and_a_documented_factory(kind):
    for entry in ZOO[kind].list():
        assert entry.summary, f"{kind} {entry.name!r} has no summary"
        factory = entry.factory
        if factory is not None:
            assert inspect.getdoc(factory), f"{kind} {entry.name!r}: the factory has no docstring"
