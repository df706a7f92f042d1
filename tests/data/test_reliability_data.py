"""Data faults × formats: every bad row is an error naming file:line, or (``data.on_bad_row:
skip``) a skip that is counted and listed; no row disappears without a count.

Formats: the ``local`` source on JSONL and on a JSON list, and the benchmark loaders on the GSM8K
JSONL release format (``gsm8k``) and the MCC-KD JSON list format (``svamp``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from kpod.cli import app
from kpod.data.load import load_data
from kpod.data.records import DataError
from kpod.recipe import validate_recipe
from tests.helpers import TINY, deep_update

runner = CliRunner()
N, BAD = 6, 3  # rows per file; the index of the faulty row


def good_rows(n: int = N) -> list[dict]:
    return [{"id": f"q{i}", "question": f"Tom has {i + 2} apples and buys {i + 3} more. How many apples now?",
             "rationale": f"Tom starts with {i + 2} apples. {i + 2} + {i + 3} = {2 * i + 5}.", "answer": str(2 * i + 5)}
            for i in range(n)]


# format: (file suffix, row in the format's own fields, data.source section)
FORMATS = {
    "local-jsonl": (".jsonl", lambda r: dict(r), lambda p: {"name": "local", "params": {"files": {"train": p}, "fields": {"id": "id"}}}),
    "local-json": (".json", lambda r: dict(r), lambda p: {"name": "local", "params": {"files": {"train": p}, "fields": {"id": "id"}}}),
    "gsm8k-jsonl": (".jsonl", lambda r: {"question": r["question"], "answer": r["rationale"].replace(". ", ".\n") + f"\n#### {r['answer']}"},
                    lambda p: {"name": "gsm8k", "params": {"files": {"train": p}, "rationales": "first"}}),
    "mcc-json": (".json", lambda r: {"instruction": r["question"], "label": r["answer"],
                                     "output": [f"{r['rationale']} Therefore, the answer is {r['answer']}."]},
                 lambda p: {"name": "svamp", "params": {"files": {"train": p}, "rationales": "first"}}),
}


def _missing_field(fmt: str, row: dict) -> dict:
    row.pop({"mcc-json": "label"}.get(fmt, "answer"))
    return row


def _empty_rationale(fmt: str, row: dict) -> dict:
    if fmt == "gsm8k-jsonl":
        row["answer"] = "#### " + row["answer"].rsplit("#### ", 1)[1]
    else:
        row["output" if fmt == "mcc-json" else "rationale"] = [] if fmt == "mcc-json" else ""
    return row


def _non_numeric(fmt: str, row: dict, gold: str = "eleven") -> dict:
    if fmt == "gsm8k-jsonl":
        row["answer"] = row["answer"].rsplit("#### ", 1)[0] + f"#### {gold}"
    else:
        row["label" if fmt == "mcc-json" else "answer"] = gold
    return row


# fault: (row → raw bytes of the faulty row, reason key, skippable in a .jsonl, skippable in a .json)
FAULTS = {
    "missing field": (lambda fmt, row: json.dumps(_missing_field(fmt, row)).encode(), "missing_field", True, True),
    "empty rationale": (lambda fmt, row: json.dumps(_empty_rationale(fmt, row)).encode(), "empty_rationale", True, True),
    "non-numeric answer": (lambda fmt, row: json.dumps(_non_numeric(fmt, row)).encode(), "bad_answer", True, True),
    "invalid JSON": (lambda fmt, row: json.dumps(row).encode()[:-9], "invalid_json", True, False),
    "wrong encoding": (lambda fmt, row: json.dumps(row, ensure_ascii=False).replace("apples", "pommes \u00e9").encode("latin-1"),
                       "not_utf8", True, False),
    # a gold answer kpod cannot read as one number is never scored as another one (1 1/2 is not 1)
    "two-number answer": (lambda fmt, row: json.dumps(_non_numeric(fmt, row, "1 1/2")).encode(), "bad_answer", True, True),
}
CASES = [(fmt, fault) for fmt in FORMATS for fault in FAULTS]


def write_data(tmp_path: Path, fmt: str, rows: list[bytes]) -> tuple[str, list[int]]:
    """The file and the line each row starts on."""
    suffix = FORMATS[fmt][0]
    path = tmp_path / f"train{suffix}"
    if suffix == ".jsonl":
        path.write_bytes(b"\n".join(rows) + b"\n")
        return str(path), [i + 1 for i in range(len(rows))]
    path.write_bytes(b"[\n" + b",\n".join(rows) + b"\n]\n")
    return str(path), [i + 2 for i in range(len(rows))]


def faulty_file(tmp_path: Path, fmt: str, fault: str) -> tuple[str, int]:
    make = FAULTS[fault][0]
    convert = FORMATS[fmt][1]
    rows = [make(fmt, convert(r)) if i == BAD else json.dumps(convert(r)).encode() for i, r in enumerate(good_rows())]
    path, lines = write_data(tmp_path, fmt, rows)
    return path, lines[BAD]


BASE = {k: v for k, v in TINY.items() if k != "data"}  # TINY without its data source


def recipe_for(fmt: str, path: str, policy: str = "error"):
    return validate_recipe(deep_update(BASE, {"data": {"source": FORMATS[fmt][2](path), "on_bad_row": policy}}), "<test>")


@pytest.mark.parametrize(("fmt", "fault"), CASES)
def test_bad_row_is_an_error_naming_file_and_line(tmp_path, fmt, fault):
    path, line = faulty_file(tmp_path, fmt, fault)
    with pytest.raises(DataError) as e:
        load_data(recipe_for(fmt, path), training=True)
    assert f"{path}:{line}" in str(e.value)


@pytest.mark.parametrize(("fmt", "fault"), CASES)
def test_bad_row_is_skipped_and_counted_or_stays_an_error(tmp_path, fmt, fault):
    path, line = faulty_file(tmp_path, fmt, fault)
    _, reason, in_jsonl, in_json = FAULTS[fault]
    if not (in_jsonl if path.endswith(".jsonl") else in_json):  # the file cannot be parsed around it
        with pytest.raises(DataError, match=rf"{path}:{line}: "):
            load_data(recipe_for(fmt, path, "skip"), training=True)
        return
    report: dict = {}
    train = load_data(recipe_for(fmt, path, "skip"), report, training=True)["train"]
    bad = report["bad_rows"]
    assert bad["count"] == 1 and bad["by_reason"] == {reason: 1}
    assert bad["rows"][0]["where"].startswith(f"{path}:{line}")
    assert len(train) + bad["count"] == N  # nothing lost without a count
    assert all(r.meta["where"] != bad["rows"][0]["where"] for r in train)
    if not fmt.startswith("local"):  # ids come from the row number: the rows after the bad one keep theirs
        assert train[BAD].sample_id.endswith(f"/train/{BAD + 1:05d}")
        assert report["splits"]["train"]["rows"] == N


@pytest.mark.parametrize("fmt", ["local-jsonl", "local-json", "mcc-json"])
def test_duplicate_ids_are_an_error_naming_both_lines_even_when_skipping(tmp_path, fmt):
    rows = good_rows()
    rows[BAD + 2]["id"] = rows[BAD]["id"]
    converted = [dict(FORMATS[fmt][1](r), id=r["id"]) for r in rows]  # MCC-KD rows with ids, as `kpod teach` writes
    path, lines = write_data(tmp_path, fmt, [json.dumps(r).encode() for r in converted])
    for policy in ("error", "skip"):
        with pytest.raises(DataError, match="duplicate sample_id") as e:
            load_data(recipe_for(fmt, path, policy), training=True)
        assert f"{path}:{lines[BAD]}" in str(e.value) and f"{path}:{lines[BAD + 2]}" in str(e.value)


def test_gsm8k_rows_never_share_an_id(tmp_path):
    """GSM8K files carry no ids: ids come from the row number, so identical rows stay distinct."""
    row = json.dumps(FORMATS["gsm8k-jsonl"][1](good_rows()[0])).encode()
    path, _ = write_data(tmp_path, "gsm8k-jsonl", [row, row])
    train = load_data(recipe_for("gsm8k-jsonl", path), training=True)["train"]
    assert [r.sample_id for r in train] == ["gsm8k/train/00000", "gsm8k/train/00001"]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_a_huge_row_loads_and_is_left_to_the_too_long_policy(tmp_path, fmt):
    convert = FORMATS[fmt][1]
    rows = good_rows()
    rows[BAD]["rationale"] = "Tom adds 12 + 7 = 19. " * 100_000  # 2.2 MB
    path, _ = write_data(tmp_path, fmt, [json.dumps(convert(r)).encode() for r in rows])
    train = load_data(recipe_for(fmt, path), training=True)["train"]
    assert len(train) == N and max(len(r.rationale) for r in train) > 2_000_000


def test_eval_splits_need_no_rationale(tmp_path):
    rows = good_rows()
    for r in rows:
        r["rationale"] = ""
    path, _ = write_data(tmp_path, "local-jsonl", [json.dumps(r).encode() for r in rows])
    train, _ = write_data(tmp_path / "..", "local-jsonl", [json.dumps(r).encode() for r in good_rows()])
    recipe = validate_recipe(deep_update(BASE, {"data": {"source": {"name": "local", "params": {
        "files": {"train": train, "test": path}, "id_prefix": "d"}}}}), "<test>")
    assert len(load_data(recipe, training=True)["test"]) == N
    answer_only = validate_recipe(deep_update(BASE, {"data": {"template": {"use_rationale": False}, "source": {
        "name": "local", "params": {"files": {"train": path}}}}}), "<test>")
    assert len(load_data(answer_only, training=True)["train"]) == N  # answer-only training: no rationale needed


# ---------------------------------------------------------------------------- through the CLI
def _mixed_faults(tmp_path: Path) -> tuple[Path, list[int]]:
    """30 good rows and one of each skippable fault, in a JSONL file; the bad rows' lines."""
    rows = [json.dumps(r).encode() for r in good_rows(30)]
    bad = [make("local-jsonl", dict(good_rows()[0], id=f"bad{k}")) for k, (make, *_) in enumerate(FAULTS.values())]
    lines = [3, 8, 13, 18, 23]
    for line, row in zip(lines, bad):
        rows.insert(line - 1, row)
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\n".join(rows) + b"\n")
    return path, lines


