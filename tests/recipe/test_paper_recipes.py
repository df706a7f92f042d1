"""recipes/paper/: every data set × student of the paper validates with the paper's settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from kpod.recipe import load_recipe

PAPER = Path(__file__).resolve().parents[2] / "recipes" / "paper"
# (epochs, T, lr, LoRA rank) per student; LLaMA's epochs depend on the data set (paper Appendix A)
STUDENTS = {
    "llama7b_lora": ("huggyllama/llama-7b", 1e-5, 64),
    "flan_t5_xl": ("google/flan-t5-xl", 5e-5, 128),
    "flan_t5_large": ("google/flan-t5-large", 5e-5, 128),
}
LLAMA_EPOCHS = {"gsm8k": 20, "csqa": 20, "asdiv": 40, "svamp": 40}


@pytest.mark.parametrize("dataset", sorted(LLAMA_EPOCHS))
@pytest.mark.parametrize("student", sorted(STUDENTS))
def test_paper_recipe_has_the_papers_settings(dataset, student):
    r = load_recipe(PAPER / f"{dataset}_{student}.yaml")
    model, lr, rank = STUDENTS[student]
    epochs = LLAMA_EPOCHS[dataset] if student == "llama7b_lora" else 100
    assert r.name == f"{dataset}_{student}"
    assert (r.student.model, r.train.lr, r.student.lora.rank) == (model, lr, rank)
    assert (r.train.epochs, r.scheduler.params.T) == (epochs, epochs // 2)
    assert r.train.batch_size == 4 and r.data.source.name == dataset
    p = r.scheduler.params
    assert (p.c0_frac, p.p, p.beta) == (0.3, 0.5, 12.0) and r.clusters.k == 5 and r.clusters.embedder == "glove"
    assert r.weighting.name == "mask_learning" and r.weighting.params.alpha == 0.5
    assert r.weighting.params.predictor == "google/flan-t5-large"
    assert r.eval.extractor.name == ("choice" if dataset == "csqa" else "numeric")
