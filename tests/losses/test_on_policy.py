"""On-policy distillation (GKD) in the ``kd`` loss: which samples roll out depends on (seed, step,
sample_id) only, a rollout continues the prompt (and the curriculum's given steps) with the
student's *current* weights, the rolled-out rows train on the divergence only, and a run with
on-policy rollouts trains end to end (packing off, with the reason)."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch

from kpod.data.collate import StageCollator
from kpod.data.sources import Arith
from kpod.data.template import PromptTemplate
from kpod.data.tokenize import IGNORE_INDEX
from kpod.engine.run import run_recipe
from kpod.eval.generate import greedy_causal
from kpod.losses.kd import KdLoss
from kpod.losses.on_policy import prompt_of, rollout_batch, rollout_rows
from kpod.models.student import save_student
from tests.helpers import tiny_lm, tiny_recipe, train_events
from tests.losses.test_kd import full_loss

TEMPLATE = PromptTemplate()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    records = Arith(Arith.Params(n_train=6, n_validation=0, n_test=0, n_ood=0, max_steps=3)).load()["train"]
    student = tiny_lm(records, TEMPLATE, 150, 0)
    root = tmp_path_factory.mktemp("gkd")
    save_student(student, str(root / "self"))
    return records, student, StageCollator(records, TEMPLATE, student.tokenizer, False), root


def test_rollout_rows_depend_on_seed_step_and_sample_only():
    ids = [f"s{i}" for i in range(400)]
    chosen = {ids[i] for i in rollout_rows(ids, 0.5, seed=0, step=3)}
    assert 150 < len(chosen) < 250
    shuffled = ids[::-1][:100]
    assert {shuffled[i] for i in rollout_rows(shuffled, 0.5, 0, 3)} == chosen & set(shuffled)  # batch-mates don't matter
    assert {ids[i] for i in rollout_rows(ids, 0.5, 0, 4)} != chosen  # another step, another draw
    assert rollout_rows(ids, 0.0, 0, 3) == [] and rollout_rows(ids, 1.0, 0, 3) == list(range(400))


def test_a_rollout_uses_the_students_current_weights(world):
    records, st, collator, _ = world
    batch = collator([r.sample_id for r in records])
    model = copy.deepcopy(st.model)

    def expected():
        prompts = [prompt_of(batch, r) for r in range(len(records))]
        return greedy_causal(model, st.tokenizer, prompts, 12, torch.device("cpu"))

    def rolled():
        out = rollout_batch(batch, model, st.tokenizer, 1.0, 0, 0, 12, temperature=0.0)
        return [out["labels"][r][out["labels"][r] != IGNORE_INDEX].tolist() for r in range(len(records))]

    before = rolled()
    assert before == expected()
    torch.manual_seed(0)
    with torch.no_grad():  # "optimizer steps later": other weights
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    after = rolled()
    assert after == expected() and after != before  # stale weights would give `before` again


def test_a_rolled_row_keeps_its_prompt_and_given_steps_and_the_rest_stay(world):
    records, st, collator, _ = world
    sids = [r.sample_id for r in records]
    batch = collator(sids, {sids[0]: 1})
    out = rollout_batch(batch, st.model, st.tokenizer, 0.5, seed=1, step=2, max_new_tokens=10, temperature=1.0)
    rolled = out["on_policy"].nonzero().squeeze(1).tolist()
    assert rolled == rollout_rows(sids, 0.5, 1, 2) and 0 < len(rolled) < len(sids)
    for r in range(len(sids)):
        n_old, n_new = int(batch["attention_mask"][r].sum()), int(out["attention_mask"][r].sum())
        if r not in rolled:  # untouched, only re-padded
            for k in ("input_ids", "labels", "weights", "is_answer", "char_pos"):
                assert torch.equal(out[k][r, :n_new], batch[k][r, :n_old]), k
            continue
        prompt = prompt_of(batch, r)
        assert out["input_ids"][r, : len(prompt)].tolist() == prompt
        targets = out["labels"][r, :n_new] != IGNORE_INDEX
        assert targets.sum() == n_new - len(prompt) and not targets[: len(prompt)].any()
        assert (out["weights"][r, :n_new][targets] == 1).all() and not out["is_answer"][r].any()
    # the curriculum's given step stays the teacher's text: the first equation is in row 0's prompt only
    first = [re.search(r"\d+ [-+*/] \d+ = \d+", r.rationale).group(0) for r in records[:2]]
    assert first[0] in st.tokenizer.decode(prompt_of(batch, 0))
    assert first[1] not in st.tokenizer.decode(prompt_of(batch, 1))


def test_the_same_sample_writes_the_same_text_whatever_its_batch_mates(world):
    records, st, collator, _ = world
    sids = [r.sample_id for r in records]
    a = rollout_batch(collator(sids), st.model, st.tokenizer, 1.0, 0, 5, 15, temperature=1.0)
    b = rollout_batch(collator(sids[::-2]), st.model, st.tokenizer, 1.0, 0, 5, 15, temperature=1.0)
    for j, sid in enumerate(sids[::-2]):
        i = sids.index(sid)
        ta, tb = a["labels"][i][a["labels"][i] != IGNORE_INDEX], b["labels"][j][b["labels"][j] != IGNORE_INDEX]
        assert torch.equal(ta, tb), sid


def test_rolled_rows_train_on_the_divergence_only(world):
    records, st, collator, root = world
    loss = KdLoss(KdLoss.Params(teacher_model=str(root / "self"), alpha=0.4, on_policy=0.5, on_policy_temperature=0.0))
    loss.bind(st, "cpu")
    batch = loss.on_policy_batch(collator([r.sample_id for r in records]), st.model, seed=0, step=0)
    with torch.no_grad():
        tl = full_loss(loss, st.model, batch)
    rolled = batch["on_policy"]
    assert rolled.any() and not rolled.all()
    assert tl.nll[rolled][tl.mask[rolled]].abs().max() < 1e-5  # teacher = student: D = 0, and no CE there
    assert (tl.nll[~rolled][tl.mask[~rolled]] > 0).all()  # (1 − α)·CE on the teacher's text


def test_on_policy_needs_an_online_teacher():
    with pytest.raises(ValueError, match="on_policy: .*set teacher_model"):
        KdLoss.Params(teacher_store="s", on_policy=0.5)


def test_a_run_with_on_policy_rollouts(world, tmp_path):
    _, _, _, root = world
    teacher = tmp_path / "teacher"
    run_recipe(tiny_recipe(loss={"name": "std_cot"}, train={"epochs": 1}), teacher)
    loss = {"name": "kd", "params": {"teacher_model": str(teacher), "on_policy": 0.5, "on_policy_max_new_tokens": 24}}
    run_recipe(tiny_recipe(loss=loss, train={"epochs": 1, "packing": "auto", "loss_chunk_tokens": 16}), tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["finished"] is True and summary["train"]["packing"].startswith("off (on-policy rollouts")
    assert len(train_events(tmp_path / "run")) == summary["train"]["steps"] > 0


def test_rollouts_are_refused_under_fsdp(tmp_path, monkeypatch):
    import kpod.engine.train as train_module
    from kpod.data.load import load_data, template_from
    from kpod.models.student import load_student
    from kpod.recipe import RecipeError
    from tests.helpers import make_trainer

    base = tiny_recipe()
    texts = [template_from(base).serialize(r).text for r in load_data(base)["train"]]
    save_student(load_student(base.student, texts, seed=1), str(tmp_path / "teacher"))  # the student's tokenizer
    monkeypatch.setattr(train_module, "is_fsdp", lambda acc: True)  # FSDP keeps the parameters sharded
    recipe = tiny_recipe(loss={"name": "kd", "params": {"teacher_model": str(tmp_path / "teacher"), "on_policy": 0.5}},
                         train={"loss_chunk_tokens": 0})
    with pytest.raises(RecipeError, match="loss.params.on_policy: on-policy rollouts do not run under FSDP"):
        make_trainer(recipe, tmp_path)
