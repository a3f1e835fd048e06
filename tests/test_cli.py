"""The command line: output of each command, and one clear message (no traceback) for mistakes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from mtlzoo.cli import main, parse_input_shape
from mtlzoo.errors import InvalidArgumentError


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_strategies_shows_plugin_and_distribution(capsys):
    code, out, _ = run(capsys, "list", "strategies")
    assert code == 0
    line = next(row for row in out.splitlines() if " hard " in f" {row} ")
    assert "builtin.hard [mtlzoo]" in line


def test_list_with_pattern_and_json(capsys):
    code, out, _ = run(capsys, "list", "tasks", "seg*", "--json")
    records = json.loads(out)
    assert code == 0 and [r["name"] for r in records] == ["seg"]
    assert records[0]["distribution"] == "mtlzoo"


def test_plugins_is_json_with_the_builtins_and_the_example(capsys):
    code, out, _ = run(capsys, "plugins")
    infos = {p["name"]: p for p in json.loads(out)}
    assert code == 0
    assert infos["builtin.hard"]["components"] == {"strategy": ["hard"]}
    assert infos["builtin.hard"]["hooks"] == ["mtlzoo_register_strategies"]
    assert infos["example"]["distribution"] == "mtlzoo-example"
    assert set(infos["builtin.hard"]) == {"name", "distribution", "version", "hooks", "components", "error"}


def test_info_shows_signature_paper_and_provenance(capsys):
    code, out, _ = run(capsys, "info", "strategy", "hard", "--json")
    record = json.loads(out)
    assert code == 0
    assert record["paper"] == "Caruana, ICML 1993"
    assert record["signature"].startswith("hard(backbone")
    assert record["plugin"] == "builtin.hard" and record["distribution"] == "mtlzoo"
    assert "Hard parameter sharing" in record["doc"]


def test_build_prints_shapes_and_parameter_counts(capsys):
    code, out, _ = run(capsys, "build", "hard(backbone=tiny, tasks=[cls:10, binary])", "--input", "3x32x32")
    assert code == 0
    assert "cls     [2, 10]" in out and "binary  [2, 1]" in out
    assert "shared" in out and "total" in out
    code, out, _ = run(capsys, "build", "hard(backbone=tiny, tasks=[cls:10, seg:3])", "--input", "3x32x32", "--json")
    result = json.loads(out)
    assert result["outputs"] == {"cls": [2, 10], "seg": [2, 3, 32, 32]}
    assert result["parameters"]["total"] == sum(v for k, v in result["parameters"].items() if k != "total")


def test_build_vector_model_defaults_to_its_feature_count(capsys):
    code, out, _ = run(capsys, "build", "hard(backbone=mlp(in_features=7), tasks=[regression])", "--json")
    assert code == 0 and json.loads(out)["input"] == [2, 7]


@pytest.mark.parametrize(
    "argv, words",
    [
        (["build", "hrad(backbone=tiny, tasks=[cls:10])"], "Did you mean 'hard'"),
        (["build", "hard(backbone=tiny tasks=[cls:10])"], "column 20"),
        (["build", "hard(backbone=mlp(in_features=4), tasks=[seg:3])"], "needs spatial features"),
        (["build", "hard(backbone=tiny, tasks=[cls:10])", "--input", "3xbig"], "is not a shape"),
        (["list", "stratgies"], "Did you mean"),
        (["info", "backbone", "tinny"], "Did you mean 'tiny'"),
    ],
)
def test_mistakes_exit_2_with_one_message(capsys, argv, words):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert words in err
    assert "Traceback" not in err
    assert err.startswith("mtlzoo: error: ")


def test_console_script_exits_nonzero_without_traceback():
    exe = shutil.which("mtlzoo") or str(__import__("pathlib").Path(sys.executable).parent / "mtlzoo")
    proc = subprocess.run([exe, "build", "hrad(backbone=tiny, tasks=[cls:10])"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "hard" in proc.stderr and "Traceback" not in proc.stderr


def test_python_dash_m_works():
    proc = subprocess.run([sys.executable, "-m", "mtlzoo", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip()


def test_parse_input_shape():
    assert parse_input_shape("3x64x64") == (3, 64, 64)
    assert parse_input_shape("16") == (16,)
    for bad in ("", "0x3", "3x", "axb"):
        with pytest.raises(InvalidArgumentError):
            parse_input_shape(bad)
