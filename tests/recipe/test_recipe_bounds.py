"""Hostile recipes are one-line exit-2 errors, in bounded memory: alias bombs, deep nesting,
huge files, `extends` to things that are not recipe files, values `kpod run` would reject."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import yaml
from typer.testing import CliRunner

from kpod.cli import app
from kpod.recipe import RecipeError, load_recipe
from kpod.recipe.safe_yaml import MAX_BYTES, MAX_DEPTH, load_yaml

runner = CliRunner()

BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")
)


def _validate(path, *sets: str) -> str:
    args = ["validate", str(path)] + [a for s in sets for a in ("--set", s)]
    res = runner.invoke(app, args, terminal_width=4000)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


def test_a_billion_laughs_recipe_is_refused_in_bounded_memory(tmp_path):
    """9 levels of 9 aliases (9⁹ ≈ 387 M values expanded) from a 500-byte file. Run in a child so a
    loader that expands it cannot take this test process down with it."""
    path = tmp_path / "lol.yaml"
    path.write_text(BILLION_LAUGHS)
    assert len(BILLION_LAUGHS) < 600
    script = textwrap.dedent(f"""
        import tracemalloc
        from kpod.recipe import RecipeError, load_recipe
        tracemalloc.start()
        try:
            load_recipe({str(path)!r})
        except RecipeError as e:
            print("REFUSED", e)
        print("PEAK_MB", tracemalloc.get_traced_memory()[1] / 2**20)
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "REFUSED" in res.stdout and "alias" in res.stdout and "lol.yaml:" in res.stdout
    peak = float(res.stdout.split("PEAK_MB")[1])
    assert peak < 64, f"{peak:.0f} MB traced while refusing a 500-byte file"
    assert "alias" in _validate(path)


def test_aliases_within_the_cap_still_load():
    assert load_yaml("a: &x {lr: 1}\nb: *x\n") == {"a": {"lr": 1}, "b": {"lr": 1}}


@pytest.mark.parametrize("text", ["[" * 5000 + "]" * 5000, "a:\n" + "".join(" " * i + "b:\n" for i in range(1, 1000))])
def test_deep_nesting_is_one_line_naming_the_depth(tmp_path, text):
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    line = _validate(path)
    assert "deep.yaml:" in line and f"nested more than {MAX_DEPTH} levels" in line


def test_a_deep_set_value_is_one_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: r\n")
    line = _validate(path, "x=" + "[" * 3000)
    assert line.count("[") < 100 and "3,002 characters" in line and "nested more than" in line


def test_an_oversized_recipe_is_refused_before_parsing(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("# " + "x" * MAX_BYTES + "\nname: big\n")
    assert "larger than 1024 KiB" in _validate(path)


@pytest.mark.parametrize("target, says", [("/etc", "a directory"), ("sub", "a directory"), ('""', "a directory"),
                                          ("/dev/zero", "not a regular file"), ("missing.yaml", "no such recipe file")])
def test_extends_only_reads_regular_files(tmp_path, target, says):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "r.yaml"
    path.write_text(f"extends: {target}\nname: r\n")
    assert says in _validate(path)


def test_extends_a_regular_file_still_merges(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"name": "base", "train": {"lr": 0.5}}))
    (tmp_path / "r.yaml").write_text("extends: base.yaml\ntrain: {epochs: 1}\n")
    r = load_recipe(tmp_path / "r.yaml")
    assert r.train.lr == 0.5 and r.train.epochs == 1 and r.name == "r"


@pytest.mark.parametrize("override, field", [
    ("seed=99999999999999999999", "seed:"), ("seed=-1", "seed:"), ("clusters.seed=4294967296", "clusters.seed:"),
    ("train.lr=.inf", "train.lr:"), ("train.lr=1e309", "train.lr:"), ("train.lr=.nan", "train.lr:"),
    ("name=../../escaped", "name:"), ("name=a/b", "name:"), ("name=..", "name:"),
])
def test_validate_rejects_what_run_would(tmp_path, override, field):
    path = tmp_path / "r.yaml"
    path.write_text("name: r\n")
    assert f"r.yaml: {field}" in _validate(path, override)


def test_valid_edges_still_pass(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: a..b\nseed: 4294967295\ntrain: {lr: 1e-3}\n")
    r = load_recipe(path)
    assert r.seed == 2**32 - 1 and r.name == "a..b"
    with pytest.raises(RecipeError):
        load_recipe(path, ["seed=4294967296"])
