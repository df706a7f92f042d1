"""Token weighting: mask learning (Eqs. 2–7), attention, cache, projection, export."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch
from pydantic import BaseModel

from kpod.data.collate import StageCollator
from kpod.data.sources import Arith
from kpod.data.template import PromptTemplate
from kpod.data.tokenize import train_tokenizer
from kpod.models.config import StudentConfig
from kpod.models.student import load_student
from kpod.weighting.attention import AttentionWeighting
from kpod.weighting.base import WeightingContext, WeightingStrategy
from kpod.weighting.cache import load_weights, save_weights
from kpod.weighting.cached import compute_cached
from kpod.weighting.export import read_jsonl, render_html, token_rows, write_jsonl
from kpod.weighting.mask_fit import MaskFit
from kpod.weighting.mask_learning import MaskLearning
from kpod.weighting.mask_model import choose_prefixes, gumbel_mask
from kpod.weighting.tokens import last_mention, rationale_tokens, rationale_tokens_many

TEMPLATE = PromptTemplate()
TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}


@pytest.fixture(scope="module")
def records():
    return Arith(Arith.Params(n_train=48, n_validation=0, n_test=0, n_ood=0, max_steps=3)).load()["train"]


def _student(records, kind="tiny:llama"):
    cfg = StudentConfig(model=kind, tiny=TINY, tokenizer={"vocab_size": 200})
    return load_student(cfg, [TEMPLATE.serialize(r).text for r in records], seed=0)


def _ml(**kw):
    base = dict(predictor="tiny:llama", predictor_tiny=TINY, heads=2, mlp_hidden=16, batch_size=8,
                max_steps=4, lr=1e-2, predictor_lr=1e-2, cache=False)
    base.update(kw)
    return MaskLearning(MaskLearning.Params(**base))


def _ctx(records, student, tmp_path=None, packing=False):
    return WeightingContext(records=records, seed=0, cache_dir=tmp_path, student=student, template=TEMPLATE,
                            packing=packing)


def test_gumbel_mask_is_hard_forward_with_keep_probability_w():
    z = torch.tensor([-2.0, 0.0, 1.5]).repeat(20000, 1)
    for tau in (0.3, 1.0, 3.0):
        m = gumbel_mask(z, tau, torch.Generator().manual_seed(1))
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        freq = m.mean(0)
        torch.testing.assert_close(freq, torch.sigmoid(z[0]), atol=0.015, rtol=0)


def test_batched_rationale_tokens_equal_one_record_at_a_time(records):
    student = _student(records)
    one = [rationale_tokens(r, TEMPLATE, student.tokenizer) for r in records[:20]]
    many = rationale_tokens_many(records[:20], TEMPLATE, student.tokenizer, chunk=6)  # 4 batched calls
    assert many == one and sum(len(t.rat_ids) for t in many) > 0


@pytest.mark.parametrize("predictor", ["tiny:llama", "tiny:t5"])
def test_prediction_loss_alone_reaches_the_weight_generator(records, predictor):
    """Pitfalls 2 and 3: L_p must have a gradient path to the generator through the mask."""
    student = _student(records)
    ml = _ml(predictor=predictor, alpha=0.0)
    model, tok = ml._build(student, student.model.get_input_embeddings())
    toks = [rationale_tokens(r, TEMPLATE, student.tokenizer) for r in records[:6]]
    answers = {t.sample_id: tok(t.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in toks}
    lp, _, _ = MaskFit(ml.params).losses(model, toks, answers, 0, torch.device("cpu"), torch.Generator().manual_seed(0), random.Random(0))
    lp.backward()
    grads = [p.grad for p in model.generator.mlp.parameters()] + [model.generator.attn.in_proj_weight.grad]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert model.generator.embedding.weight.grad is None  # the student embedding stays frozen


def test_frozen_predictor_still_passes_gradient(records):
    student = _student(records)
    ml = _ml(freeze_predictor=True)
    model, tok = ml._build(student, student.model.get_input_embeddings())
    assert not any(p.requires_grad for p in model.predictor.parameters())
    toks = [rationale_tokens(r, TEMPLATE, student.tokenizer) for r in records[:4]]
    answers = {t.sample_id: tok(t.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in toks}
    lp, _, _ = MaskFit(ml.params).losses(model, toks, answers, 0, torch.device("cpu"), torch.Generator().manual_seed(0), random.Random(0))
    lp.backward()
    assert float(model.generator.mlp[2].weight.grad.abs().sum()) > 0


def test_frozen_predictor_is_still_fitted_by_the_warm_up(records, monkeypatch):
    """freeze_predictor fixes the predictor while the masks are learned; a warm-up still fits it."""
    student = _student(records)
    snapshots = {}
    learn = MaskFit.learn_masks

    def spy(self, phase, total):
        snapshots["after_warm_up"] = [q.detach().clone() for q in phase.model.predictor.parameters()]
        out = learn(self, phase, total)
        snapshots["after_masks"] = [q.detach().clone() for q in phase.model.predictor.parameters()]
        snapshots["model"] = phase.model
        return out

    monkeypatch.setattr(MaskFit, "learn_masks", spy)
    start = [q.detach().clone() for q in student.model.parameters()]  # the predictor is a copy of these
    _ml(predictor="student", freeze_predictor=True, predictor_warmup_steps=3, max_steps=3).compute(_ctx(records, student))
    warm, final = snapshots["after_warm_up"], snapshots["after_masks"]
    assert any(not torch.equal(a, b) for a, b in zip(start, warm))  # the warm-up fitted it
    assert all(torch.equal(a, b) for a, b in zip(warm, final))  # mask learning did not
    assert not any(q.requires_grad for q in snapshots["model"].predictor.parameters())


def test_mask_embedding_stays_the_mean_embedding_unless_learned(records):
    student = _student(records)
    mean = student.model.get_input_embeddings().weight.detach().float().mean(0)
    for learn in (True, False):
        ml = _ml(learn_mask_embedding=learn, freeze_predictor=True)
        model, _ = ml._build(student, student.model.get_input_embeddings())
        groups = MaskFit(ml.params).param_groups(model, False)
        assert any(q is model.v_mask for g in groups for q in g["params"]) is learn
        assert model.v_mask.requires_grad is learn
        torch.testing.assert_close(model.v_mask.detach(), mean, rtol=0, atol=1e-6)


def test_large_alpha_drives_the_kept_ratio_down(records):
    student = _student(records)
    kept = {}
    for alpha in (0.0, 20.0):
        ml = _ml(alpha=alpha, max_steps=30, lr=1e-2, init_keep=0.9)
        ml.compute(_ctx(records, student))
        kept[alpha] = ml.report["final_kept_ratio"]
    assert kept[0.0] > 0.8  # L_p alone does not empty the mask
    assert kept[20.0] < 0.1


def test_sum_ratio_loss_scales_with_length(records):
    student = _student(records)
    ml_mean, ml_sum = _ml(ratio_loss="mean"), _ml(ratio_loss="sum")
    model, tok = ml_mean._build(student, student.model.get_input_embeddings())
    toks = [rationale_tokens(r, TEMPLATE, student.tokenizer) for r in records[:4]]
    answers = {t.sample_id: tok(t.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in toks}
    _, lm_mean, _ = MaskFit(ml_mean.params).losses(model, toks, answers, 0, torch.device("cpu"), torch.Generator().manual_seed(3), random.Random(0))
    ml_sum_model = model
    ml_sum_model.params = ml_sum.params
    _, lm_sum, _ = MaskFit(ml_sum.params).losses(ml_sum_model, toks, answers, 0, torch.device("cpu"), torch.Generator().manual_seed(3), random.Random(0))
    assert 0.0 <= float(lm_mean) <= 1.0
    mean_len = sum(len(t.rat_ids) for t in toks) / len(toks)
    assert float(lm_sum) > 5 * float(lm_mean)
    assert float(lm_sum) <= mean_len + 1e-6


def test_prefixes_always_include_the_full_rationale():
    rng = random.Random(0)
    ends = [5, 11, 20, 31]
    for _ in range(50):
        p = choose_prefixes(4, ends, 3, rng)
        assert p[-1] == 31 and len(p) == 3 and len(set(p)) == 3 and set(p) <= set(ends)
    assert choose_prefixes(4, ends, None, rng) == ends
    assert choose_prefixes(1, [7], 3, rng) == [7]


def test_answer_prefix_ends_right_before_the_last_mention_of_the_answer(records):
    """The answer cut: the predictor reads the rationale up to (not including) the tokens of the
    answer's last mention, so it must compute the answer; ``also`` adds it to the step prefixes."""
    student = _student(records)
    for r in records[:10]:
        t = rationale_tokens(r, TEMPLATE, student.tokenizer)
        start = r.rationale.rindex(" " + r.answer + " ") + 1  # built-in data: "... = 25 stickers."
        cut = t.answer_start
        assert cut is not None and t.rat_spans[cut][0] == start
        assert all(s < start for s, e in t.rat_spans[:cut] if e > s)  # the answer is not in the prefix
        rng = random.Random(0)
        assert MaskFit(_ml(answer_prefix="only").params).prefix_ends(t, 3, rng) == [cut]
        also = MaskFit(_ml(answer_prefix="also", num_prefixes=1).params).prefix_ends(t, 1, rng)
        assert also == [cut, t.step_ends[-1]]
        assert MaskFit(_ml().params).prefix_ends(t, 1, rng) == [t.step_ends[-1]]
    assert last_mention("so 12 + 13 = 125, then 2.5 and 25.", "25") == 31
    assert last_mention("so 12 + 13 = 125 and 2.5", "25") is None
    assert last_mention("anything", "") is None


