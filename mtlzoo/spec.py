"""The spec language: one tree, two spellings.

A spec names a component and its keyword arguments, nested::

    mtan(backbone=resnet50, tasks=[seg:13, depth, normal])
    cross_stitch(backbone=timm(model=convnext_atto), tasks={left: cls:10, right: cls:10}, alpha=0.9)

and the same tree as a dict (what YAML gives)::

    {"name": "mtan", "backbone": {"name": "resnet50"}, "tasks": [{"name": "seg", "out": 13}, "depth"]}

Grammar (a hand-written recursive-descent parser; nothing is ever ``eval``-ed)::

    spec    := value END
    value   := ref | list | dict | NUMBER | STRING | true | false | none | inf | nan
    ref     := NAME ( '(' [ NAME '=' value (',' NAME '=' value)* [','] ] ')' | ':' INT )?
    list    := '[' [ value (',' value)* [','] ] ']'
    dict    := '{' [ key ':' value (',' key ':' value)* [','] ] '}'
    key     := NAME | STRING

``seg:13`` is short for ``seg(out=13)``. A bare name is a :class:`Ref` with no arguments; a
component that wants a string (``timm(model=convnext_atto)``) receives its name. ``format`` writes
the canonical spelling (``backbone`` and ``tasks`` first, other arguments sorted), and
``parse(format(r)) == r`` holds for every tree.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mtlzoo.errors import SpecSyntaxError

__all__ = ["Ref", "as_name", "as_ref", "coerce", "format", "from_dict", "parse", "to_dict"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:[.\-/][A-Za-z0-9_]+)*")
_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_KEYWORDS: dict[str, Any] = {
    "true": True, "false": False, "none": None, "null": None, "inf": math.inf, "nan": math.nan,
    # Python's spellings, because users write them; format() writes the lower-case ones
    "True": True, "False": False, "None": None,
}
_FIRST_KEYS = ("backbone", "tasks")


@dataclass(frozen=True, eq=True)
class Ref:
    """A reference to a component: its registered ``name`` and the keyword arguments for it."""

    name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    __hash__ = None  # type: ignore[assignment]  # kwargs is a dict

    def __str__(self) -> str:
        return format(self)

    def replace(self, **kwargs: Any) -> Ref:
        """A copy with ``kwargs`` merged over the existing arguments."""
        return Ref(self.name, {**self.kwargs, **kwargs})


# --------------------------------------------------------------------------------------- parser
class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, message: str, pos: int | None = None) -> SpecSyntaxError:
        pos = self.pos if pos is None else pos
        shown = self.text.replace("\n", " ").replace("\t", " ").replace("\r", " ")
        return SpecSyntaxError(message, shown, pos + 1)

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
            self.pos += 1

    def peek(self) -> str:
        self.skip_space()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, char: str, context: str) -> None:
        if self.peek() != char:
            found = repr(self.text[self.pos]) if self.pos < len(self.text) else "end of spec"
            raise self.error(f"expected {char!r} {context}, found {found}")
        self.pos += 1

    def parse(self) -> Any:
        if not self.text.strip():
            raise self.error("empty spec; expected a component such as 'hard(backbone=tiny, tasks=[cls:10])'")
        value = self.value()
        if self.peek():
            raise self.error(f"unexpected {self.text[self.pos]!r} after a complete spec")
        return value

    def value(self) -> Any:
        char = self.peek()
        if char == "[":
            return self.list_()
        if char == "{":
            return self.dict_()
        if char and char in "\"'":
            return self.string()
        if char == "-" and self.text.startswith("-inf", self.pos):
            end = self.pos + 4
            if end >= len(self.text) or not (self.text[end].isalnum() or self.text[end] == "_"):
                self.pos = end
                return -math.inf
        if char and (char.isdigit() or char in "-."):
            return self.number()
        if char and (char.isalpha() or char == "_"):
            return self.ref()
        if not char:
            raise self.error("unexpected end of spec; expected a value")
        raise self.error(f"unexpected {char!r}; expected a name, number, string, list or dict")

    def name(self, what: str) -> str:
        self.skip_space()
        match = _NAME.match(self.text, self.pos)
        if not match:
            raise self.error(f"expected {what}")
        self.pos = match.end()
        return match.group()

    def ref(self) -> Any:
        name = self.name("a name")
        if name in _KEYWORDS:
            return _KEYWORDS[name]
        char = self.peek()
        if char == "(":
            self.pos += 1
            kwargs: dict[str, Any] = {}
            while self.peek() != ")":
                key_pos = self.pos
                if not (self.peek().isalpha() or self.peek() == "_"):
                    raise self.error(
                        "expected an argument name (arguments are written key=value)"
                        if self.peek() else "unclosed '(': expected ')'"
                    )
                key = self.name("an argument name")
                if self.peek() != "=":
                    raise self.error(
                        f"expected '=' after argument {key!r}: arguments are key=value, "
                        "positional arguments are not allowed"
                    )
                self.pos += 1
                if key in kwargs:
                    raise self.error(f"argument {key!r} given twice", key_pos)
                kwargs[key] = self.value()
                if self.peek() == ",":
                    self.pos += 1
                elif self.peek() != ")":
                    self.expect(")", f"or ',' in the arguments of {name!r}")
            self.pos += 1
            return Ref(name, kwargs)
        if char == ":":
            self.pos += 1
            self.skip_space()
            match = re.compile(r"\d+").match(self.text, self.pos)
            if not match or (match.end() < len(self.text) and self.text[match.end()] in ".eE"):
                raise self.error(f"expected an integer output size after '{name}:' (as in seg:13)")
            self.pos = match.end()
            return Ref(name, {"out": int(match.group())})
        return Ref(name, {})

    def number(self) -> int | float:
        match = _NUMBER.match(self.text, self.pos)
        if not match:
            raise self.error("expected a number")
        end = match.end()
        if end < len(self.text) and (self.text[end].isalnum() or self.text[end] == "_"):
            raise self.error("a name cannot start with a digit or '-'; quote it as a string", self.pos)
        self.pos = end
        text = match.group()
        if any(c in text for c in ".eE"):
            return float(text)
        return int(text)

    def string(self) -> str:
        quote = self.text[self.pos]
        start = self.pos
        self.pos += 1
        out: list[str] = []
        escapes = {'"': '"', "'": "'", "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n",
                   "r": "\r", "t": "\t"}
        while True:
            if self.pos >= len(self.text):
                raise self.error("unterminated string", start)
            char = self.text[self.pos]
            if char == quote:
                self.pos += 1
                return "".join(out)
            if char == "\\":
                nxt = self.text[self.pos + 1: self.pos + 2]
                if nxt in escapes:
                    out.append(escapes[nxt])
                    self.pos += 2
                elif nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", self.text[self.pos + 2: self.pos + 6]):
                    code = int(self.text[self.pos + 2: self.pos + 6], 16)
                    self.pos += 6
                    # a JSON-style surrogate pair spells one character outside the BMP
                    if 0xD800 <= code < 0xDC00 and self.text.startswith("\\u", self.pos) and re.fullmatch(
                        r"[dD][c-fC-F][0-9a-fA-F]{2}", self.text[self.pos + 2: self.pos + 6]
                    ):
                        low = int(self.text[self.pos + 2: self.pos + 6], 16)
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                        self.pos += 6
                    out.append(chr(code))
                else:
                    raise self.error("invalid escape in string", self.pos)
            else:
                out.append(char)
                self.pos += 1

    def list_(self) -> list[Any]:
        self.pos += 1
        items: list[Any] = []
        while self.peek() != "]":
            if not self.peek():
                raise self.error("unclosed '[': expected ']'")
            items.append(self.value())
            if self.peek() == ",":
                self.pos += 1
            elif self.peek() != "]":
                self.expect("]", "or ',' in a list")
        self.pos += 1
        return items

    def dict_(self) -> dict[str, Any]:
        self.pos += 1
        items: dict[str, Any] = {}
        while self.peek() != "}":
            key_pos = self.pos
            char = self.peek()
            if char and char in "\"'":
                key = self.string()
            elif char.isalpha() or char == "_":
                key = self.name("a key")
            else:
                raise self.error("expected a key (a name or a string) or '}'" if char else "unclosed '{': expected '}'")
            self.expect(":", f"after the key {key!r}")
            if key in items:
                raise self.error(f"key {key!r} given twice", key_pos)
            items[key] = self.value()
            if self.peek() == ",":
                self.pos += 1
            elif self.peek() != "}":
                self.expect("}", "or ',' in a dict")
        self.pos += 1
        return items


def parse(text: str) -> Any:
    """Parse a spec string into a tree of :class:`Ref`, lists, dicts and scalars.

    Raises :class:`~mtlzoo.errors.SpecSyntaxError` with a caret under the offending column.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse() takes a string, not {type(text).__name__}")
    return _Parser(text).parse()


