"""Composition: spec -> model, compatibility checks before building, provenance, save/load."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mtlzoo
from mtlzoo import hookimpl
from mtlzoo.errors import (
    IncompatibleComponentsError,
    InvalidArgumentError,
    MtlzooError,
    UnknownComponentError,
)
from mtlzoo.model import Backbone, FeatureInfo
from mtlzoo.plugins import module_plugin
from mtlzoo.testing import check_strategy, registered


def test_create_model_from_a_string():
    model = mtlzoo.create_model("hard(backbone=tiny, tasks=[cls:10, binary, seg:3, regression:2])")
    out = model(torch.randn(2, 3, 32, 32))
    assert out["cls"].shape == (2, 10)
    assert out["binary"].shape == (2, 1)
    assert out["seg"].shape == (2, 3, 32, 32)
    assert out["regression"].shape == (2, 2)
    assert model.tasks["seg"].name == "seg" and model.tasks["seg"].out == 3
    check_strategy(model)


def test_the_same_model_from_dict_and_string():
    as_dict = {"name": "hard", "backbone": {"name": "tiny", "widths": [8, 16]},
               "tasks": [{"name": "cls", "out": 4}, "binary"]}
    a = mtlzoo.create_model(as_dict)
    b = mtlzoo.create_model("hard(backbone=tiny(widths=[8, 16]), tasks=[cls:4, binary])")
    assert a.spec == b.spec
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]


def test_named_tasks_with_a_dict_and_head_override():
    model = mtlzoo.create_model("hard(backbone=tiny, tasks={left: cls:10, right: cls(out=10, head=mlp(hidden=[32]))})")
    assert model.task_names == ["left", "right"]
    assert type(model.heads["right"]).__name__ == "MLPHead"
    assert model.spec["tasks"]["right"]["head"] == {"name": "mlp", "hidden": [32]}


def test_overrides_replace_top_level_arguments():
    model = mtlzoo.create_model("hard(backbone=tiny, tasks=[cls:3])", tasks=["binary", "regression"])
    assert model.task_names == ["binary", "regression"]
    model = mtlzoo.create_model("hard(tasks=[cls:3])", backbone="mlp(in_features=5)")
    assert model(torch.randn(4, 5))["cls"].shape == (4, 3)


def test_spec_and_provenance_are_recorded():
    model = mtlzoo.create_model("hard(backbone=tiny, tasks=[cls:10, binary])")
    assert model.spec == {"name": "hard", "backbone": {"name": "tiny"},
                          "tasks": [{"name": "cls", "out": 10}, {"name": "binary"}]}
    prov = model.provenance
    assert prov["strategy"]["plugin"] == "builtin.hard"
    assert prov["strategy"]["distribution"] == "mtlzoo"
    assert prov["strategy"]["version"] == mtlzoo.__version__
    assert prov["backbone"]["name"] == "tiny"
    assert prov["heads"]["cls"]["name"] == "linear"
    assert prov["tasks"]["binary"]["plugin"] == "builtin.classification"


def test_unknown_strategy_suggests():
    with pytest.raises(UnknownComponentError, match="Did you mean 'hard'"):
        mtlzoo.create_model("hrad(backbone=tiny, tasks=[cls:10])")


def test_unknown_keyword_suggests():
    with pytest.raises(UnknownComponentError, match="Did you mean 'widths'"):
        mtlzoo.create_model("hard(backbone=tiny(width=[8]), tasks=[cls:10])")
    with pytest.raises(UnknownComponentError, match="strategy 'hard' has no argument 'alpha'"):
        mtlzoo.create_model("hard(backbone=tiny, tasks=[cls:10], alpha=0.9)")


def test_missing_parts_are_named():
    with pytest.raises(InvalidArgumentError, match="needs backbone="):
        mtlzoo.create_model("hard(tasks=[cls:10])")
    with pytest.raises(InvalidArgumentError, match="needs tasks="):
        mtlzoo.create_model("hard(backbone=tiny)")
    with pytest.raises(InvalidArgumentError, match="needs argument"):
        mtlzoo.create_model("hard(backbone=tiny, tasks=[cls])")


def test_duplicate_tasks_in_a_list_suggest_a_dict():
    with pytest.raises(InvalidArgumentError, match=r"tasks=\{left: cls:10, right: cls:10\}"):
        mtlzoo.create_model("hard(backbone=tiny, tasks=[cls:10, cls:10])")


def test_dense_task_on_a_vector_backbone_is_refused_before_building():
    with pytest.raises(IncompatibleComponentsError, match="needs spatial features") as info:
        mtlzoo.create_model("hard(backbone=mlp(in_features=8), tasks=[seg:3])")
    assert "tiny" in str(info.value)


def test_dense_task_with_a_pooled_head_is_refused():
    with pytest.raises(IncompatibleComponentsError, match="not a dense head"):
        mtlzoo.create_model("hard(backbone=tiny, tasks=[seg(out=3, head=linear)])")


def test_a_task_needing_a_head_tag_refuses_other_heads():
    with pytest.raises(IncompatibleComponentsError, match=r"needs a head tagged \['detection'\].*detection"):
        mtlzoo.create_model("hard(backbone=tiny, tasks=[detect(out=3, head=linear)])")


def test_strategy_requirements_are_checked_before_building():
    built = []

    class Needy(mtlzoo.MTLModel):
        def __init__(self, backbone, heads):
            built.append(True)
            super().__init__(list(heads))

    @hookimpl
    def mtlzoo_register_strategies(register):
        register("needs_rainbows", Needy, requires={"rainbows"})

    with registered(module_plugin(mtlzoo_register_strategies=mtlzoo_register_strategies), "needy"):
        with pytest.raises(IncompatibleComponentsError) as info:
            mtlzoo.create_model("needs_rainbows(backbone=tiny, tasks=[cls:3])")
    message = str(info.value)
    assert "needs a backbone tagged ['rainbows']" in message
    works = message.split("Strategies that work with 'tiny': ")[1]
    assert "hard" in works and "needs_rainbows" not in works
    assert not built


def test_a_strategy_must_return_an_mtl_model():
    @hookimpl
    def mtlzoo_register_strategies(register):
        register("liar", lambda backbone, heads: nn.Linear(1, 1))

    with registered(module_plugin(mtlzoo_register_strategies=mtlzoo_register_strategies), "liar"):
        with pytest.raises(InvalidArgumentError, match="not an MTLModel"):
            mtlzoo.create_model("liar(backbone=tiny, tasks=[cls:3])")


def test_wrong_input_is_a_clear_error():
    model = mtlzoo.create_model("hard(backbone=tiny, tasks=[cls:3])")
    with pytest.raises(InvalidArgumentError, match="expects 3 input channels, got 1"):
        model(torch.randn(2, 1, 16, 16))
    with pytest.raises(InvalidArgumentError, match="rank 4"):
        model(torch.randn(2, 16))


def test_hard_sharing_shared_gradient_is_the_sum_of_task_gradients():
    torch.manual_seed(0)
    model = mtlzoo.create_model("hard(backbone=tiny(widths=[8, 16]), tasks=[cls:3, regression])")
    x, y_cls, y_reg = torch.randn(4, 3, 16, 16), torch.randint(0, 3, (4,)), torch.randn(4)
    shared = list(model.shared_parameters())
    per_task = []
    for task, target in (("cls", y_cls), ("regression", y_reg)):
        out = model(x)
        loss = model.tasks[task].loss(out[task], target)
        per_task.append(torch.autograd.grad(loss, shared))
    out = model(x)
    total = model.tasks["cls"].loss(out["cls"], y_cls) + model.tasks["regression"].loss(out["regression"], y_reg)
    together = torch.autograd.grad(total, shared)
    for g, g1, g2 in zip(together, *per_task):
        torch.testing.assert_close(g, g1 + g2)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_save_and_load_round_trip(tmp_path, suffix):
    model = mtlzoo.create_model("hard(backbone=tiny(widths=[8, 16]), tasks={a: cls:3, b: seg:2})")
    x = torch.randn(2, 3, 16, 16)
    model.train()
    model(x)  # move BN running statistics away from their initial values
    model.eval()
    path = mtlzoo.save(model, tmp_path / f"model{suffix}")
    loaded = mtlzoo.load(path)
    loaded.eval()
    assert loaded.spec == model.spec
    assert loaded.provenance == model.provenance
    for task, out in model(x).items():
        torch.testing.assert_close(loaded(x)[task], out)
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed away


def test_load_refuses_files_that_are_not_mtlzoo_models(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(MtlzooError, match="not an mtlzoo model file"):
        mtlzoo.load(path)
    with pytest.raises(MtlzooError, match="no model file"):
        mtlzoo.load(tmp_path / "missing.pt")


def test_custom_backbone_plugin_end_to_end():
    class TwoLevels(Backbone):
        def __init__(self, width: int = 4):
            super().__init__()
            self.in_channels = 3
            self.stem = nn.Conv2d(3, width, 1)
            self.stages = nn.ModuleList([nn.Conv2d(width, width, 3, 2, 1), nn.Conv2d(width, 2 * width, 3, 2, 1)])
            self.feature_info = FeatureInfo((width, 2 * width), (2, 4))

    @hookimpl
    def mtlzoo_register_backbones(register):
        register("two_levels", TwoLevels, tags={"stages", "spatial"})

    with registered(module_plugin(mtlzoo_register_backbones=mtlzoo_register_backbones), "mine"):
        model = mtlzoo.create_model("hard(backbone=two_levels(width=6), tasks=[seg:2, cls:3])")
        assert model(torch.randn(1, 3, 16, 16))["seg"].shape == (1, 2, 16, 16)
        assert model.provenance["backbone"]["plugin"] == "mine"
    with pytest.raises(UnknownComponentError):
        mtlzoo.create_model("hard(backbone=two_levels, tasks=[cls:3])")
