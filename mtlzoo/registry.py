"""Entries, registries and the zoo that holds one registry per kind of component.

A :class:`Zoo` is filled by :mod:`mtlzoo.plugins` from the ``mtlzoo`` entry-point group; tests
and notebooks can fill one by hand with :meth:`Zoo.add_plugin`. Lookups never fail silently:
unknown names and keyword arguments raise with close matches, names claimed by two plugins raise
naming both, deprecated names warn and resolve.
"""

from __future__ import annotations

import fnmatch
import inspect
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from mtlzoo.errors import (
    DuplicateComponentError,
    InvalidArgumentError,
    UnknownComponentError,
    did_you_mean,
    suggestion,
)
from mtlzoo.hookspecs import HOOKS

KINDS: tuple[str, ...] = tuple(HOOKS)
_PLURALS = {"backbones": "backbone", "strategies": "strategy", "heads": "head", "tasks": "task",
            "weightings": "weighting", "datasets": "dataset"}
_SNAKE = re.compile(r"[a-z][a-z0-9_]*")


def kind_of(word: str) -> str:
    """``strategies`` or ``strategy`` -> ``strategy``; anything else raises with suggestions."""
    kind = _PLURALS.get(word, word)
    if kind not in KINDS:
        raise UnknownComponentError(
            f"unknown component kind {word!r}.{suggestion(word, [*KINDS, *_PLURALS])} "
            f"Kinds: {', '.join(_PLURALS)}."
        )
    return kind


