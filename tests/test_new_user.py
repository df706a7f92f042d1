"""What a new user does in the first hour, kept working: the README's local-data ``extends:``
example validates, and a saved run's model is read by a plain transformers client exactly as kpod
trained and evaluated it (same input ids, same greedy outputs)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from kpod.engine.run import run_recipe
from kpod.eval.generate import causal_prompt_ids, generate
from kpod.models.student import load_saved
from kpod.recipe import load_recipe
from tests.helpers import tiny_recipe

ROOT = Path(__file__).resolve().parents[1]
EVAL = {"splits": ["test"], "max_new_tokens": 24, "batch_size": 4}


def test_readme_local_data_example_extends_std_cot(tmp_path):
    """The README's `data.source: {name: local, ...}` snippet, put in a recipe extending std_cot."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"Local data: `(data\.source: \{name: local, .*?\}\}\})`", readme, re.S)
    assert m, "README: the local-data example moved; update this test"
    snippet = " ".join(m.group(1).split())
    body = snippet.replace("data.source: ", "data: {source: ", 1) + "}"
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(f"extends: {ROOT / 'recipes' / 'std_cot.yaml'}\n{body}\n", encoding="utf-8")
    r = load_recipe(recipe)
    assert r.data.source.name == "local"
    assert set(r.data.source.params.files) == {"train", "test"}
    assert r.loss.name == "std_cot"


@pytest.fixture(scope="module", params=["tiny:llama", "tiny:t5"])
def saved_run(request, tmp_path_factory):
    run = tmp_path_factory.mktemp("newuser") / "run"
    run_recipe(tiny_recipe(student={"model": request.param}, train={"epochs": 2}, eval=EVAL), run, quiet=True)
    return run


def _plain_transformers(model_dir: Path, prompts: list[str], max_new_tokens: int) -> tuple[list[list[int]], list[str]]:
    """What a user's own script does with RUN/model: AutoTokenizer + AutoModel + greedy generate."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    seq2seq = AutoConfig.from_pretrained(model_dir).is_encoder_decoder
    model = (AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM).from_pretrained(model_dir).eval()
    ids, outs = [], []
    for p in prompts:  # one prompt at a time: no padding question at all
        enc = tok(p, return_tensors="pt")
        ids.append(enc["input_ids"][0].tolist())
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
        gen = out[0] if seq2seq else out[0, enc["input_ids"].shape[1]:]
        outs.append(tok.decode(gen, skip_special_tokens=True))
    return ids, outs


def test_saved_model_reads_the_same_in_plain_transformers(saved_run):
    preds = [json.loads(x) for x in (saved_run / "predictions.jsonl").read_text().splitlines()]
    prompts = [p["prompt"] for p in preds]
    model_dir = saved_run / "model"
    ids, plain = _plain_transformers(model_dir, prompts, EVAL["max_new_tokens"])

    student = load_saved(model_dir)
    tok = student.tokenizer
    if student.is_encoder_decoder:
        kpod_ids = [tok(p, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for p in prompts]
    else:
        kpod_ids = causal_prompt_ids(tok, prompts)
        assert all(x[0] == tok.bos_token_id for x in kpod_ids)
    assert ids == kpod_ids  # the input the model was trained and evaluated on
    # kpod's own greedy generation, run to the same length, gives the same text
    ours = generate(student.model, tok, prompts, student.is_encoder_decoder, EVAL["max_new_tokens"],
                    torch.device("cpu"))
    assert plain == ours
    # the run's predictions stop once an answer is stated: each is a prefix of the plain output
    for p, text in zip(preds, plain):
        assert text.startswith(p["output"]), (p["output"], text)


def test_quickstart_and_index_quote_the_shipped_recipe():
    """The numbers the quickstart and docs/index.md quote come from recipes/_offline.yaml and
    recipes/kpod_full.yaml as shipped: change a recipe and this test names the doc to update."""
    r = load_recipe(ROOT / "recipes" / "kpod_full.yaml")
    src = r.data.source.params
    quick = " ".join((ROOT / "docs" / "quickstart.md").read_text(encoding="utf-8").split())
    index = " ".join((ROOT / "docs" / "index.md").read_text(encoding="utf-8").split())
    from kpod.schedulers.kpod_knapsack import default_T

    t = r.scheduler.params.T or default_T(r.train.epochs)
    for claim in [
        f"{src.n_train:,} generated arithmetic word problems ({src.min_steps}–{src.max_steps} steps)",
        f"validation ({src.n_validation}, for model selection), test ({src.n_test})",
        f"split ({src.n_ood}, {src.ood_min_steps}–{src.ood_max_steps} steps",
        f"({r.student.pretrain.steps} steps, cached under `$KPOD_CACHE/pretrained`)",
        f"{r.train.epochs} epochs: epochs 1–{t} on the curriculum's stages, {t + 1}–{r.train.epochs} on full rationales",
        f"Q: … A: {r.data.template.trigger}",
    ]:
        assert claim in quick, f"docs/quickstart.md should say: {claim}"
    assert r.eval.select_on == "validation" and "selected on validation accuracy" in quick
    assert f"distilled for {r.train.epochs} epochs" in index and "pre-trained once" in index
    assert "from scratch" not in index


def test_the_user_reference_cites_nothing_users_do_not_have():
    """recipe_reference.md is generated from code whose docstrings may cite the developers' spec."""
    ref = (ROOT / "docs" / "recipe_reference.md").read_text(encoding="utf-8")
    assert "spec §" not in ref
