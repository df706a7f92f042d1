"""Property-based fuzzing of recipe loading: every bad input is a RecipeError, never a traceback."""

from __future__ import annotations

import os

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kpod.recipe import RecipeError, load_recipe

FUZZ = int(os.environ.get("KPOD_FUZZ", "200"))  # KPOD_FUZZ=5000 for a longer hunt
FIELDS = ["seed", "name", "train.lr", "train.epochs", "train.batch_size", "train.precision", "train.lr_schedule",
          "data.max_length", "data.template.answer_sentence", "scheduler.name", "scheduler.params.beta",
          "weighting.name", "weighting.params.alpha", "loss.name", "eval.splits", "student.model",
          "data.source.name", "data.source.params.n_train", "clusters.k", "difficulty.within_step", "nope.nested"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.lists(st.integers(), max_size=3))


@settings(max_examples=FUZZ, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_arbitrary_text_is_a_recipe_error_or_a_recipe(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_recipe(path)
    except RecipeError as e:
        assert str(path) in str(e)


@settings(max_examples=FUZZ, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.dictionaries(st.sampled_from(FIELDS), scalars, max_size=4))
def test_wrong_values_name_the_field(tmp_path, raw):
    doc: dict = {}
    for dotted, value in raw.items():
        node = doc
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {}) if isinstance(node.get(p, {}), dict) else {}
        node[last] = value
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    try:
        load_recipe(path)
    except RecipeError as e:
        msg = str(e)
        assert msg.startswith(str(path)) and "Traceback" not in msg


@settings(max_examples=FUZZ, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(overrides=st.lists(st.one_of(st.text(max_size=30), st.builds(lambda k, v: f"{k}={v}", st.sampled_from(FIELDS), st.text(max_size=10))), max_size=3))
def test_arbitrary_overrides_are_recipe_errors(tmp_path, overrides):
    path = tmp_path / "r.yaml"
    path.write_text("train: {epochs: 1}\n", encoding="utf-8")
    try:
        load_recipe(path, overrides)
    except RecipeError as e:
        assert str(e)
