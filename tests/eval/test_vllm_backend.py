"""``eval.backend: vllm`` without vLLM: the refusals, and kpod's glue checked against a stand-in
``vllm`` module whose ``LLM`` generates with the saved tiny model (transformers' greedy
``generate``, one prompt at a time) from the token ids it is given.

What this does not check: a real vLLM engine (not installable here, no GPU). The stand-in checks
what kpod sends (token ids, greedy sampling parameters, the model directory) and how it maps the
outputs back; tests/eval/test_generation.py checks that kpod's loop gives model.generate's answers.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from kpod import registry
from kpod.data.load import load_data, template_from
from kpod.engine import fit
from kpod.engine.capabilities import check_vllm_environment
from kpod.engine.offline_eval import evaluate_saved
from kpod.engine.run import run_recipe
from kpod.eval import vllm_backend
from kpod.eval.generate import causal_prompt_ids, evaluate_split
from kpod.models.student import load_saved
from kpod.recipe import RecipeError, build_component
from tests.helpers import tiny_recipe

EVAL = {"backend": "vllm", "splits": ["validation", "test"], "max_new_tokens": 40, "select_on": "validation"}


# keyword arguments of vllm.LLM and vllm.SamplingParams that kpod may pass (a subset of the real
# ones, read from vLLM's source: vllm/entrypoints/llm.py, vllm/sampling_params.py)
LLM_KWARGS = {"tokenizer", "dtype", "gpu_memory_utilization", "enforce_eager", "seed"}
SAMPLING_KWARGS = {"n", "temperature", "max_tokens", "detokenize", "skip_special_tokens", "stop", "stop_token_ids",
                   "ignore_eos", "seed"}


class FakeLLM:
    """What kpod uses of ``vllm.LLM``: built over a model directory, ``generate`` on token-id prompts."""

    built: list[FakeLLM] = []
    reverse = False  # return the outputs in the wrong order (kpod must notice)

    def __init__(self, model, **kwargs):
        assert kwargs.keys() <= LLM_KWARGS, kwargs.keys() - LLM_KWARGS
        self.model_dir, self.kwargs, self.calls, self.generated = model, kwargs, [], []
        self.student = load_saved(model)  # the weights vLLM would load: the directory's
        FakeLLM.built.append(self)

    @torch.no_grad()
    def generate(self, prompts, sampling_params, use_tqdm=True):
        p = sampling_params
        assert p.temperature == 0 and p.n == 1, "greedy, one sequence per prompt"
        self.calls.append(([list(x["prompt_token_ids"]) for x in prompts], p))
        tok, model = self.student.tokenizer, self.student.model
        outs = []
        for x in prompts:
            ids = torch.tensor([x["prompt_token_ids"]])
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=p.max_tokens,
                                 do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
            self.generated.append(gen[0, ids.shape[1]:].tolist())
            outs.append(SimpleNamespace(prompt_token_ids=list(x["prompt_token_ids"]),
                                        outputs=[SimpleNamespace(token_ids=gen[0, ids.shape[1]:].tolist(), text="")]))
        return outs[::-1] if FakeLLM.reverse else outs


def _fake_vllm():
    mod = types.ModuleType("vllm")
    mod.LLM = FakeLLM
    mod.SamplingParams = _sampling_params
    return mod


def _sampling_params(**kw):
    assert kw.keys() <= SAMPLING_KWARGS, kw.keys() - SAMPLING_KWARGS
    return SimpleNamespace(**kw)


@pytest.fixture
def fake_vllm(monkeypatch):
    FakeLLM.built, FakeLLM.reverse = [], False
    monkeypatch.setitem(sys.modules, "vllm", _fake_vllm())
    monkeypatch.setattr(vllm_backend, "cuda_present", lambda: True)
    return FakeLLM


SELECTED = 30  # 6 optimizer steps per epoch: the end of epoch 5 of 6


_RUN_SELECTOR = fit._selector


def _select_step_30(*args):
    """The run's own selection pass (kpod's loop on validation), scored so that step 30 wins: the
    selected weights then differ from the last ones, and the test can tell which vLLM got."""
    select = _RUN_SELECTOR(*args)
    return lambda step: select(step) * 0 + (1.0 if step == SELECTED else 0.0)


@pytest.fixture(scope="module")
def vllm_run(tmp_path_factory):
    """A tiny Llama trained 6 epochs with model selection on validation (step 30 selected), finally
    evaluated through the stand-in vLLM; the fake LLM(s) it built."""
    mp = pytest.MonkeyPatch()
    FakeLLM.built, FakeLLM.reverse = [], False
    mp.setitem(sys.modules, "vllm", _fake_vllm())
    mp.setattr(vllm_backend, "cuda_present", lambda: True)
    mp.setattr(fit, "_selector", _select_step_30)
    out = tmp_path_factory.mktemp("vllm") / "run"
    recipe = tiny_recipe(train={"epochs": 6}, eval=EVAL, data={"source": {"params": {"n_validation": 16}}})
    try:
        summary = run_recipe(recipe, out, quiet=True)
        built = list(FakeLLM.built)
    finally:
        mp.undo()
    return recipe, out, summary, built


def _preds(path):
    return {p["sample_id"]: p for p in map(json.loads, path.read_text().splitlines())}


# --- refusals -------------------------------------------------------------------------------------


def test_refused_when_vllm_is_not_installed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    with pytest.raises(RecipeError, match=r"eval\.backend: vllm, but vllm is not installed.*\[vllm\]"):
        run_recipe(tiny_recipe(eval=EVAL), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()  # refused before the run directory


def test_refused_without_a_cuda_device(tmp_path, fake_vllm, monkeypatch):
    monkeypatch.setattr(vllm_backend, "cuda_present", lambda: False)
    with pytest.raises(RecipeError, match=r"eval\.backend: vllm needs a CUDA GPU"):
        run_recipe(tiny_recipe(eval=EVAL), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_refused_for_an_encoder_decoder_student(tmp_path, fake_vllm):
    recipe = tiny_recipe(student={"model": "tiny:t5"}, eval=EVAL)
    with pytest.raises(RecipeError, match=r"eval\.backend: vllm is for causal.*encoder-decoder"):
        run_recipe(recipe, tmp_path / "run", quiet=True)
    assert not fake_vllm.built and not (tmp_path / "run").exists()  # before the run directory is made


def test_refused_with_lora_or_several_processes(tmp_path, fake_vllm):
    recipe = tiny_recipe(student={"lora": {"rank": 4}}, eval=EVAL)
    with pytest.raises(RecipeError, match=r"eval\.backend: vllm loads full weights, not LoRA.*kpod export"):
        run_recipe(recipe, tmp_path / "run", quiet=True)
    with pytest.raises(RecipeError, match=r"eval\.backend: vllm evaluates in one process, but 2"):
        check_vllm_environment(tiny_recipe(eval=EVAL), processes=2)
    check_vllm_environment(tiny_recipe(), processes=2)  # the kpod backend: nothing to refuse


def test_eval_vllm_options_are_validated():
    with pytest.raises(RecipeError, match=r"eval\.vllm\.gpu_memory_utilization"):
        tiny_recipe(eval={"vllm": {"gpu_memory_utilization": 1.5}})
    with pytest.raises(RecipeError, match=r"eval\.vllm\.dtype"):
        tiny_recipe(eval={"vllm": {"dtype": "fp8"}})


# --- the glue, against the stand-in ---------------------------------------------------------------


def test_final_evaluation_uses_one_engine_on_the_saved_selected_model(vllm_run):
    recipe, out, summary, built = vllm_run
    # one engine, for the final evaluation only: the selection passes (one per epoch) used kpod's loop
    assert len(built) == 1
    llm = built[0]
    assert len(summary["selection"]["evaluations"]) == 6
    assert len(llm.calls) == 2  # one call per evaluated split
    assert llm.model_dir == str(out / "model")
    assert llm.kwargs == {"tokenizer": str(out / "model"), "dtype": "float32", "gpu_memory_utilization": 0.3,
                          "enforce_eager": False, "seed": 0}
    # that directory holds the selected step's weights (not the last step's)
    step = summary["selection"]["step"]
    assert step == SELECTED
    selected = torch.load(out / "selected" / f"step-{step:07d}" / "model.pt", weights_only=True)
    saved = llm.student.model.state_dict()
    assert selected.keys() <= saved.keys()
    assert all(torch.equal(saved[k], v) for k, v in selected.items())
    last_step = summary["selection"]["last_step"]
    last = torch.load(out / "checkpoints" / f"step-{last_step:07d}" / "model.pt", weights_only=True)
    assert any(not torch.equal(saved[k], v) for k, v in last.items() if k in saved)


def test_vllm_gets_kpods_prompt_ids_greedy_params_and_gives_kpods_predictions(vllm_run):
    recipe, out, summary, built = vllm_run
    llm = built[0]
    student = load_saved(out / "model")
    template = template_from(recipe)
    extractor = build_component(registry.ANSWER_EXTRACTORS, recipe.eval.extractor)
    data, ran = load_data(recipe), _preds(out / "predictions.jsonl")
    for (sent, params), split in zip(llm.calls, ["validation", "test"]):
        recs = data[split]
        # the token ids sent are kpod's own prompt ids (BOS handling included), all of the split at once
        want = causal_prompt_ids(student.tokenizer, [template.prompt(r) for r in recs])
        assert sorted(sent) == sorted(want) and len(sent) == len(recs)
        assert (params.temperature, params.max_tokens, params.n) == (0.0, recipe.eval.max_new_tokens, 1)
        assert not getattr(params, "stop", None) and not getattr(params, "ignore_eos", False)
        # the same predictions as the kpod backend (running to EOS), keyed by sample_id
        res, kp = evaluate_split(student.model, student.tokenizer, recs, template, extractor, False, batch_size=5,
                                 max_new_tokens=recipe.eval.max_new_tokens, device=torch.device("cpu"),
                                 split=split, backend="kpod", stop_at_answer=False)
        assert [(p["sample_id"], p["output"], p["parsed"]) for p in kp] == \
            [(ran[p["sample_id"]]["sample_id"], ran[p["sample_id"]]["output"], ran[p["sample_id"]]["parsed"]) for p in kp]
        assert summary["splits"][split] == res
    # the case that makes the comparison mean something: some outputs end at EOS, others run to the limit
    eos = student.tokenizer.eos_token_id
    assert any(g[-1] == eos and len(g) < recipe.eval.max_new_tokens for g in llm.generated)
    assert any(len(g) == recipe.eval.max_new_tokens and eos not in g for g in llm.generated)


def test_outputs_out_of_order_are_an_error(vllm_run, fake_vllm):
    recipe, out, _, _ = vllm_run
    student = load_saved(out / "model")
    gen = vllm_backend.VllmGenerator(str(out / "model"), student.tokenizer, 8, vllm_backend.VllmOptions())
    prompts = [template_from(recipe).prompt(r) for r in load_data(recipe)["test"][:3]]
    assert len(gen(prompts)) == 3
    fake_vllm.reverse = True
    with pytest.raises(RuntimeError, match="not in the order sent"):
        gen(prompts)
    gen.close()
    assert gen.llm is None


def test_kpod_eval_of_a_model_directory_with_vllm(vllm_run, fake_vllm, tmp_path, monkeypatch):
    """``kpod eval MODEL_DIR --recipe`` with eval.backend: vllm: vLLM loads the directory, kpod only
    its tokenizer; the run's own predictions come back."""
    from kpod.engine import offline_eval

    recipe, out, summary, _ = vllm_run
    moved = tmp_path / "somewhere" / "model"
    shutil.copytree(out / "model", moved)

    def no_weights(tgt):
        raise AssertionError("eval.backend: vllm must not load the weights into torch")

    monkeypatch.setattr(offline_eval, "load_target_model", no_weights)
    got = evaluate_saved(moved, out / "recipe.resolved.yaml", out_dir=tmp_path / "ev", quiet=True)
    assert [llm.model_dir for llm in fake_vllm.built] == [str(moved)]
    assert got["splits"] == summary["splits"]
    again, ran = _preds(tmp_path / "ev" / "predictions.jsonl"), _preds(out / "predictions.jsonl")
    assert {k: p["output"] for k, p in again.items()} == {k: p["output"] for k, p in ran.items()}


def test_kpod_eval_with_vllm_refuses_an_adapter_directory(vllm_run, fake_vllm, tmp_path):
    recipe, out, _, _ = vllm_run
    adapter = tmp_path / "adapter"
    shutil.copytree(out / "model", adapter)
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(RecipeError, match=r"eval\.backend: vllm: .* LoRA adapter.*kpod export"):
        evaluate_saved(adapter, out / "recipe.resolved.yaml", out_dir=tmp_path / "ev", quiet=True)
    assert not fake_vllm.built
