"""Registry: lookups, wildcards, did-you-mean, keyword checks, duplicates, deprecation."""

from __future__ import annotations

import warnings

import pytest

from mtlzoo import hookimpl
from mtlzoo.errors import DuplicateComponentError, InvalidArgumentError, UnknownComponentError
from mtlzoo.plugins import module_plugin
from mtlzoo.registry import Entry, Registry, kind_of, natural_key


def factory(width: int = 4, depth: int = 2):
    return ("built", width, depth)


def entry(name, plugin="p", **kw):
    return Entry(kind="backbone", name=name, factory=kw.pop("factory", factory), plugin=plugin, **kw)


def test_natural_sort_and_wildcards():
    reg = Registry("backbone")
    for name in ["resnet101", "resnet18", "resnet50", "convnext_tiny", "vit_small"]:
        reg.add(entry(name))
    assert reg.names() == ["convnext_tiny", "resnet18", "resnet50", "resnet101", "vit_small"]
    assert [e.name for e in reg.list("res*")] == ["resnet18", "resnet50", "resnet101"]
    assert natural_key("a10") > natural_key("a9")


def test_list_filters_by_tags_and_plugin():
    reg = Registry("backbone")
    reg.add(entry("a", tags=frozenset({"stages", "spatial"})))
    reg.add(entry("b", tags=frozenset({"spatial"}), plugin="other", distribution="other-dist"))
    assert [e.name for e in reg.list(tags=["stages"])] == ["a"]
    assert [e.name for e in reg.list(plugin="other")] == ["b"]
    assert [e.name for e in reg.list(plugin="other-dist")] == ["b"]


def test_unknown_name_suggests_close_matches_and_counts():
    reg = Registry("strategy")
    reg.add(entry("hard"))
    reg.add(entry("cross_stitch"))
    with pytest.raises(UnknownComponentError) as info:
        reg.get("hrad")
    message = str(info.value)
    assert "Did you mean 'hard'" in message
    assert "2 strategy name(s) are registered" in message
    assert "plugin" in message
    assert isinstance(info.value, LookupError) and not isinstance(info.value, KeyError)


def test_aliases_resolve():
    reg = Registry("backbone")
    reg.add(entry("timm_resnet", aliases=("resnet",)))
    assert reg.get("resnet").name == "timm_resnet"
    assert "resnet" in reg


def test_create_checks_keyword_arguments():
    reg = Registry("backbone")
    reg.add(entry("tiny"))
    assert reg.create("tiny", width=8) == ("built", 8, 2)
    with pytest.raises(UnknownComponentError) as info:
        reg.create("tiny", widht=8)
    assert "has no argument 'widht'" in str(info.value)
    assert "Did you mean 'width'" in str(info.value)
    assert "width, depth" in str(info.value)


def test_missing_required_argument_is_named():
    def needs(in_features: int, hidden: int = 3):
        return in_features

    reg = Registry("backbone")
    reg.add(entry("mlp", factory=needs))
    with pytest.raises(InvalidArgumentError, match=r"needs argument\(s\) in_features"):
        reg.create("mlp")


def test_var_keyword_factories_accept_anything():
    reg = Registry("backbone")
    reg.add(entry("open", factory=lambda **kw: kw))
    assert reg.create("open", anything=1) == {"anything": 1}


def test_duplicates_raise_naming_both_plugins_and_distributions():
    reg = Registry("strategy")
    reg.add(entry("hard", plugin="first", distribution="dist-a", version="1.0"))
    with pytest.raises(DuplicateComponentError) as info:
        reg.add(entry("hard", plugin="second", distribution="dist-b", version="2.0"))
    message = str(info.value)
    assert "first (dist-a 1.0)" in message and "second (dist-b 2.0)" in message


def test_recorded_conflict_makes_the_name_unusable_but_not_others():
    reg = Registry("strategy")
    reg.add(entry("hard", plugin="first"))
    reg.add(entry("soft", plugin="first"))
    reg.add(entry("hard", plugin="second"), on_conflict="record")
    with pytest.raises(DuplicateComponentError, match=r"first.*second"):
        reg.get("hard")
    assert reg.get("soft").plugin == "first"
    # a third claimant joins the conflict rather than winning it
    reg.add(entry("hard", plugin="third"), on_conflict="record")
    with pytest.raises(DuplicateComponentError, match="third"):
        reg.get("hard")


def test_alias_colliding_with_a_name_is_a_duplicate():
    reg = Registry("backbone")
    reg.add(entry("resnet"))
    with pytest.raises(DuplicateComponentError):
        reg.add(entry("other", aliases=("resnet",), plugin="q"))


def test_deprecated_names_warn_and_resolve():
    reg = Registry("strategy")
    reg.add(entry("hard_sharing"))
    reg.add(entry("hps", factory=None, replaced_by="hard_sharing"))
    reg.add(entry("old_but_working", replaced_by="not_registered"))
    with pytest.warns(DeprecationWarning, match="'hps' is deprecated; use 'hard_sharing'"):
        assert reg.get("hps").name == "hard_sharing"
    with pytest.warns(DeprecationWarning):
        assert reg.get("old_but_working").name == "old_but_working"
    assert [e.name for e in reg.list(include_deprecated=False)] == ["hard_sharing"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reg.get("hard_sharing")


def test_names_must_be_snake_case():
    reg = Registry("head")
    with pytest.raises(InvalidArgumentError, match="snake_case"):
        reg.add(entry("BadName"))


def test_kind_of_accepts_singular_and_plural():
    assert kind_of("strategies") == "strategy"
    assert kind_of("strategy") == "strategy"
    with pytest.raises(UnknownComponentError, match="Did you mean"):
        kind_of("stratgies")


def test_zoo_add_plugin_records_provenance(zoo):
    @hookimpl
    def mtlzoo_register_heads(register):
        register("plain", factory, summary="s", paper="P, 2020", tags={"dense"})

    info = zoo.add_plugin(module_plugin(mtlzoo_register_heads=mtlzoo_register_heads), "mine",
                          distribution="my-dist", version="0.3")
    got = zoo.heads.get("plain")
    assert (got.plugin, got.distribution, got.version) == ("mine", "my-dist", "0.3")
    assert got.tags == frozenset({"dense"})
    assert info.components == {"head": ["plain"]}
    assert info.hooks == ["mtlzoo_register_heads"]


def test_a_plugin_that_raises_midway_leaves_nothing_behind(zoo):
    @hookimpl
    def mtlzoo_register_heads(register):
        register("first_ok", factory)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        zoo.add_plugin(module_plugin(mtlzoo_register_heads=mtlzoo_register_heads), "bad")
    assert "first_ok" not in zoo.heads
