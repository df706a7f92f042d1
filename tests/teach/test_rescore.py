"""Rescoring existing rationales with a local teacher into the top-k store: the stored
distributions are the teacher's own (batched = one sequence at a time), keyed by sample_id, and an
interrupted pass resumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kpod.data.sources import Arith
from kpod.data.template import PromptTemplate
from kpod.data.tokenize import encode_causal
from kpod.data.topk_store import TopKStore
from kpod.teach.rescore import rescore
from tests.helpers import tiny_lm

TEMPLATE = PromptTemplate()
K = 5


@pytest.fixture(scope="module")
def teacher():
    records = Arith(Arith.Params(n_train=7, n_validation=0, n_test=0, n_ood=0, max_steps=3)).load()["train"]
    return records, tiny_lm(records, TEMPLATE)


def open_store(path):
    return TopKStore(path, k=K, teacher="tiny", tokenizer="tiny-bpe")


def test_stored_topk_is_the_teachers_own_distribution_by_sample_id(teacher, tmp_path):
    records, st = teacher
    with open_store(tmp_path) as store:
        report = rescore(st.model, st.tokenizer, records, TEMPLATE, store, batch_size=3)
    assert report.scored == len(records) and report.already_stored == 0
    with open_store(tmp_path) as store:
        for r in reversed(records):  # read back by sample_id, in another order
            ser = TEMPLATE.serialize(r)
            enc = encode_causal(st.tokenizer, ser)
            with torch.no_grad():  # one sequence, no padding
                logp = torch.log_softmax(st.model(input_ids=torch.as_tensor(enc.input_ids)[None]).logits[0].float(), -1)
            d = store.get(r.sample_id)
            targets = [t for t in range(1, len(enc.input_ids)) if enc.anchors[t] >= ser.rationale_start]
            assert d.token_ids.tolist() == [int(enc.input_ids[t]) for t in targets]
            # the stored spans cover the rationale and the answer sentence in order
            assert d.offsets[0, 0] == 0 and (np.diff(d.offsets[:, 0]) >= 0).all()
            assert ser.text[ser.rationale_start:][d.offsets[0, 0]:d.offsets[0, 1]].strip() != ""
            want = torch.topk(logp[[t - 1 for t in targets]], K, dim=-1)
            np.testing.assert_allclose(d.top_logprobs.astype(np.float32), want.values.numpy(), rtol=2e-3, atol=2e-3)
            # ids agree except where two log-probs tie within fp16 rounding
            gaps = (want.values[:, :-1] - want.values[:, 1:]).numpy()
            clear = np.concatenate([gaps > 1e-3, np.ones((len(targets), 1), bool)], 1) & np.concatenate(
                [np.ones((len(targets), 1), bool), gaps > 1e-3], 1)
            assert (d.top_ids[clear] == want.indices.numpy()[clear]).all()
            tail = np.log1p(-np.exp(want.values.double().numpy()).sum(1))
            np.testing.assert_allclose(d.tail_logprob.astype(np.float64), tail, rtol=5e-3, atol=5e-3)


def test_an_interrupted_pass_scores_only_what_is_missing(teacher, tmp_path):
    records, st = teacher
    with open_store(tmp_path) as store:
        rescore(st.model, st.tokenizer, records[:3], TEMPLATE, store, batch_size=2)
    with open_store(tmp_path) as store:
        report = rescore(st.model, st.tokenizer, records, TEMPLATE, store, batch_size=2)
        assert (report.already_stored, report.scored) == (3, len(records) - 3)
        assert all(r.sample_id in store for r in records)
