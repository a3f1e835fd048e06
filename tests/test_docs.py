"""Documentation promises: every hook documented with its signature; README and CI agree."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from mtlzoo import hookspecs

ROOT = Path(__file__).resolve().parents[1]


def test_every_hook_is_documented_with_its_exact_signature():
    text = (ROOT / "docs" / "hooks.md").read_text()
    for name in hookspecs.HOOKS.values():
        params = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert f"### `{name}({params})`" in text, f"docs/hooks.md does not document {name}({params})"


def test_register_arguments_are_documented():
    text = (ROOT / "docs" / "hooks.md").read_text()
    params = inspect.signature(hookspecs.Register.__call__).parameters
    for name in list(params)[1:]:
        assert f"| `{name}` |" in text, f"register argument {name!r} is not in docs/hooks.md"


def test_readme_quick_start_has_two_commands_and_ci_runs_them():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- quickstart -->\s*```bash\n(.*?)```\s*<!-- /quickstart -->", readme, re.S)
    assert block, "README needs a quick start block between <!-- quickstart --> markers"
    commands = [line for line in block.group(1).splitlines() if line.strip()]
    assert len(commands) == 2
    assert "pip install" in commands[0] and "pytest" in commands[1]
    assert "README.md" in (ROOT / ".ci" / "run").read_text()


def test_every_docs_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (ROOT / "docs").rglob("*.md"):
        rel = page.relative_to(ROOT / "docs").as_posix()
        assert rel in nav, f"docs/{rel} is not in mkdocs.yml nav"