def test_cache_hit_skips_fitting(records, tmp_path, monkeypatch):
    student = _student(records)
    first = _ml(cache=True)
    w1, report1 = compute_cached(first, _ctx(records, student, tmp_path))
    assert report1["cache_hit"] is False and "final_kept_ratio" in report1

    def boom(*a, **k):
        raise AssertionError("fit ran despite a cached result")

    second = _ml(cache=True, log_every=3)  # log_every does not change the weights: same key
    with monkeypatch.context() as patched:
        patched.setattr(MaskFit, "fit", boom)
        w2, report2 = compute_cached(second, _ctx(records, student, tmp_path))
    assert report2["cache_hit"] is True and report2["cache_path"] == report1["cache_path"]
    assert report2["final_kept_ratio"] == report1["final_kept_ratio"]  # the stored report comes back
    assert w1 == w2
    # a different seed or different params is a different key: fitting runs again
    third = _ml(cache=True, alpha=0.9)
    _, report3 = compute_cached(third, _ctx(records, student, tmp_path))
    assert report3["cache_hit"] is False
    other_seed = WeightingContext(records=records, seed=1, cache_dir=tmp_path, student=student, template=TEMPLATE)
    assert compute_cached(_ml(cache=True), other_seed)[1]["cache_hit"] is False
    # cache: false computes every time and writes nothing
    before = sorted(tmp_path.rglob("*.jsonl"))
    _, off = compute_cached(_ml(cache=False), _ctx(records, student, tmp_path))
    assert "cache_hit" not in off and sorted(tmp_path.rglob("*.jsonl")) == before


