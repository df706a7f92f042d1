"""Benchmark loaders on the real public data in ../shared/data (exact row counts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kpod.data.benchmarks import (
    Asdiv,
    BenchmarkParams,
    Csqa,
    Gsm8k,
    Svamp,
    parse_gsm8k_solution,
    strip_calculator,
)
from kpod.data.records import DataError
from kpod.eval.answers import NumericExtractor

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
pytestmark = pytest.mark.skipif(not SHARED.exists(), reason="../shared/data not present")


def test_gsm8k_train_and_dev_counts_and_answer_agreement():
    src = Gsm8k(BenchmarkParams(files={"train": str(SHARED / "gsm8k/train.jsonl"),
                                       "validation": str(SHARED / "mcc_kd/GSM8K/dev.json")}, rationales="first"))
    data = src.load()
    assert len(data["train"]) == 7473 and len(data["validation"]) == 660
    rows = [json.loads(x) for x in (SHARED / "gsm8k/train.jsonl").read_text().splitlines()]
    ex = NumericExtractor()
    agree = sum(ex.is_correct(ex.extract(r["answer"]), rec.answer) for r, rec in zip(rows, data["train"]))
    assert agree == 7473  # the extractor reads every GSM8K solution's "#### N" as its gold answer
    first = data["train"][0]
    assert "<<" not in first.rationale and first.answer == "72" and first.n_steps == 2
    assert all("####" not in r.rationale and "<<" not in r.rationale for r in data["train"])
    assert first.sample_id == "gsm8k/train/00000"


def test_svamp_filtering_counts_every_rationale():
    counts = {}
    for mode in ("first", "all", "correct"):
        src = Svamp(BenchmarkParams(files={"train": str(SHARED / "mcc_kd/SVAMP/train.json"),
                                           "validation": str(SHARED / "mcc_kd/SVAMP/dev.json")}, rationales=mode))
        data = src.load()
        assert len(data["validation"]) == 150
        counts[mode] = (len(data["train"]), src.report["splits"]["train"])
    assert counts["first"][0] == 700
    assert counts["all"][0] == 7000
    n_correct, rep = counts["correct"]
    assert rep["rows"] == 700 and rep["rationales"] == 7000
    assert rep["kept"] + rep["dropped_wrong_answer"] == 7000 and rep["kept"] == n_correct
    assert 0 < rep["questions_dropped"] < 700 and 0 < rep["dropped_wrong_answer"] < 7000
    ids = [r.sample_id for r in Svamp(BenchmarkParams(files={"train": str(SHARED / "mcc_kd/SVAMP/train.json")}, rationales="correct")).load()["train"]]
    assert len(ids) == len(set(ids)) and all("#" in i for i in ids)


def test_asdiv_and_csqa_dev_counts():
    asdiv = Asdiv(BenchmarkParams(files={"validation": str(SHARED / "mcc_kd/ASDiv/dev.json")})).load()["validation"]
    csqa = Csqa(BenchmarkParams(files={"validation": str(SHARED / "mcc_kd/CSQA/dev.json")})).load()["validation"]
    assert len(asdiv) == 313 and len(csqa) == 1221
    assert {r.answer for r in csqa} <= set("ABCDE")
    assert "Answer Choices" in csqa[0].question
    assert Csqa().extractor.is_correct(Csqa().extractor.extract("so the answer is (C)."), csqa[0].answer) == (csqa[0].answer == "C")


def test_gsm8k_parsing_and_errors(tmp_path):
    assert strip_calculator("48/2 = <<48/2=24>>24") == "48/2 = 24"
    assert parse_gsm8k_solution("a\nb = 1,000\n#### 1,000", "x") == ("a\nb = 1,000", "1000")
    with pytest.raises(DataError, match="x: GSM8K answer has no '####'"):
        parse_gsm8k_solution("no marker", "x")
    bad = tmp_path / "g.jsonl"
    bad.write_text('{"question": "q", "answer": "1\\n#### 1"}\n{"q": 1}\n')
    with pytest.raises(DataError, match=r"g\.jsonl:2: expected"):
        Gsm8k(BenchmarkParams(files={"train": str(bad)})).load()
    with pytest.raises(DataError, match="give params.files or params.hub_splits"):
        Gsm8k().load()


def test_kpod_data_command_reports_counts(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from kpod.cli import app

    recipe = tmp_path / "sv.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"source": {"name": "svamp", "params": {
        "files": {"train": str(SHARED / "mcc_kd/SVAMP/train.json")}, "rationales": "correct"}}}}))
    res = CliRunner().invoke(app, ["data", str(recipe), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    train = info["splits"]["train"]
    rep = info["source_report"]["splits"]["train"]
    assert train["records"] == rep["kept"] and train["questions"] == 700 - rep["questions_dropped"]
    assert sum(train["steps_histogram"].values()) == train["records"]
