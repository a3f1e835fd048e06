"""The testing kit: the checkers pass good components and catch broken ones."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mtlzoo
from mtlzoo import hookimpl
from mtlzoo.model import Backbone, FeatureInfo
from mtlzoo.plugins import default_zoo, module_plugin
from mtlzoo.task import Task
from mtlzoo.testing import check_backbone, check_head, check_strategy, check_task, registered


def test_fixture_zoo_is_empty_and_never_scans_entry_points(zoo):
    assert all(len(r) == 0 for r in zoo.registries.values())
    assert zoo.plugins == {}


def test_registered_adds_for_one_block_only():
    @hookimpl
    def mtlzoo_register_heads(register):
        register("temporary_head", lambda feature_info, out: nn.Identity())

    plugin = module_plugin(mtlzoo_register_heads=mtlzoo_register_heads)
    with registered(plugin, "temp") as info:
        assert "temporary_head" in mtlzoo.list_components("heads")
        assert info.components == {"head": ["temporary_head"]}
    assert "temporary_head" not in mtlzoo.list_components("heads")
    assert "temp" not in default_zoo().plugins


class WrongChannels(Backbone):
    def __init__(self):
        super().__init__()
        self.stem = nn.Identity()
        self.stages = nn.ModuleList([nn.Conv2d(3, 4, 3, 2, 1)])
        self.feature_info = FeatureInfo((5,), (2,))  # says 5, makes 4


def test_check_backbone_catches_wrong_feature_info():
    with pytest.raises(AssertionError, match="4 channels, feature_info says 5"):
        check_backbone(WrongChannels())


def test_check_backbone_passes_tiny_with_stages():
    features = check_backbone(default_zoo().backbones.get("tiny").factory(), tags={"stages", "spatial"})
    assert len(features) == 4


def test_check_head_catches_a_head_at_the_wrong_resolution():
    class Lazy(nn.Module):
        def __init__(self, feature_info, out):
            super().__init__()
            self.conv = nn.Conv2d(feature_info.last_channels, out, 1)

        def forward(self, features, input_size=None):
            return self.conv(features[-1])  # forgets to upsample

    with pytest.raises(AssertionError, match="at the input size"):
        check_head(Lazy, out=2)


class LeakyMaskTask(Task):
    preset = "leaky"

    def loss(self, pred, target, mask=None):
        return (pred - target).pow(2).mean()  # ignores the mask

    def example_target(self, pred, generator=None):
        return torch.zeros_like(pred)


def test_check_task_catches_a_loss_that_ignores_the_mask():
    with pytest.raises(AssertionError, match="masked out the loss must be 0"):
        check_task(LeakyMaskTask(out=2))


def test_check_strategy_catches_a_parameter_owned_twice():
    model = mtlzoo.create_model("hard(backbone=tiny(widths=[8]), tasks=[cls:3, binary])")
    model.task_parameters = lambda task: iter(model.backbone.parameters())  # everything, for every task
    with pytest.raises(AssertionError, match="belongs to both"):
        check_strategy(model)


def test_check_strategy_catches_param_groups_missing_parameters():
    model = mtlzoo.create_model("hard(backbone=tiny(widths=[8]), tasks=[cls:3, binary])")
    model.param_groups = lambda base_lr: [{"params": list(model.heads.parameters()), "lr": base_lr}]
    with pytest.raises(AssertionError, match="exactly once"):
        check_strategy(model)
