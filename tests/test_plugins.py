"""Entry-point plugins: discovery before validation, provenance, schema, import failure, name clash.

Each case runs in a fresh interpreter whose path holds a fake installed distribution
(a ``*.dist-info`` with ``entry_points.txt``), so the registries of this process stay clean.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "numbers_first"


def fake_dist(root: Path, name: str, entry_points: str, modules: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{name.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    for mod, src in (modules or {}).items():
        (root / f"{mod}.py").write_text(textwrap.dedent(src))
    return root


def run_py(code: str, *paths: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, paths), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=300)


def example_dist(tmp_path: Path) -> Path:
    return fake_dist(tmp_path / "site", "kpod-numbers-first", """
        [kpod.weighting]
        numbers_first = kpod_numbers_first:NumbersFirst
    """)


def test_plugin_is_discovered_listed_and_in_the_schema(tmp_path):
    site = example_dist(tmp_path)
    res = run_py("""
        import json
        from kpod.components import describe_components, recipe_schema
        rows = [r for r in describe_components() if r["name"] == "numbers_first"]
        schema = json.dumps(recipe_schema())
        print(json.dumps({"rows": rows, "in_schema": "numbers_first" in schema and "other" in schema}))
    """, site, EXAMPLE)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    (row,) = out["rows"]
    assert row["kind"] == "weighting" and row["distribution"] == "kpod-numbers-first" and row["version"] == "0.1.0"
    assert row["params"][0]["name"] == "other" and row["params"][0]["default"] == 0.2
    assert out["in_schema"]


def test_recipe_using_a_plugin_validates_and_runs(tmp_path):
    site = example_dist(tmp_path)
    res = run_py(f"""
        import json
        from kpod.recipe import validate_recipe, RecipeError
        from kpod.engine.run import run_recipe
        from tests.helpers import TINY, deep_update
        raw = deep_update(TINY, {{"weighting": {{"name": "numbers_first", "params": {{"other": 0.1}}}},
                                 "train": {{"epochs": 1, "max_steps": 2}}}})
        r = validate_recipe(raw, "plugin.yaml")
        try:
            validate_recipe(deep_update(raw, {{"weighting": {{"params": {{"other": 5}}}}}}), "plugin.yaml")
            bad = "accepted"
        except RecipeError as e:
            bad = str(e)
        s = run_recipe(r, r"{tmp_path / 'run'}", quiet=True)
        print(json.dumps({{"bad": bad, "auc": s["weighting"]["keypoint_auc"]["auc"]}}))
    """, site, EXAMPLE, Path(__file__).resolve().parents[1])
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert "weighting.params.other" in out["bad"]  # validated like a built-in
    assert out["auc"] > 0.9  # numbers and operators are exactly the keypoints of the built-in data


def test_plugin_import_failure_names_its_distribution(tmp_path):
    site = fake_dist(tmp_path / "site", "kpod-broken-plugin", """
        [kpod.schedulers]
        broken = kpod_broken:Broken
    """, {"kpod_broken": "raise ImportError('needs a missing library')\n"})
    res = run_py("from kpod.recipe import recipe_model\nrecipe_model()", site)
    assert res.returncode != 0
    assert "kpod-broken-plugin" in res.stderr and "needs a missing library" in res.stderr


def test_two_components_with_one_name_is_an_error_naming_both(tmp_path):
    site = fake_dist(tmp_path / "site", "kpod-clash-plugin", """
        [kpod.weighting]
        uniform = kpod_clash:Other
    """, {"kpod_clash": "class Other:\n    pass\n"})
    res = run_py("from kpod.registry import discover\ndiscover()", site)
    assert res.returncode != 0
    assert "two weighting components are named 'uniform'" in res.stderr
    assert "kpod-clash-plugin" in res.stderr and "kpod.weighting.uniform" in res.stderr


def test_plugin_not_derived_from_the_kind_base_is_refused_naming_it(tmp_path):
    site = fake_dist(tmp_path / "site", "kpod-plain-plugin", """
        [kpod.answer_extractors]
        plain = kpod_plain:Plain
    """, {"kpod_plain": "class Plain:\n    def extract(self, text):\n        return text\n"})
    res = run_py("from kpod.registry import discover\ndiscover()", site)
    assert res.returncode != 0
    assert "answer extractor component 'plain'" in res.stderr and "kpod-plain-plugin" in res.stderr
    assert "kpod.eval.answers.AnswerExtractor" in res.stderr


def test_the_scheduler_in_docs_plugins_md_works_as_written(tmp_path):
    doc = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text(encoding="utf-8")
    code = doc.split("`my_schedule.py`:", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    site = fake_dist(tmp_path / "site", "my-schedule", """
        [kpod.schedulers]
        half_then_full = my_schedule:HalfThenFull
    """, {"my_schedule": code})
    res = run_py("""
        from kpod.recipe import build_component, validate_recipe
        from kpod import registry
        from kpod.schedulers.base import ScheduleInputs
        r = validate_recipe({"scheduler": {"name": "half_then_full", "params": {"stages": 2}}})
        s = build_component(registry.SCHEDULERS, r.scheduler)
        print(s.needs == frozenset(), s.plan(ScheduleInputs({"a": 4, "b": 1}, 3, 0)).stages)
    """, site)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "True [{'a': 2, 'b': 0}, {'a': 2, 'b': 0}]"


def test_the_weighting_in_docs_plugins_md_is_the_tested_example():
    """plugins.md's weighting walk-through shows examples/numbers_first as it is (the file the
    tests above install and train with), so the documented plugin cannot drift from a working one."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text(encoding="utf-8")
    section = doc.split("## A custom weighting, step by step", 1)[1].split("## ", 1)[0]
    shown = section.split("```python\n", 1)[1].split("```", 1)[0]
    source = (EXAMPLE / "kpod_numbers_first.py").read_text(encoding="utf-8")
    assert shown == source[source.index("import re\n"):]
    assert 'numbers_first = "kpod_numbers_first:NumbersFirst"' in section


def test_cli_components_json_lists_builtins_and_the_plugin(tmp_path):
    site = example_dist(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(EXAMPLE), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-m", "kpod.cli", "components", "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    rows = {(r["kind"], r["name"]): r for r in json.loads(res.stdout)}
    assert rows[("weighting", "numbers_first")]["distribution"] == "kpod-numbers-first"
    assert rows[("scheduler", "kpod_knapsack")]["distribution"] == "kpod"
    assert {"kpod", "std_cot"} <= {name for kind, name in rows if kind == "loss"}
    res = subprocess.run([sys.executable, "-m", "kpod.cli", "schema"], capture_output=True, text=True, env=env, timeout=300)
    schema = json.loads(res.stdout)
    assert schema["additionalProperties"] is False and "numbers_first" in res.stdout


def test_committed_recipe_reference_is_up_to_date():
    from kpod.components import recipe_reference_markdown

    committed = (Path(__file__).resolve().parents[1] / "docs" / "recipe_reference.md").read_text(encoding="utf-8")
    assert committed == recipe_reference_markdown(), "regenerate: kpod schema --markdown > docs/recipe_reference.md"
