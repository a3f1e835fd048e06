"""The spec grammar: canonical round trips, the dict spelling, and errors with a caret."""

from __future__ import annotations

import math
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtlzoo.errors import SpecSyntaxError
from mtlzoo.spec import Ref, as_name, as_ref, coerce, format, from_dict, parse, to_dict

names = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True).filter(
    lambda s: s not in {"true", "false", "none", "null", "inf", "nan"}
)
scalars = st.one_of(
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
)


def refs(children):
    return st.builds(Ref, names, st.dictionaries(names, children, max_size=3))


values = st.recursive(
    scalars,
    lambda children: st.one_of(
        refs(children),
        st.lists(children, max_size=3),
        st.dictionaries(st.text(max_size=6), children, max_size=3),
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(refs(values))
def test_format_then_parse_is_identity(ref):
    assert parse(format(ref)) == ref


@settings(max_examples=200, deadline=None)
@given(values)
def test_format_is_canonical(value):
    text = format(value)
    assert format(parse(text)) == text


@settings(max_examples=200, deadline=None)
@given(refs(values))
def test_dict_spelling_round_trips(ref):
    assert from_dict(to_dict(ref)) == ref


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=string.printable + "αβ€", max_size=40))
def test_arbitrary_text_parses_or_raises_spec_syntax_error(text):
    try:
        parse(text)
    except SpecSyntaxError as exc:
        assert 1 <= exc.column <= len(text) + 1
        assert "^" in str(exc)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="()[]{}=:,'\"ab1.- ", max_size=30))
def test_punctuation_soup_parses_or_raises_spec_syntax_error(text):
    try:
        parse(text)
    except SpecSyntaxError:
        pass


def test_the_design_examples():
    ref = parse("mtan(backbone=resnet50, tasks=[seg:13, depth, normal])")
    tasks = [Ref("seg", {"out": 13}), Ref("depth"), Ref("normal")]
    assert ref == Ref("mtan", {"backbone": Ref("resnet50"), "tasks": tasks})
    ref = parse("cross_stitch(backbone=timm(model=convnext_atto), tasks=[cls:10, binary], alpha=0.9)")
    assert ref.kwargs["alpha"] == 0.9
    assert as_name(ref.kwargs["backbone"].kwargs["model"]) == "convnext_atto"
    assert format(ref) == "cross_stitch(backbone=timm(model=convnext_atto), tasks=[cls:10, binary], alpha=0.9)"


def test_yaml_dict_spelling_matches_the_string():
    as_dict = {"name": "mtan", "backbone": {"name": "resnet50"},
               "tasks": [{"name": "seg", "out": 13}, "depth", "normal"]}
    tree = from_dict(as_dict)
    # bare strings stay strings in the dict form; components accept either spelling
    assert [as_ref(t, "task") for t in tree.kwargs["tasks"]] == parse("[seg:13, depth, normal]")
    assert coerce(as_dict).name == "mtan"


def test_scalars():
    assert parse("f(a=1, b=-2.5, c=1e-3, d=true, e=none, g='x y', h=\"q\\\"\", i=-inf, j=[], k={})") == Ref(
        "f", {"a": 1, "b": -2.5, "c": 1e-3, "d": True, "e": None, "g": "x y", "h": 'q"', "i": -math.inf,
              "j": [], "k": {}}
    )
    assert isinstance(parse("1"), int) and isinstance(parse("1.0"), float)
    assert math.isnan(parse("nan"))


def test_python_spellings_of_booleans_and_none():
    assert parse("timm(model=resnet50, pretrained=False, x=True, y=None)").kwargs == {
        "model": Ref("resnet50"), "pretrained": False, "x": True, "y": None}
    assert format(parse("f(a=False)")) == "f(a=false)"


def test_names_may_carry_dots_and_hyphens_for_external_model_names():
    assert parse("timm(model=vit_small_patch16_224.augreg_in21k)").kwargs["model"] == Ref(
        "vit_small_patch16_224.augreg_in21k"
    )


@pytest.mark.parametrize(
    "text, column, words",
    [
        ("hard(backbone=tiny tasks=[cls:10])", 20, "expected ')' or ','"),
        ("hard(backbone=tiny,", 20, "unclosed '('"),
        ("hard(1)", 6, "key=value"),
        ("hard(backbone)", 14, "expected '='"),
        ("seg:1.5", 5, "integer output size"),
        ("hard(a=1, a=2)", 11, "given twice"),
        ("[1, 2", 6, "expected ']' or ','"),
        ("'abc", 1, "unterminated string"),
        ("hard() x", 8, "after a complete spec"),
        ("", 1, "empty spec"),
        ("3abc", 1, "cannot start with a digit"),
        ("f(x=@)", 5, "unexpected '@'"),
    ],
)
def test_syntax_errors_point_at_the_column(text, column, words):
    with pytest.raises(SpecSyntaxError) as info:
        parse(text)
    assert info.value.column == column
    assert words in str(info.value)
    lines = str(info.value).splitlines()
    assert lines[-1].index("^") - 2 == column - 1  # caret under the column, after the two-space indent


def test_format_refuses_what_it_cannot_write():
    with pytest.raises(TypeError):
        format(object())
    with pytest.raises(ValueError):
        format(Ref("bad name"))


def test_shorthand_is_only_for_out():
    assert format(Ref("seg", {"out": 13})) == "seg:13"
    assert format(Ref("seg", {"out": 13, "head": Ref("aspp")})) == "seg(head=aspp, out=13)"
    assert format(Ref("binary", {"out": True})) == "binary(out=true)"
