"""The multi-task baseline losses on hand-made batches: DSbS's L_label + λ·L_rationale and SCOTT's
(1-α)·L_factual + α·L_counterfactual, with each row's task read from the batch (never its position)."""

from __future__ import annotations

import pytest
import torch

from kpod.data.collate import StageCollator
from kpod.data.formats import counterfactual_record, dsbs_tasks, factual_record
from kpod.data.packing import unpack_targets
from kpod.data.records import Record
from kpod.data.template import PromptTemplate
from kpod.data.tokenize import IGNORE_INDEX, train_tokenizer
from kpod.losses.task_losses import DsbsLoss, ScottLoss

# encoder-decoder layout (no shift): row b's targets are labels[b] != -100
LABELS = torch.tensor([
    [5, 6, 7, IGNORE_INDEX],  # label task: answer sentence (3 tokens)
    [8, 9, 10, 11],  # rationale task: 2 rationale tokens + 2 answer-sentence tokens
    [5, 6, IGNORE_INDEX, IGNORE_INDEX],  # label task: 2 tokens
])
IS_ANSWER = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
NLL = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 6.0, 9.0, 9.0], [0.5, 1.5, 0.0, 0.0]])


def batch(tasks: list[str], order: list[int] | None = None) -> dict:
    order = order or list(range(len(tasks)))
    return {"labels": LABELS[order], "is_answer": IS_ANSWER[order], "weights": torch.ones(len(order), 4),
            "sample_ids": [f"s{i}" for i in order], "tasks": [tasks[i] for i in order]}


def engine_value(loss, b: dict, nll: torch.Tensor) -> float:
    w, mask, _ = loss.target_weights(b, is_encoder_decoder=True)
    return float((w * nll * mask).sum() / (w * mask).sum())


@pytest.mark.parametrize("lam", [1.0, 0.25, 3.0])
def test_dsbs_loss_is_label_plus_lambda_rationale_by_hand(lam):
    loss = DsbsLoss(DsbsLoss.Params(rationale_weight=lam))
    tasks = ["label", "rationale", "label"]
    l_label = (1 + 2 + 3 + 0.5 + 1.5) / 5  # token mean over both label rows
    l_rationale = (4 + 6) / 2  # the rationale alone: its answer-sentence tokens are not the target
    by_hand = l_label + lam * l_rationale
    # the engine divides Σw·ℓ by Σw = 1 + λ: the paper's loss up to that constant
    assert engine_value(loss, batch(tasks), NLL) == pytest.approx(by_hand / (1 + lam))
    w, _, _ = loss.target_weights(batch(tasks), True)
    assert float((w * NLL).sum()) * (1 + lam) == pytest.approx(by_hand)
    assert float(w[1, 2:].abs().sum()) == 0.0  # rationale task: answer sentence weighs 0
    # rows reordered: the weights follow each row's task, not its position
    order = [2, 0, 1]
    assert engine_value(loss, batch(tasks, order), NLL[order]) == pytest.approx(by_hand / (1 + lam))


def test_dsbs_loss_weights_change_only_with_the_task_names():
    loss = DsbsLoss(DsbsLoss.Params(rationale_weight=2.0))
    a = engine_value(loss, batch(["label", "rationale", "label"]), NLL)
    b = engine_value(loss, batch(["label", "rationale", "rationale"]), NLL)
    assert a != pytest.approx(b)
    with pytest.raises(ValueError, match="task"):
        loss.target_weights({**batch(["label", "rationale", "label"]), "tasks": []}, True)
    with pytest.raises(ValueError, match="factual"):
        loss.target_weights(batch(["label", "factual", "label"]), True)


@pytest.mark.parametrize("alpha", [0.5, 0.2])
def test_scott_loss_weights_factual_and_counterfactual_as_set(alpha):
    loss = ScottLoss(ScottLoss.Params(counterfactual_weight=alpha))
    tasks = ["factual", "counterfactual", "factual"]
    l_f = (1 + 2 + 3 + 0.5 + 1.5) / 5
    l_cf = (4 + 6 + 9 + 9) / 4  # every target token of the row counts (the collator made them answer-only)
    assert engine_value(loss, batch(tasks), NLL) == pytest.approx((1 - alpha) * l_f + alpha * l_cf)
    # one task alone in a micro-batch trains that task's mean
    only = batch(["factual", "factual", "factual"])
    assert engine_value(loss, only, NLL) == pytest.approx(float(NLL[LABELS != IGNORE_INDEX].mean()))


def rec(sid: str, rationale: str, answer: str) -> Record:
    first = rationale.index(".") + 1
    return Record(sid, f"What is {answer}?", rationale, ((0, first), (first + 1, len(rationale))), answer, {})


@pytest.fixture(scope="module")
def collator_records():
    base = [rec(f"q{i}", f"Take {i} and add {i}. So we get {2 * i}.", str(2 * i)) for i in range(1, 5)]
    out = [t for r in base[:2] for t in dsbs_tasks(r)]
    return out, base


@pytest.fixture(scope="module")
def tok(collator_records):
    out, base = collator_records
    t = PromptTemplate()
    return train_tokenizer([t.serialize(r).text for r in out + base] * 3, vocab_size=120)


def test_packed_batches_get_the_padded_task_weights(collator_records, tok):
    """Packing lays several sequences in a row: their tasks come through ``seq_index``."""
    out, _ = collator_records
    col = StageCollator(out, PromptTemplate(), tok, is_encoder_decoder=False)
    ids = [r.sample_id for r in out][::-1]
    loss = DsbsLoss(DsbsLoss.Params(rationale_weight=0.5))
    padded = col(ids)
    assert padded["tasks"] == [col.records[s].meta["task"] for s in ids]
    w_pad, _, _ = loss.target_weights(padded, False)
    packed = col.packed(ids, rows_of=None)
    w_pack, _, _ = loss.target_weights(packed, False)
    width = padded["labels"].size(1)
    assert torch.allclose(unpack_targets(w_pack, packed, width), w_pad)


def test_scott_counterfactual_row_is_answer_only_whatever_the_plan(collator_records, tok):
    _, base = collator_records
    r = base[2]
    wrong_text = r.rationale.replace("6.", "7.")
    cf = counterfactual_record(r, wrong_text, r.steps, "7")
    fa = factual_record(r)
    col = StageCollator([fa, cf], PromptTemplate(), tok, is_encoder_decoder=False)
    b = col([fa.sample_id, cf.sample_id], given={fa.sample_id: 0, cf.sample_id: 0})
    assert b["tasks"] == ["factual", "counterfactual"]
    targets = b["labels"] != IGNORE_INDEX
    assert bool((targets[1] == b["is_answer"][1]).all())  # counterfactual: only the answer sentence
    assert int((targets[0] & ~b["is_answer"][0]).sum()) > 0  # factual: rationale tokens are targets
    decoded = tok.decode(b["labels"][1][targets[1]].tolist(), skip_special_tokens=True)
    assert decoded.replace(" ", "") == "Therefore,theansweris7"  # the perturbed answer is the target
