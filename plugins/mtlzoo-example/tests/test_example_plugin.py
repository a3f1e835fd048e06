"""The example plugin reaches mtlzoo through its installed entry point, like any third party."""

from __future__ import annotations

from importlib.metadata import entry_points

import torch

import mtlzoo
from mtlzoo.plugins import default_zoo
from mtlzoo.testing import check_head, check_task


def test_entry_point_is_installed():
    names = {ep.name: ep.value for ep in entry_points(group="mtlzoo")}
    assert names.get("example") == "mtlzoo_example"


def test_components_are_registered_with_provenance():
    assert "huber" in mtlzoo.list_components("tasks")
    assert "cosine" in mtlzoo.list_components("heads")
    info = {p["name"]: p for p in mtlzoo.plugins()}["example"]
    assert info["distribution"] == "mtlzoo-example"
    assert info["error"] is None
    assert info["components"] == {"head": ["cosine"], "task": ["huber"]}


def test_builds_a_model_with_the_plugin_parts():
    model = mtlzoo.create_model("hard(backbone=tiny, tasks=[cls(out=4, head=cosine), huber])")
    out = model(torch.randn(2, 3, 16, 16))
    assert out["cls"].shape == (2, 4) and out["huber"].shape == (2, 1)
    assert model.provenance["heads"]["cls"]["distribution"] == "mtlzoo-example"


def test_contracts():
    check_task(default_zoo().tasks.get("huber").factory())
    check_head(default_zoo().heads.get("cosine").factory, out=3)
