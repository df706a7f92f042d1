"""What a recipe asks for that the student cannot do is refused before the run directory exists
(kpod/engine/capabilities.py), with the error naming the field; the CLI exits 2 on it."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from kpod.cli import app
from kpod.engine.capabilities import (
    check_capabilities,
    check_packing,
    student_is_encoder_decoder,
)
from kpod.engine.fastpath import FastPathError
from kpod.engine.run import run_recipe
from kpod.models.student import StudentError
from kpod.recipe import RecipeError
from tests.helpers import TINY, deep_update, tiny_recipe

T5 = {"model": "tiny:t5"}


@pytest.mark.parametrize(("patch", "error", "field"), [
    ({"student": T5, "train": {"packing": True}}, FastPathError, r"train\.packing: true: encoder-decoder students"),
    ({"student": T5, "train": {"precision": "fp16"}}, StudentError, r"train\.precision: fp16 .*encoder-decoder"),
])
def test_refused_before_the_run_directory_exists(tmp_path, patch, error, field):
    with pytest.raises(error, match=field):
        run_recipe(tiny_recipe(**patch), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_packing_is_refused_up_front_only_for_an_encoder_decoder_student():
    # a loss that compares padded rows is refused earlier still, when the recipe is validated
    with pytest.raises(RecipeError, match=r"train\.packing: true, but the mcc_kd loss"):
        tiny_recipe(loss={"name": "mcc_kd"}, train={"packing": True})
    with pytest.raises(FastPathError, match=r"train\.packing: true: encoder-decoder students"):
        check_packing(tiny_recipe(student=T5, train={"packing": True}), is_encoder_decoder=True)
    check_packing(tiny_recipe(train={"packing": True}), is_encoder_decoder=False)  # a causal student
    check_packing(tiny_recipe(student=T5), is_encoder_decoder=True)  # auto decides later


def test_the_students_kind_comes_from_the_recipe_or_its_config_only_when_a_check_needs_it(tmp_path):
    assert student_is_encoder_decoder(tiny_recipe(student=T5).student)
    assert not student_is_encoder_decoder(tiny_recipe().student)
    missing = str(tmp_path / "no-such-model")
    # the defaults (kpod backend, auto precision and packing) do not read the student's configuration
    check_capabilities(tiny_recipe(student={"model": missing}), processes=1)
    # packing: true does, and a student that cannot be found is refused there, naming the field
    with pytest.raises(StudentError, match="student.model"):
        check_capabilities(tiny_recipe(student={"model": missing}, train={"packing": True}), processes=1)


def test_the_cli_exits_2_on_a_capability_refusal(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(deep_update(TINY, {"student": T5, "train": {"packing": True}})))
    res = CliRunner().invoke(app, ["run", str(recipe), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2, res.output
    assert "train.packing: true" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "run").exists()
    assert issubclass(FastPathError, RecipeError)