# ------------------------------------------------------------------------------------ formatter
def _format_key(key: str) -> str:
    if _NAME.fullmatch(key) and key not in _KEYWORDS:
        return key
    return json.dumps(key, ensure_ascii=False)


def _ordered(kwargs: Mapping[str, Any]) -> list[str]:
    first = [k for k in _FIRST_KEYS if k in kwargs]
    return first + sorted(k for k in kwargs if k not in _FIRST_KEYS)


def format(value: Any) -> str:
    """The canonical spelling of a spec tree; ``parse(format(v)) == v``."""
    if isinstance(value, Ref):
        if not _NAME.fullmatch(value.name) or value.name in _KEYWORDS:
            raise ValueError(f"{value.name!r} is not a valid component name")
        out = value.kwargs.get("out")
        if set(value.kwargs) == {"out"} and type(out) is int and out >= 0:
            return f"{value.name}:{out}"
        if not value.kwargs:
            return value.name
        for key in value.kwargs:
            if not _NAME.fullmatch(key) or key in _KEYWORDS:
                raise ValueError(f"{key!r} is not a valid argument name")
        args = ", ".join(f"{k}={format(value.kwargs[k])}" for k in _ordered(value.kwargs))
        return f"{value.name}({args})"
    if value is None:
        return "none"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_format_key(str(k))}: {format(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write a {type(value).__name__} in a spec")


# ---------------------------------------------------------------------------------- dict form
def to_dict(value: Any) -> Any:
    """The dict spelling: every :class:`Ref` becomes ``{"name": ..., **kwargs}``."""
    if isinstance(value, Ref):
        return {"name": value.name, **{k: to_dict(value.kwargs[k]) for k in _ordered(value.kwargs)}}
    if isinstance(value, (list, tuple)):
        return [to_dict(v) for v in value]
    if isinstance(value, Mapping):
        return {k: to_dict(v) for k, v in value.items()}
    return value


def from_dict(value: Any) -> Any:
    """Inverse of :func:`to_dict`: a mapping with a ``name`` key becomes a :class:`Ref`."""
    if isinstance(value, Ref):
        return value
    if isinstance(value, Mapping):
        if isinstance(value.get("name"), str):
            return Ref(value["name"], {k: from_dict(v) for k, v in value.items() if k != "name"})
        return {k: from_dict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [from_dict(v) for v in value]
    return value


def coerce(spec: Any) -> Ref:
    """A component spec given as a string, a dict or a :class:`Ref`, as a :class:`Ref`."""
    if isinstance(spec, str):
        value = parse(spec)
    else:
        value = from_dict(spec)
    return as_ref(value, "spec")


def as_ref(value: Any, what: str) -> Ref:
    """A value in a component position: a bare string names the component."""
    from mtlzoo.errors import InvalidArgumentError

    if isinstance(value, str):
        value = Ref(value, {}) if _NAME.fullmatch(value) and value not in _KEYWORDS else parse(value)
    elif isinstance(value, Mapping) and isinstance(value.get("name"), str):
        value = from_dict(value)
    if isinstance(value, Ref):
        return value
    raise InvalidArgumentError(
        f"{what} must name a component (e.g. 'tiny' or 'timm(model=resnet18)'), got {value!r}"
    )


def as_name(value: Any) -> Any:
    """A value in a string position: a bare name with no arguments is that string."""
    if isinstance(value, Ref) and not value.kwargs:
        return value.name
    if isinstance(value, list):
        return [as_name(v) for v in value]
    return value
