"""kpod.recipe: loading, strict validation with dotted paths, overrides, env, dump round trip."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from kpod import registry
from kpod.recipe import RecipeError, dump_recipe, load_recipe, validate_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"

# The data source is given explicitly so that these tests exercise the rule they are about
# (see test_recipe_without_data_source_defaults_to_arith for why).
BASE = "data:\n  source: {name: arith}\n"


def write(tmp_path: Path, body: str, name: str = "recipe.yaml") -> Path:
    p = tmp_path / name
    p.write_text(body, encoding="utf-8")
    return p


def load_error(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    return str(info.value)


# --- the shipped recipes ------------------------------------------------------------------
def test_std_cot_recipe_validates():
    r = load_recipe(RECIPES / "std_cot.yaml")
    assert r.name == "std_cot"
    assert r.loss.name == "std_cot"
    assert r.scheduler.name == "none"
    assert r.weighting.name == "uniform"
    assert r.data.source.name == "arith"
    assert r.data.source.params.n_train == 2400
    assert r.student.pretrain is not None and r.eval.select_on == "validation"
    assert r.train.lr == pytest.approx(3e-3)
    assert r.data.template.use_rationale is True


def test_answer_only_recipe_validates():
    r = load_recipe(RECIPES / "answer_only.yaml")
    assert r.name == "answer_only"
    assert r.data.template.use_rationale is False
    assert r.data.template.answer_sentence == "The answer is {answer}"
    assert r.scheduler.name == "none"


def test_name_defaults_to_file_stem(tmp_path):
    r = load_recipe(write(tmp_path, BASE, "my_run.yaml"))
    assert r.name == "my_run"


# --- strictness: unknown keys at every level -----------------------------------------------
def test_unknown_top_level_key(tmp_path):
    p = write(tmp_path, BASE + "foo: 1\n")
    msg = load_error(p)
    assert "recipe.yaml" in msg
    assert re.search(r"\bfoo: unknown key", msg), msg


def test_unknown_nested_key(tmp_path):
    msg = load_error(write(tmp_path, BASE + "train: {lrr: 0.1}\n"))
    assert "recipe.yaml" in msg
    assert "train.lrr" in msg


def test_unknown_scheduler_param(tmp_path):
    msg = load_error(write(tmp_path, BASE + "scheduler: {name: none, params: {beta: 1.0}}\n"))
    assert "scheduler.params.beta" in msg
    assert "recipe.yaml" in msg


@pytest.mark.parametrize("loss", ["kpod", "std_cot"])
def test_unknown_loss_param(tmp_path, loss):
    msg = load_error(write(tmp_path, BASE + f"loss: {{name: {loss}, params: {{foo: 1}}}}\n"))
    assert "loss.params.foo" in msg
    # the discriminator tag is not leaked into the path
    assert f"loss.{loss}" not in msg


def test_wrong_type(tmp_path):
    msg = load_error(write(tmp_path, BASE + "train: {lr: abc}\n"))
    assert "recipe.yaml" in msg and "train.lr" in msg


def test_out_of_range(tmp_path):
    msg = load_error(write(tmp_path, BASE + "train: {batch_size: 0}\n"))
    assert "train.batch_size" in msg
    assert "1" in msg  # says what the bound is


def test_unknown_component_name_lists_and_suggests(tmp_path):
    msg = load_error(write(tmp_path, BASE + "loss: {name: std_cott}\n"))
    assert "recipe.yaml" in msg
    assert "loss.name" in msg
    assert "kpod" in msg and "std_cot" in msg
    assert "did you mean 'std_cot'" in msg


def test_malformed_yaml_reports_file_and_line(tmp_path):
    # line 3 holds the error ("mapping values are not allowed here")
    p = write(tmp_path, BASE + "c: d: e\n")
    msg = load_error(p)
    assert re.search(r"recipe\.yaml:3(:\d+)?:", msg), msg


@pytest.mark.parametrize("body", ["- a\n- b\n", "just a string\n", "42\n"])
def test_non_mapping_top_level(tmp_path, body):
    msg = load_error(write(tmp_path, body))
    assert "recipe.yaml" in msg
    assert "mapping" in msg


def test_validate_recipe_rejects_non_mapping():
    with pytest.raises(RecipeError, match="mapping"):
        validate_recipe(["a"], "<inline>")


def test_missing_file(tmp_path):
    msg = load_error(tmp_path / "nope.yaml")
    assert "nope.yaml" in msg


# --- --set overrides -----------------------------------------------------------------------
def test_overrides_are_typed_by_the_schema(tmp_path):
    r = load_recipe(write(tmp_path, BASE), overrides=["train.lr=1e-3", "train.epochs=5"])
    assert isinstance(r.train.lr, float) and r.train.lr == pytest.approx(0.001)
    assert isinstance(r.train.epochs, int) and not isinstance(r.train.epochs, bool)
    assert r.train.epochs == 5


def test_override_replaces_value_from_file(tmp_path):
    p = write(tmp_path, BASE + "train: {lr: 0.5, batch_size: 4}\n")
    r = load_recipe(p, overrides=["train.lr=0.25"])
    assert r.train.lr == pytest.approx(0.25)
    assert r.train.batch_size == 4  # siblings untouched


def test_override_without_equals(tmp_path):
    msg = load_error(write(tmp_path, BASE), ["train.lr"])
    assert "train.lr" in msg


def test_override_bad_path(tmp_path):
    msg = load_error(write(tmp_path, BASE), ["train..lr=1"])
    assert "train..lr" in msg


def test_override_unknown_key(tmp_path):
    msg = load_error(write(tmp_path, BASE), ["train.lrr=1"])
    assert "train.lrr" in msg


def test_override_into_a_scalar(tmp_path):
    msg = load_error(write(tmp_path, BASE + "train: {lr: 0.5}\n"), ["train.lr.x=1"])
    assert "train.lr" in msg


def test_override_bad_value_type(tmp_path):
    msg = load_error(write(tmp_path, BASE), ["train.batch_size=many"])
    assert "train.batch_size" in msg


def test_switching_component_drops_old_params(tmp_path):
    # std_cot has no 'weights' param: keeping kpod's params would be an unknown-key error
    p = write(tmp_path, BASE + "loss: {name: kpod, params: {weights: uniform}}\n")
    r = load_recipe(p, overrides=["loss.name=std_cot"])
    assert r.loss.name == "std_cot"
    r2 = load_recipe(
        write(tmp_path, BASE + "loss: {name: std_cot}\n", "b.yaml"), ["loss.name=kpod"]
    )
    assert r2.loss.name == "kpod"
    assert r2.loss.params.weights == "weighted"  # kpod's defaults, nothing carried over


def test_same_component_name_keeps_params(tmp_path):
    p = write(tmp_path, BASE + "loss: {name: kpod, params: {weights: uniform}}\n")
    r = load_recipe(p, overrides=["loss.name=kpod"])
    assert r.loss.params.weights == "uniform"


def test_override_component_param_is_typed(tmp_path):
    p = write(tmp_path, BASE + "loss: {name: kpod}\n")
    r = load_recipe(p, overrides=["loss.params.answer_weight=2"])
    assert isinstance(r.loss.params.answer_weight, float)
    assert r.loss.params.answer_weight == 2.0


# --- ${VAR} expansion ----------------------------------------------------------------------
def test_env_expansion(tmp_path, monkeypatch):
    monkeypatch.setenv("KPOD_TEST_RUN", "expanded_name")
    monkeypatch.setenv("KPOD_TEST_EPOCHS", "7")
    p = write(
        tmp_path, BASE + "name: run_${KPOD_TEST_RUN}\ntrain: {epochs: '${KPOD_TEST_EPOCHS}'}\n"
    )
    r = load_recipe(p)
    assert r.name == "run_expanded_name"
    assert r.train.epochs == 7


def test_missing_env_variable_names_field(tmp_path, monkeypatch):
    monkeypatch.delenv("KPOD_TEST_SURELY_UNSET", raising=False)
    p = write(tmp_path, BASE + "student: {model: '${KPOD_TEST_SURELY_UNSET}'}\n")
    msg = load_error(p)
    assert "recipe.yaml" in msg
    assert "student.model" in msg
    assert "KPOD_TEST_SURELY_UNSET" in msg


# --- dump round trip -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "extra", ["", "loss: {name: kpod, params: {weights: uniform}}\ntrain: {lr: 0.01}\n"]
)
def test_dump_recipe_round_trips(tmp_path, extra):
    r = load_recipe(write(tmp_path, BASE + extra))
    text = dump_recipe(r)
    again = validate_recipe(yaml.safe_load(text), "<dump>")
    assert again == r
    assert again.name == r.name  # the file-stem name is written out


def test_dump_of_shipped_recipe_round_trips():
    r = load_recipe(RECIPES / "answer_only.yaml")
    assert validate_recipe(yaml.safe_load(dump_recipe(r))) == r


# --- cross-field rules ---------------------------------------------------------------------
def test_use_rationale_false_with_scheduler_none_is_fine(tmp_path):
    p = write(tmp_path, BASE + "  template: {use_rationale: false}\nscheduler: {name: none}\n")
    r = load_recipe(p)
    assert r.data.template.use_rationale is False


def test_use_rationale_false_rejects_progressive_scheduler(tmp_path):
    registry.discover()
    others = [n for n in registry.SCHEDULERS.names() if n != "none"]
    if not others:
        pytest.skip("only the 'none' scheduler is registered")
    p = write(
        tmp_path, BASE + f"  template: {{use_rationale: false}}\nscheduler: {{name: {others[0]}}}\n"
    )
    msg = load_error(p)
    assert "scheduler" in msg and "use_rationale" in msg


def test_answer_sentence_needs_answer_slot(tmp_path):
    p = write(tmp_path, BASE + "  template: {answer_sentence: 'The answer is'}\n")
    msg = load_error(p)
    assert "data.template" in msg
    assert "{answer}" in msg


def test_group_by_question_with_group_by_length_is_refused_when_the_recipe_loads(tmp_path):
    from typer.testing import CliRunner

    from kpod.cli import app

    p = write(tmp_path, BASE + "train: {group_by_question: true, group_by_length: true}\n")
    msg = load_error(p)
    assert msg.startswith(f"{p}: train:") and "train.group_by_question and train.group_by_length" in msg
    res = CliRunner().invoke(app, ["validate", str(p)], terminal_width=4000)
    assert res.exit_code == 2 and "train.group_by_question and train.group_by_length" in res.output
    assert "Traceback" not in res.output
    for one in ("group_by_question", "group_by_length"):  # either alone is fine
        assert getattr(load_recipe(write(tmp_path, BASE + f"train: {{{one}: true}}\n")).train, one) is True


@pytest.mark.parametrize("train, field", [("{packing: true}", "train.packing: true"),
                                          ("{loss_chunk_tokens: 64}", "train.loss_chunk_tokens: 64")])
def test_a_loss_needing_full_logits_refuses_the_fast_path_asked_for_by_value(tmp_path, train, field):
    body = "data:\n  source: {name: arith}\n  format: {name: mcc_kd}\nloss: {name: mcc_kd}\n"
    msg = load_error(write(tmp_path, body + f"train: {train}\n"))
    assert field in msg and "loss.name: mcc_kd" in msg
    # auto leaves the choice to the run, which turns the fast path off for this loss
    assert load_recipe(write(tmp_path, body + "train: {packing: auto, loss_chunk_tokens: auto}\n")).loss.name == "mcc_kd"


# --- known bugs ----------------------------------------------------------------------------
def test_recipe_without_data_source_defaults_to_arith():
    r = validate_recipe({}, "<empty>")
    assert r.data.source.name == "arith"


def test_missing_required_component_params_names_dotted_path(tmp_path):
    msg = load_error(write(tmp_path, "data:\n  source: {name: local}\n"))
    assert "data.source.params" in msg


def test_a_task_loss_without_its_data_format_is_refused_before_anything_runs():
    from kpod.recipe import RecipeError
    from tests.helpers import tiny_recipe

    for loss in ("dsbs", "scott"):
        with pytest.raises(RecipeError, match=rf"loss.name: '{loss}' .* data.format.name is 'plain'; set data.format.name: {loss}"):
            tiny_recipe(loss={"name": loss})
        assert tiny_recipe(loss={"name": loss}, data={"format": {"name": loss}}).loss.name == loss


# --- extends with a switched component, and --set order ------------------------------------
def test_readme_local_data_extends_example_validates(tmp_path):
    # the README's case: a recipe extending std_cot switches data.source to local; arith's
    # params (n_train, ...) must not be carried over into local's
    p = write(
        tmp_path,
        f"extends: {RECIPES / 'std_cot.yaml'}\n"
        "data: {source: {name: local, params: {files: {train: train.jsonl}}}}\n",
    )
    r = load_recipe(p)
    assert r.data.source.name == "local"
    assert r.data.source.params.files == {"train": "train.jsonl"}
    assert r.loss.name == "std_cot"  # everything else still inherited
    assert r.train.epochs == 6


def test_extends_same_component_name_merges_params(tmp_path):
    base = write(tmp_path, BASE + "loss: {name: kpod, params: {weights: uniform}}\n", "base.yaml")
    p = write(tmp_path, f"extends: {base.name}\nloss: {{name: kpod, params: {{answer_weight: 2}}}}\n")
    r = load_recipe(p)
    assert r.loss.params.weights == "uniform" and r.loss.params.answer_weight == 2.0


@pytest.mark.parametrize(
    "flags",
    [
        ["loss.params.answer_weight=3", "loss.name=kpod"],
        ["loss.name=kpod", "loss.params.answer_weight=3"],
    ],
)
def test_set_component_switch_is_order_independent(tmp_path, flags):
    p = write(tmp_path, BASE + "loss: {name: std_cot}\n")
    r = load_recipe(p, overrides=flags)
    assert r.loss.name == "kpod"
    assert r.loss.params.answer_weight == 3.0
