"""Step difficulty (Eq. 8) and question clusters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kpod.clusters import hashed_bow, kmeans, question_clusters
from kpod.data.records import DataError, Record
from kpod.data.sources import Arith
from kpod.data.template import PromptTemplate
from kpod.data.tokenize import CharWeights, encode_causal
from kpod.difficulty import compute_difficulties, normalise_within_step, step_difficulty_from_nll
from kpod.models.config import StudentConfig
from kpod.models.student import load_student
from kpod.recipe import ClustersConfig

TEMPLATE = PromptTemplate()


def test_within_step_normalisations_sum_to_one():
    w = np.array([0.1, 0.9, 0.5])
    for mode in ("softmax", "mean", "normalized"):
        assert normalise_within_step(w, mode).sum() == pytest.approx(1.0)
    sm = normalise_within_step(w, "softmax")
    assert sm.max() / sm.min() <= np.e  # weights in (0, 1): the softmax is nearly uniform (§4)
    np.testing.assert_allclose(normalise_within_step(w, "normalized"), w / w.sum())


def test_eq8_is_computed_per_step_with_weighted_means():
    # two steps over chars [0,10) and [10,20); tokens anchored at 0,5 | 10,15
    anchors = np.array([0, 5, 10, 15])
    nll = np.array([1.0, 3.0, 0.2, 0.2])
    steps = ((0, 10), (10, 20))
    uniform = step_difficulty_from_nll(nll, anchors, steps, CharWeights(None), "mean")
    assert uniform == pytest.approx([2.0, 0.2])  # different steps, different difficulty (never one value for all)
    # weight the high-NLL token up: the weighted mean moves towards it
    cw = CharWeights([(0, 5, 0.1), (5, 10, 0.9)])
    d = step_difficulty_from_nll(nll, anchors, steps, cw, "normalized")
    assert d[0] == pytest.approx(0.1 * 1.0 + 0.9 * 3.0)
    sm = step_difficulty_from_nll(nll, anchors, steps, cw, "softmax")
    assert uniform[0] < sm[0] < d[0]


@pytest.fixture(scope="module")
def records():
    return Arith(Arith.Params(n_train=24, n_validation=0, n_test=0, n_ood=0, max_steps=3)).load()["train"]


@pytest.mark.parametrize("kind", ["tiny:llama", "tiny:t5"])
def test_difficulties_match_a_manual_teacher_forced_pass(records, kind, tmp_path):
    cfg = StudentConfig(model=kind, tiny={"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
                        tokenizer={"vocab_size": 150})
    st = load_student(cfg, [TEMPLATE.serialize(r).text for r in records], seed=0)
    d = compute_difficulties(st.model, st.tokenizer, st.is_encoder_decoder, records, TEMPLATE, None, "mean",
                             batch_size=5, cache_dir=tmp_path)
    assert set(d) == {r.sample_id for r in records}
    for r in records:
        assert len(d[r.sample_id]) == r.n_steps and all(x > 0 for x in d[r.sample_id])
    if kind == "tiny:llama":  # recompute one example by hand
        r = records[3]
        ser = TEMPLATE.serialize(r)
        enc = encode_causal(st.tokenizer, ser)
        with torch.no_grad():
            logits = st.model(input_ids=torch.tensor([enc.input_ids])).logits[0]
        logp = torch.log_softmax(logits.float(), -1)
        nll = -logp[:-1].gather(1, torch.tensor(enc.input_ids[1:]).unsqueeze(1)).squeeze(1).numpy()
        anchors = enc.anchors[1:]
        for k, (s, e) in enumerate(ser.steps):
            idx = (anchors >= s) & (anchors < e)
            assert d[r.sample_id][k] == pytest.approx(float(nll[idx].mean()), rel=1e-4)
    # cached: a second call reads the file, a different mode is a different key
    again = compute_difficulties(st.model, st.tokenizer, st.is_encoder_decoder, records, TEMPLATE, None, "mean",
                                 cache_dir=tmp_path)
    assert again == d
    assert len(list((tmp_path / "difficulty").glob("*.json"))) == 1
    compute_difficulties(st.model, st.tokenizer, st.is_encoder_decoder, records, TEMPLATE, None, "softmax",
                         cache_dir=tmp_path)
    assert len(list((tmp_path / "difficulty").glob("*.json"))) == 2


def test_kmeans_is_deterministic_and_separates_clear_groups():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (30, 4)), rng.normal(5, 0.1, (30, 4))])
    a, b = kmeans(x, 2, seed=3), kmeans(x, 2, seed=3)
    assert (a == b).all()
    assert len(set(a[:30])) == 1 and len(set(a[30:])) == 1 and a[0] != a[30]


def test_hashed_bow_clusters_two_question_families():
    qs = [f"How many apples does Tom have after buying {i} more apples?" for i in range(20)]
    qs += [f"What colour is the sky above the city number {i} today?" for i in range(20)]
    recs = [Record(f"q/{i}", q, "", (), "1") for i, q in enumerate(qs)]
    labels, report = question_clusters(recs, ClustersConfig(k=2, embedder="hashed_bow"), seed=0)
    first = {labels[f"q/{i}"] for i in range(20)}
    second = {labels[f"q/{i}"] for i in range(20, 40)}
    assert len(first) == 1 and len(second) == 1 and first != second
    assert sorted(report["sizes"]) == [20, 20]
    assert np.allclose(np.linalg.norm(hashed_bow(qs[:3]), axis=1), 1.0)


def test_glove_embedder_reads_a_user_file(tmp_path):
    glove = tmp_path / "g.txt"
    glove.write_text("apples 1 0\ntom 1 0.1\nsky 0 1\ncity 0.1 1\n")
    recs = [Record(f"q/{i}", q, "", (), "1") for i, q in enumerate(["Tom apples", "apples", "sky city", "city", "zzz"])]
    labels, report = question_clusters(recs, ClustersConfig(k=2, embedder="glove", glove_path=str(glove), restarts=3), seed=0)
    assert labels["q/0"] == labels["q/1"] != labels["q/2"] == labels["q/3"]
    assert report["questions_without_vectors"] == 1
    with pytest.raises(DataError, match="glove_path"):
        question_clusters(recs, ClustersConfig(k=2, embedder="glove"), seed=0)
    with pytest.raises(DataError, match="no such file"):
        question_clusters(recs, ClustersConfig(k=2, embedder="glove", glove_path=str(tmp_path / "nope")), seed=0)


def test_difficulty_cache_key_sees_every_weight():
    """Two models equal in the first 1 MB of the embedding and in parameter count, different
    elsewhere (a fine-tune of one base), must not share cached difficulties; the old key
    (embedding prefix + parameter count) gave them the same one."""
    import hashlib

    from transformers import LlamaConfig, LlamaForCausalLM

    from kpod.difficulty import difficulty_key

    records = Arith(Arith.Params(n_train=6, n_validation=0, n_test=0, n_ood=0, max_steps=2)).load()["train"]
    tok = load_student(StudentConfig(tokenizer={"vocab_size": 100}), [TEMPLATE.serialize(r).text for r in records]).tokenizer
    cfg = LlamaConfig(vocab_size=4096, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2)  # embedding 4,096 x 64 fp32 = 1.05 MB
    torch.manual_seed(0)
    a = LlamaForCausalLM(cfg)
    b = LlamaForCausalLM(cfg)
    b.load_state_dict(a.state_dict())
    assert a.get_input_embeddings().weight.numel() * 4 > 1_000_000
    with torch.no_grad():
        b.model.layers[0].mlp.down_proj.weight[0, 0] += 1e-3  # a fine-tune: one weight elsewhere
        b.get_input_embeddings().weight[-1, -1] += 1e-3  # and the embedding's tail past 1 MB

    def old_key(m):
        h = hashlib.sha256()
        h.update(m.get_input_embeddings().weight.detach().float().cpu().numpy().tobytes()[:1_000_000])
        h.update(str(sum(p.numel() for p in m.parameters())).encode())
        return h.hexdigest()

    assert old_key(a) == old_key(b)  # the collision the old key had
    key = lambda m: difficulty_key(m, tok, TEMPLATE, records, None, "softmax")  # noqa: E731
    assert key(a) != key(b)
    c = LlamaForCausalLM(cfg)
    c.load_state_dict(a.state_dict())
    assert key(c) == key(a)  # same weights, same key


# --- packing (train.packing) -------------------------------------------------------------------
# fp32 on CPU, packed vs padded per-step difficulties: rtol 1e-5 (the attention kernels sum in a
# different order; nothing else differs). What resolves train.packing for this pass is tested in
# tests/engine/test_fast_paths.py.


@pytest.fixture(scope="module")
def varied():
    """Rationales of 1 to 6 steps (sequences of very different lengths: rows hold several) and a
    tiny causal student."""
    records = Arith(Arith.Params(n_train=30, n_validation=0, n_test=0, n_ood=0, min_steps=1, max_steps=6)).load()["train"]
    cfg = StudentConfig(model="tiny:llama", tiny={"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64},
                        tokenizer={"vocab_size": 150})
    return records, load_student(cfg, [TEMPLATE.serialize(r).text for r in records], seed=0)


def _halves(records):
    return {r.sample_id: [(0, len(r.rationale) // 2, 0.2), (len(r.rationale) // 2, len(r.rationale), 0.9)]
            for r in records}


@pytest.mark.parametrize("rows_of", [1, 2, None])
def test_packed_difficulty_pass_gives_the_padded_difficulties(varied, rows_of):
    records, st = varied
    calls = []
    hook = st.model.register_forward_pre_hook(lambda m, a, kw: calls.append(kw), with_kwargs=True)
    try:
        padded = compute_difficulties(st.model, st.tokenizer, False, records, TEMPLATE, _halves(records), batch_size=8)
        n = len(calls)
        packed = compute_difficulties(st.model, st.tokenizer, False, records, TEMPLATE, _halves(records), batch_size=8,
                                      packing=True, pack_rows_of=rows_of)
    finally:
        hook.remove()
    assert list(packed) == list(padded)
    for sid, d in padded.items():
        np.testing.assert_allclose(packed[sid], d, rtol=1e-5, atol=0)
    # really another computation (shown by the forward calls, not by rounding, which may or may
    # not differ on a given CPU): packed rows have no attention mask, carry position ids and hold
    # several sequences each
    assert all("attention_mask" not in kw and "position_ids" in kw for kw in calls[n:])
    assert all("attention_mask" in kw for kw in calls[:n])
    assert sum(kw["input_ids"].shape[0] for kw in calls[n:]) < len(records)
    if rows_of is not None:  # rows as wide as the longest sequence (or two): fewer positions computed
        cells = [sum(kw["input_ids"].numel() for kw in part) for part in (calls[:n], calls[n:])]
        assert cells[1] < cells[0]


def test_packed_and_padded_difficulties_are_cached_apart(varied, tmp_path):
    records, st = varied

    def run(packing):
        return compute_difficulties(st.model, st.tokenizer, False, records, TEMPLATE, None, batch_size=8,
                                    cache_dir=tmp_path, packing=packing)

    padded, packed = run(False), run(True)
    assert len(list((tmp_path / "difficulty").glob("*.json"))) == 2
    assert run(True) == packed and run(False) == padded  # each path reads back its own entry


def test_packing_the_difficulty_pass_of_a_seq2seq_student_is_refused(records):
    cfg = StudentConfig(model="tiny:t5", tiny={"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
                        tokenizer={"vocab_size": 150})
    st = load_student(cfg, [TEMPLATE.serialize(r).text for r in records], seed=0)
    with pytest.raises(ValueError, match="packing needs a causal"):
        compute_difficulties(st.model, st.tokenizer, True, records, TEMPLATE, None, packing=True)


@pytest.mark.parametrize("kind,packing", [("tiny:llama", False), ("tiny:llama", True), ("tiny:t5", False)])
def test_chunked_difficulty_pass_gives_the_full_logits_difficulties(records, kind, packing):
    """The LM head over a few step tokens at a time, never the [B, T, V] logits: the same d_k."""
    cfg = StudentConfig(model=kind, tiny={"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
                        tokenizer={"vocab_size": 150})
    st = load_student(cfg, [TEMPLATE.serialize(r).text for r in records], seed=0)
    head = st.model.get_output_embeddings()
    widths = []
    hook = head.register_forward_hook(lambda m, i, o: widths.append(o.shape[-1]))
    try:
        full = compute_difficulties(st.model, st.tokenizer, st.is_encoder_decoder, records, TEMPLATE, _halves(records),
                                    batch_size=5, packing=packing)
        assert widths and set(widths) == {head.out_features}  # the full pass projects to the vocabulary
        widths.clear()
        chunked = compute_difficulties(st.model, st.tokenizer, st.is_encoder_decoder, records, TEMPLATE,
                                       _halves(records), batch_size=5, packing=packing, chunk_tokens=7)
    finally:
        hook.remove()
    # the head returned its input (hidden size): its weight was applied a chunk of step tokens at a time
    assert widths and set(widths) == {head.in_features}
    assert list(chunked) == list(full)
    for sid, d in full.items():
        np.testing.assert_allclose(chunked[sid], d, rtol=1e-5, atol=1e-6)


def test_step_targets_keep_only_the_tokens_eq8_reads():
    from kpod.data.tokenize import IGNORE_INDEX
    from kpod.difficulty import step_targets

    # anchors: prompt (0, 3), step one (10, 14), between steps (19), step two (20), answer (40), special (-1)
    got = step_targets([5, 6, 7, 8, 9, 10, 11, 12], [0, 3, 10, 14, 19, 20, 40, -1], ((10, 19), (20, 30)))
    assert got == [IGNORE_INDEX, IGNORE_INDEX, 7, 8, IGNORE_INDEX, 10, IGNORE_INDEX, IGNORE_INDEX]
