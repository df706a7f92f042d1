"""kpod's greedy generation loop gives model.generate's predictions (tiny Llama), in sample order."""

from __future__ import annotations

import pytest
import torch

from kpod import registry
from kpod.data.load import load_data, template_from
from kpod.engine.run import run_recipe
from kpod.eval.generate import answer_complete, causal_prompt_ids, evaluate_split, greedy_causal
from kpod.models.student import load_saved
from kpod.recipe import build_component
from tests.helpers import tiny_recipe


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny Llama trained for 36 steps: some outputs end in EOS, others run to the limit."""
    out = tmp_path_factory.mktemp("gen") / "run"
    recipe = tiny_recipe(train={"epochs": 6}, data={"source": {"params": {"n_validation": 24}}})
    run_recipe(recipe, out, quiet=True)
    return recipe, load_saved(out / "model")


def _eval(recipe, student, recs, **kw):
    return evaluate_split(
        student.model, student.tokenizer, recs, template_from(recipe),
        build_component(registry.ANSWER_EXTRACTORS, recipe.eval.extractor), False,
        batch_size=5, max_new_tokens=40, device=torch.device("cpu"), split="validation", **kw,
    )


def test_kpod_generation_equals_model_generate_in_sample_order(trained):
    recipe, student = trained
    recs = load_data(recipe)["validation"]
    res_hf, hf = _eval(recipe, student, recs, backend="hf")
    res_k, kp = _eval(recipe, student, recs, backend="kpod", stop_at_answer=False)
    assert [p["sample_id"] for p in kp] == [r.sample_id for r in recs]  # original order, not length order
    assert [p["output"] for p in kp] == [p["output"] for p in hf]
    assert [p["parsed"] for p in kp] == [p["parsed"] for p in hf]
    assert res_k == res_hf
    # the case this test is about: some sequences stopped early (EOS) while others ran on
    ids = causal_prompt_ids(student.tokenizer, [template_from(recipe).inference_prefix(r.question) for r in recs])
    gen = greedy_causal(student.model, student.tokenizer, ids, 40, torch.device("cpu"))
    ends = {len(g) for g in gen}
    assert min(ends) < 40 and gen[[len(g) for g in gen].index(min(ends))][-1] == student.tokenizer.eos_token_id
    assert len(ends) > 1, ends


def test_stop_at_answer_gives_a_prefix_and_the_same_answer_when_eos_follows(trained):
    recipe, student = trained
    recs = load_data(recipe)["validation"]
    _, full = _eval(recipe, student, recs, backend="kpod", stop_at_answer=False)
    _, stop = _eval(recipe, student, recs, backend="kpod", stop_at_answer=True)
    for a, b in zip(full, stop):
        assert a["output"].startswith(b["output"])
        if a["output"] != b["output"]:
            assert answer_complete(b["output"])
        if a["output"].lower().count("the answer is") <= 1:
            assert a["parsed"] == b["parsed"]


def test_answer_complete():
    assert answer_complete("so 3 + 4 = 7. Therefore, the answer is 7 and")
    assert answer_complete("The answer is: (B) ")
    assert not answer_complete("Therefore, the answer is 7")  # 7 may go on: 72
    assert not answer_complete("Therefore, the answer is ")
    assert not answer_complete("no answer here ")


def test_the_prompt_gets_no_full_vocabulary_logits(trained):
    """Only the last position's logits are read, so the LM head only ever sees one position."""
    recipe, student = trained
    prompts = [template_from(recipe).inference_prefix(r.question) for r in load_data(recipe)["validation"][:4]]
    ids = causal_prompt_ids(student.tokenizer, prompts)
    widths = []
    hook = student.model.get_output_embeddings().register_forward_hook(lambda m, i, o: widths.append(i[0].shape[1]))
    try:
        greedy_causal(student.model, student.tokenizer, ids, 5, torch.device("cpu"))
    finally:
        hook.remove()
    assert len(widths) >= 2 and set(widths) == {1}, widths  # prefill (prompt length > 1) included
    assert max(len(x) for x in ids) > 1
