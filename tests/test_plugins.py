"""Entry-point loading: isolation of broken plugins, duplicates, enable/disable lists, built-ins."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from mtlzoo.errors import DuplicateComponentError, PluginLoadError
from mtlzoo.plugins import collect_registrations, load_zoo, module_plugin

GOOD = """
from mtlzoo import hookimpl

def widget(size: int = 1):
    return size

@hookimpl
def mtlzoo_register_heads(register):
    register("{name}", widget, summary="test head")
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path into which tests install fake distributions with entry points."""
    monkeypatch.syspath_prepend(str(tmp_path))
    created = []

    def install(dist: str, plugin: str, module: str, source: str, version: str = "1.0") -> None:
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        info = tmp_path / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[mtlzoo]\n{plugin} = {module}\n")
        created.append(module)

    yield install
    for module in created:
        sys.modules.pop(module, None)


def test_builtins_load_through_entry_points_with_their_distribution():
    zoo = load_zoo()
    hard = zoo.strategies.get("hard")
    assert hard.plugin == "builtin.hard"
    assert hard.distribution == "mtlzoo"
    assert zoo.plugins["builtin.hard"].error is None


def test_a_plugin_that_fails_to_import_is_reported_and_isolated(site):
    site("broken-dist", "broken", "broken_plugin_mod", "raise ImportError('missing dependency xyz')\n")
    site("good-dist", "good", "good_plugin_mod", GOOD.format(name="good_head"))
    zoo = load_zoo()
    assert "missing dependency xyz" in zoo.plugins["broken"].error
    assert zoo.plugins["broken"].distribution == "broken-dist"
    assert zoo.heads.get("good_head").distribution == "good-dist"
    assert zoo.strategies.get("hard")  # built-ins unaffected


def test_a_plugin_raising_systemexit_at_import_is_isolated(site):
    site("exit-dist", "exiter", "exit_plugin_mod", "raise SystemExit(3)\n")
    zoo = load_zoo()
    assert "SystemExit" in zoo.plugins["exiter"].error


def test_a_plugin_raising_while_registering_is_isolated(site):
    site("raise-dist", "raiser", "raise_plugin_mod", """
        from mtlzoo import hookimpl

        @hookimpl
        def mtlzoo_register_tasks(register):
            raise ValueError("cannot register today")
    """)
    zoo = load_zoo()
    assert "cannot register today" in zoo.plugins["raiser"].error


def test_misspelled_hook_is_an_error_not_silence(site):
    site("typo-dist", "typo", "typo_plugin_mod", """
        from mtlzoo import hookimpl

        @hookimpl
        def mtlzoo_register_backbone(register):
            pass
    """)
    zoo = load_zoo()
    error = zoo.plugins["typo"].error
    assert "mtlzoo_register_backbone" in error and "mtlzoo_register_backbones" in error


def test_hook_without_hookimpl_is_an_error():
    def mtlzoo_register_heads(register):
        pass

    with pytest.raises(PluginLoadError, match=r"without @mtlzoo\.hookimpl"):
        collect_registrations(module_plugin(mtlzoo_register_heads=mtlzoo_register_heads), "undecorated")


def test_two_plugins_claiming_one_name(site):
    site("dist-one", "one", "one_plugin_mod", GOOD.format(name="shared_name"))
    site("dist-two", "two", "two_plugin_mod", GOOD.format(name="shared_name"))
    zoo = load_zoo()
    with pytest.raises(DuplicateComponentError) as info:
        zoo.heads.get("shared_name")
    assert "one (dist-one 1.0)" in str(info.value) and "two (dist-two 1.0)" in str(info.value)
    assert zoo.plugins["two"].error  # the conflict is visible in `mtlzoo plugins`


def test_disable_by_plugin_name(site, monkeypatch):
    site("good-dist", "good", "good_plugin_mod2", GOOD.format(name="good_head2"))
    monkeypatch.setenv("MTLZOO_DISABLE_PLUGINS", "good, builtin.fcn")
    zoo = load_zoo()
    assert "good_head2" not in zoo.heads
    assert "fcn" not in zoo.heads
    assert "linear" in zoo.heads
    assert "MTLZOO_DISABLE_PLUGINS" in zoo.plugins["good"].error


def test_disable_with_a_wildcard_and_by_distribution(site, monkeypatch):
    site("good-dist", "good", "good_plugin_mod3", GOOD.format(name="good_head3"))
    monkeypatch.setenv("MTLZOO_DISABLE_PLUGINS", "good-dist,builtin.*")
    zoo = load_zoo()
    assert len(zoo.heads.list("good_head3")) == 0
    assert "hard" not in zoo.strategies


def test_load_only_an_allow_list(site, monkeypatch):
    site("good-dist", "good", "good_plugin_mod4", GOOD.format(name="good_head4"))
    monkeypatch.setenv("MTLZOO_LOAD_PLUGINS", "mtlzoo")
    zoo = load_zoo()
    assert "good_head4" not in zoo.heads
    assert "hard" in zoo.strategies
    assert "MTLZOO_LOAD_PLUGINS" in zoo.plugins["good"].error


def test_missing_builtins_fail_loudly():
    with pytest.raises(PluginLoadError, match="is mtlzoo installed"):
        load_zoo(group="mtlzoo_group_that_nobody_uses")


def test_every_declared_builtin_module_exists():
    """Each built-in family file declared in pyproject.toml must import without error."""
    zoo = load_zoo()
    failures = {name: info.error for name, info in zoo.plugins.items()
                if name.startswith("builtin.") and info.error}
    assert not failures


def test_pyproject_declares_every_builtin_family_file():
    root = Path(__file__).resolve().parents[1]
    text = (root / "pyproject.toml").read_text()
    files = sorted(p for p in (root / "plugins" / "mtlzoo_builtin").rglob("*.py")
                   if p.name != "__init__.py" and not p.name.startswith("_"))
    for path in files:
        module = ".".join(path.relative_to(root / "plugins").with_suffix("").parts)
        assert f'"{module}"' in text, f"{module} has no entry point in pyproject.toml"