class _Counting(WeightingStrategy):
    """A new strategy in a few lines: it only computes; compute_cached keys and stores it."""

    name = "counting"

    class Params(BaseModel):
        value: float = 0.5
        cache: bool = True

    calls = 0

    def compute(self, ctx):
        type(self).calls += 1
        self.report = {"value": self.params.value}
        return {r.sample_id: [(0, len(r.rationale), self.params.value)] for r in ctx.records}

    def cache_inputs(self, ctx):
        return {"model": "none"} if self.params.cache else None


def test_compute_cached_keys_a_new_strategy_by_content(records, tmp_path):
    ctx = WeightingContext(records=records, seed=0, cache_dir=tmp_path)
    _Counting.calls = 0
    w1, r1 = compute_cached(_Counting(_Counting.Params()), ctx)
    w2, r2 = compute_cached(_Counting(_Counting.Params()), ctx)
    assert _Counting.calls == 1 and w1 == w2 and (r1["cache_hit"], r2["cache_hit"]) == (False, True)
    assert r2["value"] == 0.5 and r1["cache_path"].startswith(str(tmp_path / "weights" / "counting-"))
    compute_cached(_Counting(_Counting.Params(value=0.25)), ctx)  # other params: other key
    edited = [dataclasses.replace(records[0], answer=records[0].answer + "0"), *records[1:]]
    compute_cached(_Counting(_Counting.Params()), WeightingContext(records=edited, seed=0, cache_dir=tmp_path))
    assert _Counting.calls == 3  # other data: other key
    compute_cached(_Counting(_Counting.Params(cache=False)), ctx)
    assert _Counting.calls == 4


