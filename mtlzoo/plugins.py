"""Plugin loading: the ``mtlzoo`` entry-point group, each plugin isolated from the others.

Built-in components travel the same path as third-party ones: the root ``pyproject.toml`` declares
one entry point per built-in family file. Loading walks the group itself, so that a plugin that
fails to import, names a hook that does not exist, or raises while registering is reported
(``mtlzoo plugins`` shows its error) while every other plugin keeps working.

Environment:

``MTLZOO_DISABLE_PLUGINS=a,b``
    skip these plugins (entry-point names or distribution names; shell wildcards allowed,
    e.g. ``builtin.*``).
``MTLZOO_LOAD_PLUGINS=a,b``
    load only these (same matching); everything else is skipped.
"""

from __future__ import annotations

import fnmatch
import os
import threading
import types
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from mtlzoo import hookspecs
from mtlzoo.errors import PluginLoadError, suggestion
from mtlzoo.registry import Entry, PluginInfo, Zoo

ENTRY_POINT_GROUP = "mtlzoo"
BUILTIN_DISTRIBUTION = "mtlzoo"
_HOOK_NAMES = set(hookspecs.HOOKS.values())

_default_zoo: Zoo | None = None
_lock = threading.Lock()


def _plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("mtlzoo")
    pm.add_hookspecs(hookspecs)
    return pm


def _check_hook_names(plugin: object, name: str) -> None:
    """Catch ``mtlzoo_*`` functions that are misspelled or lack ``@hookimpl``; pluggy only sees
    decorated ones, and a silent miss is the worst outcome."""
    marker = "mtlzoo_impl"
    for attr in dir(plugin):
        if not attr.startswith("mtlzoo_"):
            continue
        value = getattr(plugin, attr, None)
        if not callable(value):
            continue
        if attr not in _HOOK_NAMES:
            raise PluginLoadError(
                f"plugin {name!r} defines {attr!r}, which is not an mtlzoo hook."
                f"{suggestion(attr, sorted(_HOOK_NAMES))} Hooks: {', '.join(sorted(_HOOK_NAMES))}."
            )
        if not hasattr(value, marker):
            raise PluginLoadError(
                f"plugin {name!r} defines {attr!r} without @mtlzoo.hookimpl, so it would never be "
                "called; decorate it with @hookimpl."
            )


def collect_registrations(plugin: object, name: str, distribution: str | None = None,
                          version: str | None = None) -> tuple[list[Entry], list[str]]:
    """Run ``plugin``'s hooks and return the entries they register and the hooks it implements."""
    _check_hook_names(plugin, name)
    pm = _plugin_manager()
    try:
        pm.register(plugin, name=name)
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginLoadError(f"plugin {name!r} is not a valid mtlzoo plugin: {exc}") from exc
    entries: list[Entry] = []
    hooks: list[str] = []
    for kind, hook_name in hookspecs.HOOKS.items():
        caller = getattr(pm.hook, hook_name)
        if not caller.get_hookimpls():
            continue
        hooks.append(hook_name)

        def register(component_name: str, factory: Any, *, aliases: Any = (), tags: Any = (),
                     requires: Any = (), summary: str | None = None, paper: str | None = None,
                     replaced_by: str | None = None, _kind: str = kind) -> None:
            entries.append(Entry(
                kind=_kind, name=component_name, factory=factory,
                aliases=(aliases,) if isinstance(aliases, str) else tuple(aliases),
                tags=frozenset((tags,) if isinstance(tags, str) else tags),
                requires=frozenset((requires,) if isinstance(requires, str) else requires),
                summary=summary, paper=paper, replaced_by=replaced_by,
                plugin=name, distribution=distribution, version=version,
            ))

        caller(register=register)
    return entries, hooks


def _patterns(variable: str) -> list[str] | None:
    raw = os.environ.get(variable)
    if raw is None:
        return None
    return [p.strip() for p in raw.split(",") if p.strip()]


def _matches(patterns: list[str], *names: str | None) -> bool:
    return any(n is not None and fnmatch.fnmatchcase(n, p) for p in patterns for n in names)


def _entry_points(group: str) -> list[EntryPoint]:
    return sorted(entry_points(group=group), key=lambda ep: ep.name)


def load_zoo(group: str = ENTRY_POINT_GROUP) -> Zoo:
    """A new :class:`Zoo` filled from every plugin in the entry-point ``group``."""
    zoo = Zoo()
    disabled = _patterns("MTLZOO_DISABLE_PLUGINS") or []
    allowed = _patterns("MTLZOO_LOAD_PLUGINS")
    found_builtin = False
    for ep in _entry_points(group):
        dist = ep.dist.name if ep.dist is not None else None
        version = ep.dist.version if ep.dist is not None else None
        if dist == BUILTIN_DISTRIBUTION:
            found_builtin = True
        name = ep.name if ep.name not in zoo.plugins else f"{ep.name}@{dist}"
        if _matches(disabled, ep.name, dist) or (allowed is not None and not _matches(allowed, ep.name, dist)):
            why = "MTLZOO_DISABLE_PLUGINS" if _matches(disabled, ep.name, dist) else "MTLZOO_LOAD_PLUGINS"
            zoo.plugins[name] = PluginInfo(name, dist, version, error=f"disabled by {why}")
            continue
        try:
            module = ep.load()
        except BaseException as exc:  # a plugin's import may raise anything, even SystemExit
            if isinstance(exc, KeyboardInterrupt):
                raise
            zoo.plugins[name] = PluginInfo(
                name, dist, version, error=f"failed to import {ep.value}: {type(exc).__name__}: {exc}"
            )
            continue
        try:
            zoo.add_plugin(module, name, distribution=dist, version=version, on_conflict="record")
        except Exception as exc:
            zoo.plugins[name] = PluginInfo(name, dist, version, error=f"{type(exc).__name__}: {exc}")
    if not found_builtin:
        raise PluginLoadError(
            f"no built-in components found in the {group!r} entry-point group: is mtlzoo installed? "
            "Install it with `pip install -e .` (or `pip install mtlzoo`) rather than running it from "
            "a source folder."
        )
    return zoo


def default_zoo() -> Zoo:
    """The process-wide zoo, loaded once from the entry points on first use."""
    global _default_zoo
    with _lock:
        if _default_zoo is None:
            _default_zoo = load_zoo()
        return _default_zoo


def reset_default_zoo(zoo: Zoo | None = None) -> None:
    """Forget (or replace) the process-wide zoo, e.g. after changing the plugin environment."""
    global _default_zoo
    with _lock:
        _default_zoo = zoo


def plugins() -> list[dict[str, Any]]:
    """Every plugin seen, with its distribution, hooks, components and load error (if any)."""
    return [info.as_dict() for info in default_zoo().plugins.values()]


def module_plugin(**hooks: Any) -> types.ModuleType:
    """A throw-away plugin module made of the given hook functions (for tests and notebooks)."""
    module = types.ModuleType("mtlzoo_inline_plugin")
    for hook_name, function in hooks.items():
        setattr(module, hook_name, function)
    return module
