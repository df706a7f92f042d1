"""Property-based fuzzing of recipe loading: every bad input is a RecipeError, never a traceback."""

from __future__ import annotations

import os

import yaml
from hypothesis import HealthCheck, event, given, settings
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
        event(_kind(msg))
    else:
        event("valid")


@settings(max_examples=FUZZ, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(overrides=st.lists(st.one_of(st.text(max_size=30), st.builds(lambda k, v: f"{k}={v}", st.sampled_from(FIELDS), st.text(max_size=10))), max_size=3))
def test_arbitrary_overrides_are_recipe_errors(tmp_path, overrides):
    path = tmp_path / "r.yaml"
    path.write_text("train: {epochs: 1}\n", encoding="utf-8")
    try:
        load_recipe(path, overrides)
    except RecipeError as e:
        assert str(e)


# ---------------------------------------------------------------------------- through the CLI
# `kpod validate` on mutated recipes (YAML syntax broken, wrong types, unknown keys, out-of-range
# values, unknown component names, bytes that are not UTF-8) with fuzzed `--set` overrides:
# exit code 0 or 2, never a traceback; an error names the file (or the --set) and the field.
VALID = yaml.safe_dump({
    "name": "fuzz", "seed": 1,
    "data": {"source": {"name": "arith", "params": {"n_train": 50}}, "max_length": 256},
    "student": {"model": "tiny:llama", "tiny": {"hidden_size": 32, "num_heads": 2}},
    "weighting": {"name": "uniform"}, "scheduler": {"name": "linear"},
    "train": {"epochs": 2, "lr": 0.01, "batch_size": 8, "precision": "fp32"},
    "eval": {"splits": ["test"], "extractor": {"name": "numeric"}},
}, sort_keys=False)
PIECES = [":", ": ", "- ", "[", "]", "{", "}", "\n", "  ", "\t", "'", '"', "&a ", "*a", "!!python/object/apply:os.system ",
          "!!binary ", "x", "1e999", "-1", "0", "null", "nope: 1", "\x00", "\u00e9", "%YAML 1.1\n", "---\n", "? "]


@st.composite
def mutated_recipe(draw) -> bytes:
    text = VALID
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.one_of(st.sampled_from(PIECES), st.text(max_size=6)))
        end = i + draw(st.integers(1, 12)) if op != "insert" else i
        text = text[:i] + ("" if op == "delete" else piece) + text[end:]
    return text.encode(draw(st.sampled_from(["utf-8"] * 5 + ["latin-1"])), errors="replace")


@st.composite
def wrong_values(draw) -> bytes:
    """The valid recipe with up to 4 fields set to fuzzed scalars (types, ranges, names, keys)."""
    doc = yaml.safe_load(VALID)
    for dotted, value in draw(st.dictionaries(st.sampled_from(FIELDS), scalars, min_size=1, max_size=4)).items():
        node = doc
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {}) if isinstance(node.get(p, {}), dict) else {}
        node[last] = value
    return yaml.safe_dump(doc).encode()


OVERRIDE_VALUES = ["", "x", "-1", "0", "1e999", "nan", "[1, 2]", "{a: 1}", "null", "true", "!!python/object/apply:os.system [id]",
                   "'unterminated", "kpod_knapsack", "nope"]
override = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(FIELDS + ["train", "data.source", "train.lr.x", "a..b", "=x"]),
              st.one_of(st.sampled_from(OVERRIDE_VALUES), st.text(max_size=8))),
    st.text(max_size=20),
)


@settings(max_examples=FUZZ, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(mutated_recipe(), wrong_values(), st.binary(max_size=120)), overrides=st.lists(override, max_size=2))
def test_cli_validate_exits_0_or_2_with_a_short_error_naming_file_and_field(tmp_path, data, overrides):
    from typer.testing import CliRunner

    from kpod.cli import app

    path = tmp_path / "r.yaml"
    path.write_bytes(data)
    res = CliRunner().invoke(app, ["validate", str(path), *[a for o in overrides for a in ("--set", o)]])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert res.exit_code in (0, 2), res.output
    if res.exit_code == 2:
        lines = res.stderr.strip().splitlines()
        assert lines[0].startswith("error: ") and "Traceback" not in res.stderr
        assert all(str(path) in line or "--set" in line for line in lines[:1])
        assert len(lines) <= 10, res.stderr  # one line per wrong field, nothing else
    event(f"exit {res.exit_code}: {_kind(res.stderr) if res.exit_code else 'valid'}")  # --hypothesis-show-statistics


def _kind(message: str) -> str:
    first = message.splitlines()[0]
    for needle, kind in (("--set", "bad --set override"), ("invalid YAML", "malformed YAML"), ("UTF-8", "not UTF-8"),
                         ("unknown key", "unknown key"), (".name:", "unknown or missing component name"),
                         ("mapping at the top", "not a mapping"), ("greater", "out-of-range value"),
                         ("less", "out-of-range value"), ("expected a section", "section of the wrong type")):
        if needle in first:
            return kind
    return "wrong type or value"
