"""Specialized KD's distribution matching on stored distributions: the four formats of a question
read the source record's stored top-k (rescored once, under its own sample_id), the zero-shot CoT
record gets exactly the plain record's kd values, answer-only records train on their CE alone,
packed = padded, and the recipe refuses match: distribution without a stored teacher."""

from __future__ import annotations

import pytest
import torch

from kpod.data.collate import StageCollator
from kpod.data.packing import unpack_targets
from kpod.data.prompted_formats import SpecializedKd
from kpod.data.sources import Arith
from kpod.data.template import PromptTemplate
from kpod.data.topk_store import TopKStore
from kpod.engine.run import run_recipe
from kpod.losses.kd import KdLoss
from kpod.losses.token_ce import StdCotLoss
from kpod.recipe import RecipeError
from kpod.teach.rescore import rescore, scoring_records
from tests.helpers import tiny_lm, tiny_recipe
from tests.losses.test_kd import full_loss, reduced

TEMPLATE = PromptTemplate()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    records = Arith(Arith.Params(n_train=4, n_validation=0, n_test=0, n_ood=0, max_steps=3)).load()["train"]
    expanded = SpecializedKd(SpecializedKd.Params(n_demos=1)).expand({"train": records}, 0)["train"]
    student, teacher = tiny_lm(records, TEMPLATE, 150, 0), tiny_lm(records, TEMPLATE, 150, 1)
    store = tmp_path_factory.mktemp("store")
    scoring = scoring_records(expanded)
    assert sorted(r.sample_id for r in scoring) == sorted(r.sample_id for r in records)  # one per question
    with TopKStore(store, k=8, teacher="t", tokenizer="tiny") as s:
        rescore(teacher.model, teacher.tokenizer, scoring, TEMPLATE, s)
    return records, expanded, student, str(store)


def test_formats_read_the_source_records_distributions(world):
    records, expanded, st, store = world
    loss = KdLoss(KdLoss.Params(teacher_store=store, alpha=0.6))
    plain = StageCollator(records, TEMPLATE, st.tokenizer, False)
    fmts = StageCollator(expanded, TEMPLATE, st.tokenizer, False)
    sid = records[0].sample_id
    with torch.no_grad():
        a = full_loss(loss, st.model, plain([sid]))
        b = full_loss(loss, st.model, fmts([f"{sid}#zero_shot_cot"]))
        answer_only = fmts([f"{sid}#zero_shot_answer_only", f"{sid}#in_context_answer_only"])
        c, ce = full_loss(loss, st.model, answer_only), full_loss(StdCotLoss(), st.model, answer_only)
        d = full_loss(loss, st.model, fmts([f"{sid}#in_context_cot"]))
    torch.testing.assert_close(b.nll[b.mask], a.nll[a.mask], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c.nll[c.mask], ce.nll[ce.mask], rtol=1e-5, atol=1e-6)  # the CE alone, no D
    assert d.mask.sum() == a.mask.sum()  # the demonstrations are input: the same targets, matched


def test_packed_equals_padded_across_formats(world):
    _, expanded, st, store = world
    loss = KdLoss(KdLoss.Params(teacher_store=store, divergence="jsd"))
    collator = StageCollator(expanded, TEMPLATE, st.tokenizer, False)
    sids = [r.sample_id for r in expanded]
    padded, packed = collator(sids), collator.packed(sids, rows_of=3)
    with torch.no_grad():
        a, b = full_loss(loss, st.model, padded), full_loss(loss, st.model, packed)
    torch.testing.assert_close(unpack_targets(b.nll, packed, padded["labels"].shape[1]), a.nll, rtol=0, atol=1e-5)
    torch.testing.assert_close(reduced(b), reduced(a), rtol=1e-5, atol=1e-6)


def test_distribution_matching_runs_and_needs_a_stored_teacher(tmp_path):
    fmt = {"name": "specialized_kd", "params": {"n_demos": 1, "match": "distribution"}}
    with pytest.raises(RecipeError, match="match: distribution .*set loss.name: kd with loss.params.teacher_store"):
        tiny_recipe(data={"format": fmt}, loss={"name": "std_cot"})
    # a pre-trained base: the tokenizer comes from its corpus, so teacher and student share it
    # (trained on their own training texts, the four formats' texts would give the student another)
    base = {"pretrain": {"corpus": "arith_facts", "documents": 300, "steps": 3, "batch_size": 8, "seq_len": 32}}
    teacher = tmp_path / "teacher"
    run_recipe(tiny_recipe(loss={"name": "std_cot"}, train={"epochs": 1}, student=base), teacher)
    recipe = tiny_recipe(data={"format": fmt, "on_too_long": "skip"}, student=base,
                         loss={"name": "kd", "params": {"teacher_store": str(tmp_path / "store")}},
                         train={"epochs": 1, "batch_size": 64})
    from typer.testing import CliRunner

    from kpod.cli import app
    from kpod.recipe import dump_recipe

    path = tmp_path / "skd.yaml"
    path.write_text(dump_recipe(recipe), encoding="utf-8")
    result = CliRunner().invoke(app, ["rescore", str(path), "--teacher", str(teacher), "--out", str(tmp_path / "store"),
                                      "--top-k", "8"])
    assert result.exit_code == 0 and "stored 96 rationales" in result.output, result.output
    summary = run_recipe(recipe, tmp_path / "run")
    assert summary["finished"] is True and summary["data_report"]["format"]["name"] == "specialized_kd"