def natural_key(text: str) -> list[Any]:
    """Sort key that orders ``resnet18`` before ``resnet101``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


@dataclass(frozen=True)
class Entry:
    """One registered component and where it came from."""

    kind: str
    name: str
    factory: Callable[..., Any] | None
    aliases: tuple[str, ...] = ()
    tags: frozenset[str] = frozenset()
    requires: frozenset[str] = frozenset()
    summary: str | None = None
    paper: str | None = None
    replaced_by: str | None = None
    plugin: str = "<unknown>"
    distribution: str | None = None
    version: str | None = None

    @property
    def signature(self) -> inspect.Signature | None:
        if self.factory is None:
            return None
        try:
            return inspect.signature(self.factory)
        except (TypeError, ValueError):  # some builtins have none
            return None

    @property
    def origin(self) -> str:
        """``plugin (distribution version)`` for messages."""
        if self.distribution:
            return f"{self.plugin} ({self.distribution} {self.version or '?'})"
        return self.plugin

    def tags_for(self, kwargs: Mapping[str, Any] | None = None) -> frozenset[str]:
        """Tags of the component this entry builds with ``kwargs``.

        Most components offer the same tags whatever their arguments: the registered ``tags``. A
        factory whose capabilities depend on its arguments (``timm(model=...)`` is staged for some
        models only) exposes ``factory.tags_for(**kwargs) -> set of tags``; the result is capped by
        the registered tags, which stay the most the component can offer (what listings show).
        """
        hook = getattr(self.factory, "tags_for", None)
        if hook is None:
            return self.tags
        return self.tags & frozenset(hook(**dict(kwargs or {})))

    def provenance(self) -> dict[str, Any]:
        return {"name": self.name, "plugin": self.plugin, "distribution": self.distribution,
                "version": self.version}

    def check_kwargs(self, kwargs: Iterable[str], *, skip: Iterable[str] = ()) -> None:
        """Raise :class:`UnknownComponentError` for keyword arguments the factory does not take."""
        sig = self.signature
        if sig is None:
            return
        params = sig.parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return
        accepted = [n for n, p in params.items()
                    if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
                    and n not in set(skip)]
        for key in kwargs:
            if key not in accepted:
                raise UnknownComponentError(
                    f"{self.kind} {self.name!r} has no argument {key!r}.{suggestion(key, accepted)} "
                    f"It accepts: {', '.join(accepted) or 'no arguments'}."
                )

    def create(self, **kwargs: Any) -> Any:
        """Call the factory after checking the keyword arguments against its signature."""
        assert self.factory is not None
        self.check_kwargs(kwargs)
        sig = self.signature
        if sig is not None:
            missing = [n for n, p in sig.parameters.items()
                       if p.default is inspect.Parameter.empty and n not in kwargs
                       and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
            if missing:
                raise InvalidArgumentError(
                    f"{self.kind} {self.name!r} needs argument(s) {', '.join(missing)}, "
                    f"e.g. {self.name}({missing[0]}=...)"
                )
        return self.factory(**kwargs)


@dataclass
class Registry:
    """All registered components of one kind."""

    kind: str
    _entries: dict[str, Entry] = field(default_factory=dict)
    _aliases: dict[str, str] = field(default_factory=dict)
    _conflicts: dict[str, list[Entry]] = field(default_factory=dict)

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.list())

    def names(self) -> list[str]:
        return sorted(self._entries, key=natural_key)

    def _owner(self, name: str) -> Entry | None:
        if name in self._entries:
            return self._entries[name]
        if name in self._aliases:
            return self._entries[self._aliases[name]]
        return None

    def add(self, entry: Entry, *, on_conflict: str = "raise") -> None:
        """Add an entry. A name (or alias) already taken raises :class:`DuplicateComponentError`;
        with ``on_conflict="record"`` the name is instead marked ambiguous, so that using it
        raises, while every other name keeps working."""
        if not _SNAKE.fullmatch(entry.name):
            raise InvalidArgumentError(
                f"{self.kind} name {entry.name!r} from plugin {entry.plugin!r} is not snake_case "
                "(lower-case letters, digits and '_', starting with a letter)"
            )
        if entry.factory is None and entry.replaced_by is None:
            raise InvalidArgumentError(f"{self.kind} {entry.name!r} has no factory")
        for name in (entry.name, *entry.aliases):
            other = self._owner(name)
            if other is None and name in self._conflicts:
                other = self._conflicts[name][0]
            if other is not None:
                error = DuplicateComponentError(
                    f"{self.kind} name {name!r} is registered twice: by plugin {other.origin} "
                    f"and by plugin {entry.origin}. A spec must resolve to one implementation: "
                    "uninstall or disable one of them (MTLZOO_DISABLE_PLUGINS=<plugin>)."
                )
                if on_conflict == "raise":
                    raise error
                self._conflicts.setdefault(name, [other]).append(entry)
                self._entries.pop(name, None)
                self._aliases.pop(name, None)
                return
        self._entries[entry.name] = entry
        for alias in entry.aliases:
            self._aliases[alias] = entry.name

    def remove_plugin(self, plugin: str) -> None:
        for name in [n for n, e in self._entries.items() if e.plugin == plugin]:
            del self._entries[name]
        for alias in [a for a, n in self._aliases.items() if n not in self._entries]:
            del self._aliases[alias]

    def get(self, name: str) -> Entry:
        """The entry for ``name`` or one of its aliases; deprecated names warn and resolve."""
        if name in self._conflicts:
            origins = " and ".join(e.origin for e in self._conflicts[name])
            raise DuplicateComponentError(
                f"{self.kind} {name!r} is registered by more than one plugin: {origins}. "
                "Disable one of them (MTLZOO_DISABLE_PLUGINS=<plugin>) so the spec is reproducible."
            )
        entry = self._owner(name)
        if entry is None:
            known = [*self._entries, *self._aliases]
            raise UnknownComponentError(
                f"unknown {self.kind} {name!r}.{suggestion(name, known)} "
                f"{len(self._entries)} {self.kind} name(s) are registered (mtlzoo list {self.kind}); "
                "if it comes from a plugin, is that plugin installed and enabled (mtlzoo plugins)?"
            )
        if entry.replaced_by is not None:
            target = self._owner(entry.replaced_by) if entry.replaced_by != entry.name else None
            warnings.warn(
                f"{self.kind} {name!r} is deprecated; use {entry.replaced_by!r} instead",
                DeprecationWarning,
                stacklevel=3,
            )
            if target is not None:
                return target
            if entry.factory is None:
                raise UnknownComponentError(
                    f"{self.kind} {name!r} is replaced by {entry.replaced_by!r}, which is not registered"
                )
        return entry

    def list(self, pattern: str = "*", *, tags: Iterable[str] = (), plugin: str | None = None,
             include_deprecated: bool = True) -> list[Entry]:
        """Entries whose name matches the shell-style ``pattern``, carrying all ``tags`` and coming
        from ``plugin`` (plugin or distribution name), in natural order."""
        tags = set(tags)
        out = []
        for name in self.names():
            entry = self._entries[name]
            if not fnmatch.fnmatchcase(name, pattern):
                continue
            if not tags <= entry.tags:
                continue
            if plugin is not None and plugin not in (entry.plugin, entry.distribution):
                continue
            if entry.replaced_by is not None and not include_deprecated:
                continue
            out.append(entry)
        return out

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.get(name).create(**kwargs)

    def close_matches(self, name: str) -> list[str]:
        return did_you_mean(name, [*self._entries, *self._aliases])


@dataclass
class PluginInfo:
    """What ``mtlzoo plugins`` reports about one plugin."""

    name: str
    distribution: str | None = None
    version: str | None = None
    hooks: list[str] = field(default_factory=list)
    components: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "distribution": self.distribution, "version": self.version,
                "hooks": self.hooks, "components": self.components, "error": self.error}


class Zoo:
    """One :class:`Registry` per kind, and the record of which plugins filled them."""

    def __init__(self) -> None:
        self.registries: dict[str, Registry] = {kind: Registry(kind) for kind in KINDS}
        self.plugins: dict[str, PluginInfo] = {}

    def __getitem__(self, kind: str) -> Registry:
        return self.registries[kind_of(kind)]

    backbones = property(lambda self: self.registries["backbone"])
    strategies = property(lambda self: self.registries["strategy"])
    heads = property(lambda self: self.registries["head"])
    tasks = property(lambda self: self.registries["task"])
    weightings = property(lambda self: self.registries["weighting"])
    datasets = property(lambda self: self.registries["dataset"])

    def add_plugin(self, plugin: object, name: str | None = None, *, distribution: str | None = None,
                   version: str | None = None, on_conflict: str = "raise") -> PluginInfo:
        """Run a plugin's hooks (without entry points) and add what it registers.

        Registration is all-or-nothing: if a hook raises, nothing of this plugin is kept.
        """
        from mtlzoo.plugins import collect_registrations  # plugins builds on registry

        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        info = PluginInfo(name, distribution, version)
        entries, info.hooks = collect_registrations(plugin, name, distribution, version)
        added: list[Entry] = []
        try:
            for entry in entries:
                before = len(self.registries[entry.kind]._conflicts)
                self.registries[entry.kind].add(entry, on_conflict=on_conflict)
                if len(self.registries[entry.kind]._conflicts) > before:
                    info.error = f"{entry.kind} {entry.name!r} is also registered by another plugin"
                    continue
                added.append(entry)
        except Exception:
            for registry in self.registries.values():
                registry.remove_plugin(name)
            raise
        for entry in added:
            info.components.setdefault(entry.kind, []).append(entry.name)
        self.plugins[name] = info
        return info

    def get(self, kind: str, name: str) -> Entry:
        return self[kind].get(name)

    def list(self, kind: str, pattern: str = "*", **filters: Any) -> list[Entry]:
        return self[kind].list(pattern, **filters)