def test_attention_weights_are_cached_under_the_reference_model(records, tmp_path, monkeypatch):
    student = _student(records)
    ctx = _ctx(records[:6], student, tmp_path)
    w1, r1 = compute_cached(AttentionWeighting(AttentionWeighting.Params()), ctx)
    again = AttentionWeighting(AttentionWeighting.Params())
    monkeypatch.setattr(again, "_weights", lambda *a, **k: pytest.fail("attention recomputed despite the cache"))
    w2, r2 = compute_cached(again, ctx)
    assert w1 == w2 and r1["cache_hit"] is False and r2 == {**r1, "cache_hit": True}
    monkeypatch.undo()
    with torch.no_grad():  # another reference model (the student's weights changed): another key
        next(student.model.parameters()).add_(0.01)
    assert compute_cached(AttentionWeighting(AttentionWeighting.Params()), ctx)[1]["cache_hit"] is False


# --- packing the answer predictor's passes (train.packing) -------------------------------------
# fp32 on CPU, packed vs padded: L_p rtol 1e-5, gradients rtol 1e-4 / atol 1e-6 (the attention
# kernels sum in a different order; the masks, noise and prefixes are the same draws).


@pytest.mark.parametrize("rows_of", [1, 2, None])
def test_packed_predictor_passes_give_the_padded_loss_and_gradients(records, rows_of):
    student = _student(records)
    ml = _ml(alpha=0.5, num_prefixes=3)
    model, tok = ml._build(student, student.model.get_input_embeddings())
    toks = [rationale_tokens(r, TEMPLATE, student.tokenizer) for r in records[:8]]
    answers = {t.sample_id: tok(t.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in toks}

    def run(packing):
        model.packing, model.pack_rows_of = packing, rows_of
        model.zero_grad(set_to_none=True)
        calls = []
        hook = model.predictor.register_forward_pre_hook(lambda m, a, kw: calls.append(kw), with_kwargs=True)
        try:
            lp, lm, kept = MaskFit(ml.params).losses(model, toks, answers, 0, torch.device("cpu"), torch.Generator().manual_seed(0),
                                      random.Random(0))
            (lp + lm).backward()
        finally:
            hook.remove()
        grads = {n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}
        return lp.detach(), kept, grads, calls

    lp_a, kept_a, grads_a, calls_a = run(False)
    lp_b, kept_b, grads_b, calls_b = run(True)
    torch.testing.assert_close(lp_b, lp_a, rtol=1e-5, atol=0)
    assert kept_b == kept_a  # the same masks (the same noise)
    assert grads_b.keys() == grads_a.keys() and "v_mask" in grads_a
    assert any(n.startswith("generator.") for n in grads_a) and any(n.startswith("predictor.") for n in grads_a)
    for name, g in grads_a.items():
        torch.testing.assert_close(grads_b[name], g, rtol=1e-4, atol=1e-6, msg=name)
    (padded,), (packed,) = calls_a, calls_b
    assert "attention_mask" in padded and "attention_mask" not in packed and "position_ids" in packed
    assert packed["inputs_embeds"].shape[0] < padded["inputs_embeds"].shape[0]  # rows hold several sequences


@pytest.mark.parametrize(("predictor", "setting", "want"), [
    ("tiny:llama", "auto", "on"),
    ("tiny:llama", True, "on"),
    ("tiny:llama", False, "off (train.packing: false)"),
    ("tiny:t5", "auto", "off (encoder-decoder answer predictors are not packed"),
    ("tiny:t5", True, "off (encoder-decoder answer predictors are not packed"),
])
def test_predictor_packing_follows_train_packing_and_is_cached_apart(records, tmp_path, predictor, setting, want):
    """train.packing decides (the predictor passes the training's probe); a seq2seq predictor stays
    padded even under true (the setting names the student); packed and padded fits are cached apart."""
    student = _student(records)
    _, first = compute_cached(_ml(predictor=predictor, cache=True, max_steps=2), _ctx(records, student, tmp_path, packing=setting))
    assert first["predictor_packing"].startswith(want) and first["cache_hit"] is False
    _, again = compute_cached(_ml(predictor=predictor, cache=True, max_steps=2), _ctx(records, student, tmp_path, packing=setting))
    assert again["cache_hit"] is True and again["predictor_packing"] == first["predictor_packing"]
    other_ctx = _ctx(records, student, tmp_path, packing=False if setting else "auto")
    _, other = compute_cached(_ml(predictor=predictor, cache=True, max_steps=2), other_ctx)
    assert other["cache_hit"] is (predictor == "tiny:t5")  # padded either way: one entry


def test_weights_project_by_characters_across_tokenizers(records):
    """Weights fitted in one tokenization line up with another tokenizer's tokens."""
    student = _student(records)
    weights = _ml(max_steps=2).compute(_ctx(records, student))
    other_tok = train_tokenizer([TEMPLATE.serialize(r).text for r in records], vocab_size=90)
    assert other_tok("apples stickers")["input_ids"] != student.tokenizer("apples stickers")["input_ids"]
    coll = StageCollator(records, TEMPLATE, other_tok, False, weights)
    for r in records[:10]:
        ser = TEMPLATE.serialize(r)
        ex = coll.example(r.sample_id, 0)
        enc, _ = coll._causal[r.sample_id]
        for k, a in enumerate(enc.anchors):
            if ser.rationale_start <= a < ser.answer_span[0]:
                rel = a - ser.rationale_start
                expected = [w for s, e, w in weights[r.sample_id] if s <= rel < e]
                assert expected, f"no fitted span covers char {rel}"
                assert ex["weights"][k] == pytest.approx(expected[0])
            elif a >= ser.answer_span[0]:
                assert ex["weights"][k] == 1.0


def test_weights_files_round_trip(records, tmp_path):
    student = _student(records)
    weights = _ml(max_steps=2).compute(_ctx(records, student))
    save_weights(tmp_path / "w.jsonl", weights, {"note": "x"})
    back, meta = load_weights(tmp_path / "w.jsonl")
    assert back == weights and meta == {"note": "x"}
    rows = token_rows(records, weights, TEMPLATE, student.tokenizer)
    write_jsonl(rows, tmp_path / "t.jsonl")
    assert read_jsonl(tmp_path / "t.jsonl") == rows
    row = rows[0]
    assert len(row["tokens"]) == len(row["offsets"]) == len(row["weights"])
    for (s, e), tok in zip(row["offsets"], row["tokens"]):
        if e > s:  # whitespace-only tokens have empty spans
            assert row["rationale"][s:e].strip() and tok.replace("▁", "").strip() in row["rationale"][max(s - 1, 0) : e]
    page = render_html(rows, "t", limit=3)
    assert page.count("class='s'") == 3 and "rgba(220,38,38," in page


@pytest.mark.parametrize("kind", ["tiny:llama", "tiny:t5"])
def test_attention_weights_are_in_unit_interval_with_max_one(records, kind):
    student = _student(records, kind)
    before = student.model.config._attn_implementation
    strat = AttentionWeighting(AttentionWeighting.Params(cache=False))
    weights = strat.compute(_ctx(records[:12], student))
    assert set(weights) == {r.sample_id for r in records[:12]}
    for r in records[:12]:
        ws = [w for _, _, w in weights[r.sample_id]]
        assert all(0.0 < w <= 1.0 + 1e-6 for w in ws)
        assert max(ws) == pytest.approx(1.0)
        got = [(s, e) for s, e, _ in weights[r.sample_id]]
        assert all(0 <= s < e <= len(r.rationale) for s, e in got)
        if kind == "tiny:llama":  # one tokenisation of the full text: the student's rationale tokens
            spans = rationale_tokens(r, TEMPLATE, student.tokenizer).rat_spans
            assert got == [(s, e) for s, e in spans if e > s]
    # the student is left as it was: training keeps its attention implementation
    assert student.model.config._attn_implementation == before


def test_kept_ratio_logs_are_finite(records):
    student = _student(records)
    ml = _ml(max_steps=3)
    ml.compute(_ctx(records, student))
    assert math.isfinite(ml.report["final_L_p"]) and 0.0 <= ml.report["final_kept_ratio"] <= 1.0


def _save_many(path, n):
    for i in range(n):
        save_weights(path, {"s": [(0, 1, 0.5)]}, {"i": i})


def test_parallel_runs_can_write_the_same_cache_entry(tmp_path):
    """Runs with the same key (e.g. ablations of one seed) write one cache file concurrently."""
    import multiprocessing as mp

    path = tmp_path / "w.jsonl"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_save_many, args=(path, 30)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert all(p.exitcode == 0 for p in procs)
    weights, meta = load_weights(path)
    assert weights == {"s": [(0, 1, 0.5)]} and "i" in meta
    assert not list(tmp_path.glob("*.tmp"))
