"""The strategies that score tokens with models: excess_loss (student vs reference NLL, static)
and the dynamic strategies' snapshot under the initial student, checked against NLLs and
entropies computed independently from full logits (fp32; rtol 1e-4 / atol 1e-5: the chunked
head sums in another order)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from kpod.data.load import load_data, template_from
from kpod.data.records import DataError
from kpod.data.tokenize import CharWeights, encode_causal_many
from kpod.losses.base import per_token_nll, token_entropy
from kpod.models.student import StudentError, load_student
from kpod.weighting.base import WeightingContext
from kpod.weighting.dynamic import Dft, Entropy
from kpod.weighting.excess_loss import ExcessLoss
from tests.helpers import tiny_recipe


@pytest.fixture(scope="module")
def setup():
    recipe = tiny_recipe()
    records = load_data(recipe)["train"][:12]
    template = template_from(recipe)
    student = load_student(recipe.student, [template.serialize(r).text for r in load_data(recipe)["train"]], seed=0)
    return records, template, student


def _full_logits_stats(model, tokenizer, records, template):
    """Per record: rationale anchors (relative), NLL and entropy, from one plain forward each."""
    out = {}
    sers = [template.serialize(r) for r in records]
    for r, ser, enc in zip(records, sers, encode_causal_many(tokenizer, sers)):
        ids = torch.as_tensor(enc.input_ids)[None]
        rat = (enc.anchors >= ser.rationale_start) & (enc.anchors < ser.answer_span[0])
        labels = torch.where(torch.as_tensor(rat)[None], ids, torch.full_like(ids, -100))
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        nll, mask, _ = per_token_nll(logits, labels, False)
        ent = token_entropy(logits[:, :-1], mask)
        pos = np.nonzero(rat)[0] - 1
        out[r.sample_id] = (enc.anchors[rat] - ser.rationale_start, nll[0, pos].numpy(), ent[0, pos].numpy())
    return out


def _at(weights, sid, anchors):
    return CharWeights(weights[sid]).many(np.asarray(anchors), np.float64)


def _perturbed(student, seed):
    ref = copy.deepcopy(student)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    return ref


def test_excess_loss_weight_is_sigmoid_of_student_minus_reference_nll(tmp_path, setup):
    records, template, student = setup
    ref = _perturbed(student, 1)
    ref.model.save_pretrained(tmp_path / "ref")
    ref.tokenizer.save_pretrained(tmp_path / "ref")
    ctx = WeightingContext(records=records, seed=0, student=student, template=template)
    w = ExcessLoss(ExcessLoss.Params(reference=str(tmp_path / "ref"))).compute(ctx)
    mine = _full_logits_stats(student.model, student.tokenizer, records, template)
    theirs = _full_logits_stats(ref.model, student.tokenizer, records, template)
    signs = []
    for r in records:
        anchors, nll_s, _ = mine[r.sample_id]
        _, nll_r, _ = theirs[r.sample_id]
        got = _at(w, r.sample_id, anchors)
        last = {int(a): i for i, a in enumerate(anchors)}  # tokens sharing an anchor: the last one's score
        idx = [last[int(a)] for a in anchors]
        want = 1 / (1 + np.exp(-(nll_s[idx] - nll_r[idx])))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        signs.append(np.sign(got - 0.5) == np.sign(nll_s[idx] - nll_r[idx]))
    flat = np.concatenate(signs)
    assert flat.mean() > 0.99  # sign: weight above ½ exactly where the student loses more
    # swapping the roles flips every score: w(student, ref) + w(ref, student) = 1
    student.model.save_pretrained(tmp_path / "student")
    student.tokenizer.save_pretrained(tmp_path / "student")
    ctx2 = WeightingContext(records=records, seed=0, student=ref, template=template)
    w2 = ExcessLoss(ExcessLoss.Params(reference=str(tmp_path / "student"))).compute(ctx2)
    for r in records:
        anchors = mine[r.sample_id][0]
        np.testing.assert_allclose(_at(w, r.sample_id, anchors) + _at(w2, r.sample_id, anchors), 1.0, atol=1e-5)


def test_excess_loss_refuses_the_initial_student_as_reference_and_another_tokenizer(tmp_path, setup):
    records, template, student = setup
    student.model.save_pretrained(tmp_path / "same")
    student.tokenizer.save_pretrained(tmp_path / "same")
    ctx = WeightingContext(records=records, seed=0, student=student, template=template)
    with pytest.raises(DataError, match="every excess loss is 0"):
        ExcessLoss(ExcessLoss.Params(reference=str(tmp_path / "same"))).compute(ctx)
    other = load_student(tiny_recipe(student={"tokenizer": {"vocab_size": 150}}).student,
                         [template.serialize(r).text for r in records], seed=0)
    other.model.save_pretrained(tmp_path / "other")
    other.tokenizer.save_pretrained(tmp_path / "other")
    with pytest.raises(DataError, match="student's tokenizer"):
        ExcessLoss(ExcessLoss.Params(reference=str(tmp_path / "other"))).compute(ctx)


@pytest.mark.parametrize("strategy", [Dft(), Entropy()])
def test_dynamic_snapshot_is_the_signal_under_the_initial_student(setup, strategy):
    records, template, student = setup
    sharp = _perturbed(student, 2)  # a model whose tokens differ in probability and entropy
    ctx = WeightingContext(records=records, seed=0, student=sharp, template=template)
    assert strategy.compute(ctx) is None  # no static weights: Eq. 8 sees uniform ones
    snap = strategy.snapshot(ctx)
    stats = _full_logits_stats(sharp.model, sharp.tokenizer, records, template)
    vocab = sharp.model.get_output_embeddings().weight.shape[0]
    for r in records:
        anchors, nll, ent = stats[r.sample_id]
        last = {int(a): i for i, a in enumerate(anchors)}
        idx = [last[int(a)] for a in anchors]
        want = np.exp(-nll[idx]) if strategy.name == "dft" else ent[idx] / np.log(vocab)
        np.testing.assert_allclose(_at(snap, r.sample_id, anchors), want, rtol=1e-4, atol=1e-5)


def test_excess_loss_reference_not_found_names_the_field(tmp_path, setup):
    records, template, student = setup
    ctx = WeightingContext(records=records, seed=4, student=student, template=template)
    with pytest.raises(StudentError, match=r"weighting.params.reference: .*/runs/seed4 not found"):
        ExcessLoss(ExcessLoss.Params(reference=str(tmp_path / "runs" / "seed{seed}"))).compute(ctx)
