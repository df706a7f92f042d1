"""``train.group_by_question``: every question's records in one micro-batch (so on one rank),
deterministic per (seed, epoch); ``question_id`` from local files."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest

from kpod.data.collate import StageCollator
from kpod.data.load import load_data, template_from
from kpod.engine.distributed import make_accelerator
from kpod.engine.order import epoch_order, plain, question_grouped
from kpod.engine.run import run_recipe
from kpod.engine.train import Trainer
from kpod.models.student import load_student
from kpod.recipe import validate_recipe
from kpod.registry import LOSSES
from kpod.runs import MetricsWriter
from kpod.schedulers.base import CurriculumPlan
from tests.helpers import TINY, deep_update, tiny_recipe

GROUP_SIZES = [1, 2, 3, 4, 10, 2, 1, 3]  # one question (10 records) larger than a batch of 8


def write_grouped_jsonl(path, n=None):
    """The tiny arith training set as a local file, its rows grouped into questions of GROUP_SIZES."""
    rows = []
    train = load_data(tiny_recipe())["train"]
    q, left = 0, GROUP_SIZES[0]
    for r in train[: n or len(train)]:
        if left == 0:
            q += 1
            left = GROUP_SIZES[q % len(GROUP_SIZES)]
        rows.append({"question": r.question, "rationale": r.rationale, "answer": r.answer, "question_id": f"q{q:03d}"})
        left -= 1
    path.write_text("".join(json.dumps(x) + "\n" for x in rows))
    return rows


def local_recipe(path, **patch):
    raw = deep_update(TINY, patch)
    raw["data"]["source"] = {"name": "local", "params": {"files": {"train": str(path)}}}
    return validate_recipe(raw, "<test>")


def grouped_recipe(tmp_path, **train):
    path = tmp_path / "grouped.jsonl"
    if not path.exists():
        write_grouped_jsonl(path)
    return local_recipe(path, train={"batch_size": 8, "group_by_question": True, **train},
                        eval={"select_on": None, "splits": []})


def make_trainer(recipe, run_dir):
    train = load_data(recipe)["train"]
    template = template_from(recipe)
    student = load_student(recipe.student, [template.serialize(r).text for r in train], seed=0)
    return Trainer(
        model=student.model, is_encoder_decoder=False,
        collator=StageCollator(train, template, student.tokenizer, False),
        loss_fn=LOSSES.get("kpod")(), plan=CurriculumPlan(), train_ids=[r.sample_id for r in train],
        cfg=recipe.train, seed=recipe.seed, run_dir=run_dir, accelerator=make_accelerator("fp32"),
        metrics=MetricsWriter(run_dir / "metrics.jsonl", enabled=False),
    )


def test_local_source_reads_question_id_and_defaults_to_sample_id(tmp_path):
    rows = write_grouped_jsonl(tmp_path / "g.jsonl", n=5)
    del rows[1]["question_id"]
    (tmp_path / "g.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    recipe = local_recipe(tmp_path / "g.jsonl")
    recs = load_data(recipe)["train"]
    assert [r.question_id for r in recs] == ["q000", recs[1].sample_id, "q001", "q002", "q002"]
    rows[0]["question_id"] = ["not", "an", "id"]
    (tmp_path / "g.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    with pytest.raises(ValueError, match=r"g.jsonl:1.*question_id"):
        load_data(recipe)


def test_every_question_is_one_micro_batch_on_one_rank_every_epoch(tmp_path):
    recipe = grouped_recipe(tmp_path)
    trainer = make_trainer(recipe, tmp_path)
    question_of = trainer.question_of
    sizes = Counter(question_of.values())
    assert max(sizes.values()) == 10 and len(sizes) > 20
    orders = []
    for epoch in (1, 2, 3):
        trainer.world, trainer.rank = 1, 0
        mbs = trainer._micro_batches(epoch)
        orders.append(mbs)
        assert mbs == trainer._micro_batches(epoch)  # a pure function of (seed, epoch): resume-safe
        assert sorted(s for mb in mbs for s in mb) == trainer.train_ids  # every record once
        where = {}
        for i, mb in enumerate(mbs):
            assert len(mb) <= 8 or len({question_of[s] for s in mb}) == 1  # only a big question overfills
            for s in mb:
                where.setdefault(question_of[s], set()).add(i)
        assert all(len(v) == 1 for v in where.values())  # a question never spans micro-batches
        # two ranks: whole micro-batches are dealt, none lost, both ranks run as many passes
        shares = []
        for rank in (0, 1):
            trainer.world, trainer.rank = 2, rank
            shares.append(trainer._micro_batches(epoch))
        assert len(shares[0]) == len(shares[1])
        on_rank = {s: r for r in (0, 1) for mb in shares[r] if mb is not None for s in mb}
        assert sorted(on_rank) == trainer.train_ids
        assert all(len({on_rank[s] for s in question_of if question_of[s] == q}) == 1 for q in sizes)
    assert orders[0] != orders[1] != orders[2]
    # the LR schedule counts each epoch's own number of steps
    assert trainer.total_steps == sum(math.ceil(len(o) / recipe.train.grad_accum) for o in orders[: recipe.train.epochs])


def test_one_record_per_question_gives_the_plain_order():
    ids = [f"s{i:03d}" for i in range(37)]
    for epoch in (1, 2):
        assert question_grouped(ids, {s: s for s in ids}, 8, 3, epoch) == plain(epoch_order(ids, 3, epoch), 8)


def test_grouped_run_trains_on_whole_questions(tmp_path, monkeypatch):
    recipe = grouped_recipe(tmp_path, epochs=2)
    qid = {r.sample_id: r.question_id for r in load_data(recipe)["train"]}
    batches: list[list[str]] = []
    collate = Trainer.collate
    monkeypatch.setattr(Trainer, "collate", lambda self, ids, given: batches.append(list(ids)) or collate(self, ids, given))
    run_recipe(recipe, tmp_path / "run", quiet=True)
    assert sorted(s for b in batches for s in b) == sorted(list(qid) * 2)
    questions = [{qid[s] for s in b} for b in batches]
    for q in set(qid.values()):
        assert sum(q in b for b in questions) == 2  # in exactly one micro-batch per epoch


SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data not present")
def test_benchmark_rationales_of_one_question_share_its_question_id():
    from kpod.data.benchmarks import BenchmarkParams, Svamp

    train = Svamp(BenchmarkParams(files={"train": str(SHARED / "mcc_kd/SVAMP/train.json")}, rationales="all")).load()["train"]
    sizes = Counter(r.question_id for r in train)
    assert len(sizes) == 700 and set(sizes.values()) == {10}
    assert all(r.sample_id.startswith(r.question_id + "#") for r in train)
