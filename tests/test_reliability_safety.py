"""Safety: recipes and model output never run code; checkpoints load weights only; remote model
code runs only when a recipe asks for it.

The package source is checked by its syntax tree (not by grep), so comments, strings and
``model.eval()`` do not count, and ``torch.load(..., weights_only=True)`` is told apart from a
call without it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from typer.testing import CliRunner

import kpod
from kpod import registry
from kpod.cli import app
from kpod.models.config import StudentConfig
from kpod.recipe import RecipeError, load_recipe

SOURCES = sorted(Path(kpod.__file__).parent.rglob("*.py"))
UNSAFE_YAML = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all", "Loader", "UnsafeLoader",
               "FullLoader"}


def _is_true(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_calls(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            kw = {k.arg: k.value for k in node.keywords}
            if isinstance(f, ast.Name) and f.id in ("eval", "exec", "__import__"):
                found.append(f"{f.id}()")
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                owner, name = f.value.id, f.attr
                if owner == "yaml" and name in UNSAFE_YAML:
                    found.append(f"yaml.{name}()")
                if owner == "torch" and name == "load" and not _is_true(kw.get("weights_only", ast.Constant(None))):
                    found.append("torch.load() without weights_only=True")
                if owner in ("pickle", "marshal", "dill") and name in ("load", "loads"):
                    found.append(f"{owner}.{name}()")
            if "trust_remote_code" in kw and _is_true(kw["trust_remote_code"]):
                found.append("trust_remote_code=True")
            if "shell" in kw and _is_true(kw["shell"]):
                found.append("shell=True")
        if isinstance(node, ast.ImportFrom) and node.module == "yaml":
            found += [f"from yaml import {a.name}" for a in node.names if a.name in UNSAFE_YAML]
    return found


def test_the_checker_finds_each_unsafe_pattern():
    bad = """
import yaml, torch, pickle, subprocess
from yaml import load
eval("1"); exec("x = 1"); yaml.load(s); yaml.unsafe_load(s); torch.load(p); torch.load(p, weights_only=False)
pickle.loads(b); f(name, trust_remote_code=True); subprocess.run("ls", shell=True)
"""
    assert len(unsafe_calls(ast.parse(bad))) == 10
    ok = "model.eval(); yaml.safe_load(s); torch.load(p, weights_only=True, map_location='cpu'); re.compile('x')"
    assert unsafe_calls(ast.parse(ok)) == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(Path(kpod.__file__).parent)))
def test_package_source_has_no_unsafe_call(path):
    assert unsafe_calls(ast.parse(path.read_text(encoding="utf-8"), str(path))) == []


def test_remote_code_is_off_unless_a_recipe_asks():
    assert StudentConfig().trust_remote_code is False
    fields = 0
    registry.discover()
    for reg in (registry.WEIGHTING, registry.SCHEDULERS, registry.LOSSES, registry.DATA_SOURCES, registry.ANSWER_EXTRACTORS):
        for _, cls in reg.items():
            f = getattr(cls, "Params", None) and cls.Params.model_fields.get("trust_remote_code")
            if f:
                fields += 1
                assert f.default is False, cls
    assert fields >= 2  # the attention and mask-learning weightings load reference models


def test_yaml_tags_that_would_run_code_are_recipe_errors(tmp_path):
    marker = tmp_path / "pwned"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(RecipeError, match=r"r\.yaml:1:7: invalid YAML"):
        load_recipe(recipe)
    recipe.write_text("train: {epochs: 1}\n")
    with pytest.raises(RecipeError, match="--set"):
        load_recipe(recipe, [f"name=!!python/object/apply:os.system ['touch {marker}']"])
    res = CliRunner().invoke(app, ["validate", str(recipe), "--set", f"seed=!!python/object/apply:os.system ['touch {marker}']"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert not marker.exists()


def test_model_output_is_parsed_never_run(tmp_path):
    from kpod.eval.answers import ChoiceExtractor, NumericExtractor

    marker = tmp_path / "pwned"
    output = f"__import__('os').system('touch {marker}') so the answer is 4*2"
    assert NumericExtractor().extract(output) == "4"
    assert ChoiceExtractor().extract(output + " (B)") == "B"
    assert not marker.exists()  # and "4*2" was read as text, not evaluated to 8