def _recipe_file(tmp_path: Path, source: dict, **patch) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(deep_update(BASE, {"data": {"source": source}, **patch})))
    return path


def test_cli_data_error_is_exit_2_with_file_and_line(tmp_path):
    data, lines = _mixed_faults(tmp_path)
    recipe = _recipe_file(tmp_path, {"name": "local", "params": {"files": {"train": str(data)}, "fields": {"id": "id"}}})
    res = runner.invoke(app, ["data", str(recipe)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    msg = " ".join(res.output.split())
    assert f"{data}:{lines[0]}: missing field 'answer'" in msg and "data.on_bad_row: skip" in msg


def test_cli_data_and_run_list_every_skipped_row(tmp_path):
    data, lines = _mixed_faults(tmp_path)
    recipe = _recipe_file(tmp_path, {"name": "local", "params": {"files": {"train": str(data)}, "fields": {"id": "id"}}},
                          train={"epochs": 1})
    res = runner.invoke(app, ["data", str(recipe), "--set", "data.on_bad_row=skip"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "skipped 5 bad rows" in text and all(f"{data}:{n}:" in text for n in lines)
    res = runner.invoke(app, ["data", str(recipe), "--set", "data.on_bad_row=skip", "--json"])
    info = json.loads(res.output)
    assert info["splits"]["train"]["records"] == 30 and info["source_report"]["bad_rows"]["count"] == 5
    # a train split only: nothing to select on, so the final model is reported
    res = runner.invoke(app, ["run", str(recipe), "--set", "data.on_bad_row=skip", "--set", "eval.select_on=null",
                              "--out", str(tmp_path / "run"), "-q"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    bad = summary["data_report"]["bad_rows"]
    assert summary["data"]["train"] == 30 and bad["count"] == 5
    assert [r["where"] for r in bad["rows"]] == [f"{data}:{n}" for n in lines]
    assert set(bad["by_reason"]) == {"missing_field", "empty_rationale", "bad_answer", "invalid_json", "not_utf8"}
    assert summary["data_report"]["files"]["train"] == {"file": str(data), "rows": 35}  # = 30 trained + 5 skipped


def test_cli_huge_rows_meet_the_too_long_policy(tmp_path):
    rows = good_rows(30)
    rows[7]["rationale"] = "Tom adds 12 + 7 = 19. " * 100_000  # 2.2 MB, ~1.5 M tokens
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    val_rows = [dict(r, id=f"v{i}") for i, r in enumerate(good_rows(4))]
    val_rows[2]["question"] = "How many? " * 200_000
    val = tmp_path / "val.jsonl"
    val.write_text("".join(json.dumps(r) + "\n" for r in val_rows))
    source = {"name": "local", "params": {"files": {"train": str(train), "validation": str(val)}, "fields": {"id": "id"}}}
    recipe = _recipe_file(tmp_path, source, train={"epochs": 1}, eval={"splits": ["validation"], "max_new_tokens": 8})
    res = runner.invoke(app, ["run", str(recipe), "--out", str(tmp_path / "a"), "-q"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    msg = " ".join(res.output.split())
    assert f"{train}:8: sample q7: sequence of" in msg and "data.on_too_long: skip" in msg
    res = runner.invoke(app, ["run", str(recipe), "--set", "data.on_too_long=skip", "--out", str(tmp_path / "b"), "-q"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    long = summary["data_report"]["skipped_too_long"]
    assert long["count"] == 1 and long["rows"][0]["where"] == f"{train}:8" and long["rows"][0]["tokens"] > 100_000
    long_eval = summary["data_report"]["skipped_too_long_eval"]["validation"]
    assert long_eval["count"] == 1 and long_eval["rows"][0]["where"] == f"{val}:3"
    assert summary["splits"]["validation"]["count"] == 3  # evaluated: the other three


def test_too_long_error_names_the_students_limit_when_it_is_the_cap(tmp_path):
    """data.max_length=2048 over a student with 32 positions: the fix is not 'raise data.max_length'."""
    from kpod.engine.run import run_recipe

    student = dict(TINY["student"], tiny=dict(TINY["student"]["tiny"], max_positions=32))
    recipe = validate_recipe(deep_update(TINY, {"student": student, "data": {"max_length": 2048}}), "<test>")
    with pytest.raises(DataError) as e:
        run_recipe(recipe, tmp_path / "run", quiet=True)
    msg = str(e.value)
    assert "max_length=32 is the student's position limit" in msg and "data.max_length is 2048" in msg
    assert "raise data.max_length" not in msg
    # a run that failed while preparing its data leaves nothing that refuses the rerun
    assert list((tmp_path / "run").iterdir()) == []
    run_recipe(validate_recipe(deep_update(TINY, {"train": {"epochs": 1}}), "<test>"), tmp_path / "run", quiet=True)
    assert (tmp_path / "run" / "summary.json").exists()
    # the recipe's own cap, when it is the cap, is still the thing to raise
    recipe = validate_recipe(deep_update(TINY, {"data": {"max_length": 16}}), "<test>")
    with pytest.raises(DataError, match="raise data.max_length"):
        run_recipe(recipe, tmp_path / "run2", quiet=True)


def test_unknown_tokens_are_counted_per_split_and_refused_above_the_limit(tmp_path):
    """Characters the tokenizer never saw ('×', '•') become <unk>: counted per split, an error above
    data.max_unknown_fraction, a warning and a count in summary.json below it."""
    from kpod.engine.run import run_recipe

    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in good_rows(24)))
    test_rows = [dict(r, id=f"t{i}", question=r["question"].replace("buys", "buys 2 × 3 • • ×"))
                 for i, r in enumerate(good_rows(4))]
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in test_rows))
    source = {"name": "local", "params": {"files": {"train": str(train), "test": str(test)}, "fields": {"id": "id"}}}
    raw = deep_update(BASE, {"data": {"source": source}, "train": {"epochs": 1},
                             "eval": {"splits": ["test"], "max_new_tokens": 4, "select_on": None}})
    with pytest.raises(DataError) as e:
        run_recipe(validate_recipe(raw, "<test>"), tmp_path / "a", quiet=True)
    msg = str(e.value)
    assert msg.startswith("test: 16 of ") and "'×' 8" in msg and "'•' 8" in msg and "data.max_unknown_fraction" in msg
    summary = run_recipe(validate_recipe(deep_update(raw, {"data": {"max_unknown_fraction": 0.5}}), "<test>"),
                         tmp_path / "b", quiet=True)
    unk = summary["data_report"]["unknown_tokens"]
    assert unk["train"]["unknown"] == 0 and unk["train"]["tokens"] > 0
    assert unk["test"]["unknown"] == 16 and unk["test"]["characters"] == {"×": 8, "•": 8}


# ------------------------------------------------------- hostile values: digits, depth, suffix case
HOSTILE = {  # fault → the faulty row's bytes (an extra field the parser meets before any check)
    "5,000-digit integer": lambda row: json.dumps({**row, "x": 0}).replace('"x": 0', '"x": ' + "9" * 5000).encode(),
    "200,000-deep nesting": lambda row: json.dumps({**row, "x": 0}).replace('"x": 0', '"x": ' + "[" * 200_000 + "]" * 200_000).encode(),
}


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("fault", list(HOSTILE))
def test_hostile_values_are_bad_rows_named_by_line(tmp_path, fmt, fault):
    """Not a ValueError or RecursionError from json: a JSONL row is a counted skip (or the error
    naming it), a JSON list is an error naming the item's line (it cannot be read around it)."""
    convert = FORMATS[fmt][1]
    rows = [HOSTILE[fault](convert(r)) if i == BAD else json.dumps(convert(r)).encode() for i, r in enumerate(good_rows())]
    path, lines = write_data(tmp_path, fmt, rows)
    with pytest.raises(DataError, match=rf"{path}:{lines[BAD]}\b.*(digits|levels deep)"):
        load_data(recipe_for(fmt, path), training=True)
    if path.endswith(".json"):
        with pytest.raises(DataError, match=rf"{path}:{lines[BAD]}: refused"):
            load_data(recipe_for(fmt, path, "skip"), training=True)
        return
    report: dict = {}
    train = load_data(recipe_for(fmt, path, "skip"), report, training=True)["train"]
    assert report["bad_rows"]["by_reason"] == {"json_limit": 1} and len(train) == N - 1


def test_cli_hostile_row_is_one_line_exit_2(tmp_path):
    rows = [json.dumps(r).encode() for r in good_rows()]
    rows[BAD] = HOSTILE["5,000-digit integer"](good_rows()[BAD])
    path, lines = write_data(tmp_path, "local-json", rows)
    recipe = _recipe_file(tmp_path, FORMATS["local-json"][2](path))
    res = runner.invoke(app, ["data", str(recipe)], terminal_width=4000)
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    assert f"{path}:{lines[BAD]}: refused: an integer of 5,000 digits" in res.output


def test_an_upper_case_jsonl_suffix_is_read_as_json_lines(tmp_path):
    path = tmp_path / "upper.JSONL"
    path.write_bytes(b"\n".join(json.dumps(r).encode() for r in good_rows()) + b"\n")
    recipe = recipe_for("local-jsonl", str(path))
    assert len(load_data(recipe, training=True)["train"]) == N
