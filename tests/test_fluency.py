"""The fluency check (kpod/fluency.py): per-token NLL of the training rationales split by the side
data into keypoint (number, operator, =), filler and frame tokens."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch

from kpod.data.sources import Arith
from kpod.data.template import PromptTemplate
from kpod.data.tokenize import encode_causal
from kpod.fluency import token_nll_by_class
from tests.helpers import tiny_lm

TEMPLATE = PromptTemplate()


@pytest.fixture(scope="module")
def setup():
    records = Arith(Arith.Params(n_train=20, n_validation=0, n_test=0, n_ood=0, max_steps=3)).load()["train"]
    return records, tiny_lm(records, TEMPLATE)


def test_class_means_match_a_manual_teacher_forced_pass(setup):
    records, st = setup
    doc = token_nll_by_class(st.model, st.tokenizer, False, records, TEMPLATE, batch_size=6)
    assert doc["records"] == len(records) and doc["without_side_data"] == 0
    sums: dict[str, list[float]] = {}
    for r in records:  # one sequence at a time, no padding, classes read from the side data here
        ser = TEMPLATE.serialize(r)
        enc = encode_causal(st.tokenizer, ser)
        with torch.no_grad():
            logp = torch.log_softmax(st.model(input_ids=torch.tensor([enc.input_ids])).logits[0].float(), -1)
        nll = -logp[:-1].gather(1, torch.tensor(enc.input_ids[1:]).unsqueeze(1)).squeeze(1).numpy()
        rel = np.asarray(enc.anchors[1:]) - ser.rationale_start
        for v, p in zip(nll.tolist(), rel.tolist()):
            if not 0 <= p < len(r.rationale):
                continue
            key = any(s <= p < e for s, e in r.meta["keypoint_spans"])
            fill = any(s <= p < e for s, e in r.meta["filler_spans"])
            ch = r.rationale[p]
            for c in (["keypoint", "number" if ch.isdigit() else "equals" if ch == "=" else "operator"] if key
                      else ["filler"] if fill else ["frame"]):
                sums.setdefault(c, [0.0, 0])
                sums[c][0] += v
                sums[c][1] += 1
    assert set(doc["classes"]) == set(sums) == {"keypoint", "number", "operator", "equals", "filler", "frame"}
    for c, (total, n) in sums.items():
        assert doc["classes"][c]["n"] == n
        # batched with padding vs one unpadded sequence: float rounding only
        assert doc["classes"][c]["nll"] == pytest.approx(total / n, rel=1e-4, abs=1e-4)
    assert doc["classes"]["keypoint"]["n"] == sum(doc["classes"][k]["n"] for k in ("number", "operator", "equals"))


def test_side_data_is_read_by_sample_id_not_by_position(setup):
    records, st = setup
    doc = token_nll_by_class(st.model, st.tokenizer, False, records, TEMPLATE, batch_size=4)
    shuffled = records[:]
    random.Random(1).shuffle(shuffled)
    again = token_nll_by_class(st.model, st.tokenizer, False, shuffled, TEMPLATE, batch_size=7)
    assert again["by_sample"].keys() == doc["by_sample"].keys()
    for sid, per_class in doc["by_sample"].items():
        assert again["by_sample"][sid].keys() == per_class.keys()
        for c, (total, n) in per_class.items():
            assert again["by_sample"][sid][c][1] == n
            assert again["by_sample"][sid][c][0] == pytest.approx(total, rel=1e-4, abs=1e-4)
    # a record without side data is not scored, and counted
    bare = [dataclasses.replace(records[0], meta={})] + records[1:]
    part = token_nll_by_class(st.model, st.tokenizer, False, bare, TEMPLATE, batch_size=4)
    assert part["without_side_data"] == 1 and records[0].sample_id not in part["by_sample"]


def test_kpod_fluency_command(tmp_path, monkeypatch):
    import json

    import yaml
    from typer.testing import CliRunner

    from kpod.cli import app
    from tests.helpers import TINY

    monkeypatch.setenv("KPOD_CACHE", str(tmp_path / "cache"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    res = CliRunner().invoke(app, ["fluency", str(recipe), "--json", "-q"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout[res.stdout.index("{"):])
    assert doc["records"] == TINY["data"]["source"]["params"]["n_train"] and doc["student"]["model"] == "tiny:llama"
    assert {"keypoint", "filler", "frame"} <= doc["classes"].keys()
    # data without side data: one line naming the recipe, exit 2
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "rationale": f"{i} + 1 = {i + 1}.",
                                        "answer": str(i + 1)}) + "\n" for i in range(20)))
    local = {**TINY, "data": {"source": {"name": "local", "params": {"files": {"train": str(data)}}}}}
    recipe.write_text(yaml.safe_dump(local))
    res = CliRunner().invoke(app, ["fluency", str(recipe), "-q"])
    assert res.exit_code == 2 and "side data" in res.output, res.output
