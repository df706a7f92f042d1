"""Training fast paths are exact: the chunked loss equals the full-logits loss (values and
gradients), and packed micro-batches give the padded ones' per-token losses, weights, sample_ids
and gradients — across stage boundaries (given steps) and under accumulation.

Tolerances: chunked vs full, fp32: rtol 1e-5 / atol 1e-5 on values, 1e-6 on gradients;
packed vs padded through a tiny Llama, fp32: per-token NLL atol 1e-5, gradients rtol 1e-4 /
atol 1e-6 (the attention kernels sum in a different order; nothing else differs).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kpod.data.load import load_data
from kpod.data.packing import pack_rows, unpack_targets
from kpod.data.tokenize import IGNORE_INDEX
from kpod.engine.fastpath import (
    FastPathError,
    resolve_difficulty_chunk,
    resolve_loss_chunk,
    resolve_packing,
)
from kpod.losses import per_token_nll
from kpod.losses.chunked import head_returns_hidden, linear_token_nll
from kpod.losses.token_ce import KpodLoss
from tests.helpers import first_step_grads as _first_step_grads
from tests.helpers import make_trainer as _trainer
from tests.helpers import tiny_recipe


def _toy(seed, b=3, t=9, h=6, v=23, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, h, generator=g, dtype=dtype)
    weight = torch.randn(v, h, generator=g, dtype=dtype)
    bias = torch.randn(v, generator=g, dtype=dtype)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[torch.rand(b, t, generator=g) < 0.4] = IGNORE_INDEX
    labels[0, -1] = 1
    return hidden, weight, bias, labels


@pytest.mark.parametrize("ed", [False, True])
@pytest.mark.parametrize("chunk", [1, 4, 1000])
@pytest.mark.parametrize("use_bias", [False, True])
def test_chunked_nll_and_gradients_equal_full_logits(ed, chunk, use_bias):
    for dtype, tol in ((torch.float32, 1e-5),):  # per_token_nll is fp32 whatever the logits' dtype
        hidden, weight, bias, labels = _toy(chunk + 7 * ed, dtype=dtype)
        bias = bias if use_bias else None
        up = torch.rand(labels.shape[0], labels.shape[1] - (0 if ed else 1), dtype=dtype)  # upstream weights
        leaves = [x.clone().requires_grad_() for x in (hidden, weight)] + ([bias.clone().requires_grad_()] if use_bias else [])
        full, mask, _ = per_token_nll(F.linear(leaves[0], leaves[1], leaves[2] if use_bias else None), labels, ed)
        (full * up).sum().backward()
        want = [x.grad for x in leaves]
        leaves2 = [x.detach().clone().requires_grad_() for x in leaves]
        got, mask2, _ = linear_token_nll(leaves2[0], leaves2[1], leaves2[2] if use_bias else None, labels, ed, chunk)
        (got * up).sum().backward()
        assert got.dtype == torch.float32 and torch.equal(mask, mask2)
        torch.testing.assert_close(got, full.float(), rtol=tol, atol=tol)
        assert torch.all(got[~mask] == 0)
        for a, b in zip(want, [x.grad for x in leaves2]):
            torch.testing.assert_close(b, a, rtol=tol, atol=tol * 0.1)


def test_chunked_nll_under_bf16_autocast_matches_the_autocast_head():
    hidden, weight, _, labels = _toy(3, t=12, h=16, v=50)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full, _, _ = per_token_nll(F.linear(hidden, weight), labels, False)
        got, _, _ = linear_token_nll(hidden, weight, None, labels, False, 5)
    torch.testing.assert_close(got, full, rtol=0, atol=1e-5)  # same bf16 logits, same fp32 log-softmax


def test_head_returns_hidden_and_is_restored(tmp_path):
    trainer, _ = _trainer(tiny_recipe(), tmp_path)
    model = trainer.acc.unwrap_model(trainer.model)
    ids = torch.tensor([[1, 5, 7, 9]])
    with head_returns_hidden(model) as head:
        hidden = model(input_ids=ids).logits
    assert hidden.shape[-1] == model.config.hidden_size
    torch.testing.assert_close(head(hidden), model(input_ids=ids).logits)  # the real head again


@pytest.mark.parametrize("model", ["tiny:llama", "tiny:t5"])
def test_chunked_loss_trainer_step_equals_full_logits(model, tmp_path):
    """The engine's first accumulated step: same loss statistics and gradients with either loss."""
    patch = dict(student={"model": model}, loss={"name": "kpod"},
                 train={"batch_size": 8, "grad_accum": 2, "grad_clip": None, "packing": False})
    recipe_full = tiny_recipe(**{**patch, "train": {**patch["train"], "loss_chunk_tokens": 0}})
    recipe_chunk = tiny_recipe(**{**patch, "train": {**patch["train"], "loss_chunk_tokens": 7}})
    records = load_data(recipe_full)["train"]
    weights = {r.sample_id: [(0, len(r.rationale) // 2, 0.2 if i % 2 else 0.8)] for i, r in enumerate(records)}
    tf, _ = _trainer(recipe_full, tmp_path, weights)
    tc, _ = _trainer(recipe_chunk, tmp_path, weights)
    assert tf.loss_chunk == 0 and tc.loss_chunk == 7
    gf, gc = _first_step_grads(tf), _first_step_grads(tc)
    assert len(gf) == len(gc) > 0
    for a, b in zip(gf, gc):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_loss_chunk_auto_and_explicit_errors():
    class ComparesRows(KpodLoss):
        needs_full_logits = "this loss compares padded rows"

    lin = torch.nn.Linear(2, 3)
    model = type("M", (), {"get_output_embeddings": lambda self: lin})()
    assert resolve_loss_chunk("auto", model, KpodLoss(), fsdp=False)[0] == 256
    assert resolve_loss_chunk(0, model, KpodLoss(), fsdp=False)[0] == 0
    assert resolve_loss_chunk("auto", model, ComparesRows(), fsdp=False) == (0, "off (this loss compares padded rows)")
    assert resolve_loss_chunk("auto", model, KpodLoss(), fsdp=True)[0] == 0
    with pytest.raises(FastPathError, match="train.loss_chunk_tokens"):
        resolve_loss_chunk(256, model, KpodLoss(), fsdp=True)


def test_difficulty_chunk_follows_the_setting_and_the_head_only():
    lin = torch.nn.Linear(2, 3)
    model = type("M", (), {"get_output_embeddings": lambda self: lin})()
    assert resolve_difficulty_chunk("auto", model)[0] == 256
    assert resolve_difficulty_chunk(64, model)[0] == 64
    assert resolve_difficulty_chunk(0, model) == (0, "off (train.loss_chunk_tokens: 0)")
    other = type("M", (), {"get_output_embeddings": lambda self: torch.nn.Identity()})()
    n, why = resolve_difficulty_chunk("auto", other)
    assert n == 0 and "Identity" in why
    with pytest.raises(FastPathError, match="train.loss_chunk_tokens: 64"):
        resolve_difficulty_chunk(64, other)


# --- packing ---------------------------------------------------------------------------------
def test_pack_rows_first_fit_decreasing_never_overflows():
    lengths = [5, 9, 3, 7, 2, 9, 1]
    rows = pack_rows(lengths, 9)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 9 for r in rows)
    assert rows == [[1], [5], [3, 4], [0, 2, 6]]  # 9 | 9 | 7+2 | 5+3+1: the lower bound ceil(36/9) = 4
    with pytest.raises(ValueError, match="does not fit"):
        pack_rows([10], 9)


def _per_token(trainer, batch):
    with torch.no_grad():
        return trainer._token_loss(batch)


@pytest.mark.parametrize("chunk", [0, 5])
def test_packed_batch_gives_the_padded_per_token_losses_weights_and_ids(tmp_path, chunk):
    recipe = tiny_recipe(loss={"name": "kpod"}, train={"packing": True, "loss_chunk_tokens": chunk})
    trainer, records = _trainer(recipe, tmp_path)
    weights = {r.sample_id: [(0, len(r.rationale) // 3, 0.3), (len(r.rationale) // 3, len(r.rationale), 0.9)] for r in records}
    trainer, _ = _trainer(recipe, tmp_path, weights)
    assert trainer.packing, trainer.packing_reason
    sids = [r.sample_id for r in records[:11]]
    given = {sid: i % 3 for i, sid in enumerate(sids)}  # a stage boundary: 0, 1 or 2 steps given
    # rows of 2× the longest sequence, so that sequences really share rows (and their boundaries)
    padded, packed = trainer.collator(sids, given), trainer.collator.packed(sids, given, rows_of=2)
    assert packed["sample_ids"] == padded["sample_ids"] == sids
    assert packed["input_ids"].shape[0] < len(sids)  # really packed
    assert packed["input_ids"].numel() < padded["input_ids"].numel()
    a, b = _per_token(trainer, padded), _per_token(trainer, packed)
    width = padded["labels"].shape[1]
    for name in ("mask", "is_answer"):
        assert torch.equal(unpack_targets(getattr(b, name), packed, width), getattr(a, name))
    torch.testing.assert_close(unpack_targets(b.weight, packed, width), a.weight, rtol=0, atol=0)
    torch.testing.assert_close(unpack_targets(b.nll, packed, width), a.nll, rtol=0, atol=1e-5)
    # nothing outside the unpacked positions: the packed sums are the padded ones
    assert int(b.mask.sum()) == int(a.mask.sum())
    torch.testing.assert_close((b.weight * b.nll).sum(), (a.weight * a.nll).sum(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("accum", [1, 3])
def test_packed_training_step_gradients_equal_padded(tmp_path, accum):
    patch = {"batch_size": 12 // accum, "grad_accum": accum, "grad_clip": None}
    rp = tiny_recipe(loss={"name": "kpod"}, train={**patch, "packing": True})
    rd = tiny_recipe(loss={"name": "kpod"}, train={**patch, "packing": False})
    _, records = _trainer(rp, tmp_path)
    weights = {r.sample_id: [(0, len(r.rationale) // 2, 0.1 if i % 3 == 0 else 0.9)] for i, r in enumerate(records)}
    tp, _ = _trainer(rp, tmp_path, weights)
    td, _ = _trainer(rd, tmp_path, weights)
    assert tp.packing and not td.packing
    tp.pack_rows_of = 2  # sequences share rows
    plan_given = {r.sample_id: i % 2 for i, r in enumerate(records)}  # mid-curriculum targets
    grads = []
    for t in (tp, td):
        got = []
        t.optimizer.step = lambda *a, _g=got, _t=t, **k: _g.extend(p.grad.detach().clone() for p in _t.model.parameters())
        _, _, window = next(t.windows())
        batches = [t._batch(ids, plan_given, window) for ids in window]
        if t is tp:
            assert all(b["input_ids"].shape[0] < len(ids) for b, ids in zip(batches, window))
        stats = t._window(batches)
        grads.append((got, stats))
    (gp, sp), (gd, sd) = grads
    assert len(gp) == len(gd) > 0
    for a, b in zip(gp, gd):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert sp["tokens"] == sd["tokens"]
    assert sp["loss"] == pytest.approx(sd["loss"], rel=1e-5)
    assert sp["weight_mean"] == pytest.approx(sd["weight_mean"], rel=1e-6)


def test_packing_auto_is_off_for_seq2seq_and_explicit_true_errors(tmp_path):
    trainer, _ = _trainer(tiny_recipe(student={"model": "tiny:t5"}), tmp_path)
    assert not trainer.packing and "encoder-decoder" in trainer.packing_reason
    model = trainer.acc.unwrap_model(trainer.model)
    with pytest.raises(FastPathError, match="train.packing"):
        resolve_packing(True, model, True, 100, torch.device("cpu"))
    llama, _ = _trainer(tiny_recipe(), tmp_path)
    assert llama.packing and llama.packing_reason == "on"  # the default (auto) on a causal student


@pytest.mark.parametrize(("model", "setting", "want"), [
    ("tiny:llama", "auto", "on"),
    ("tiny:llama", False, "off (train.packing: false)"),
    ("tiny:t5", "auto", "off (encoder-decoder students are not packed"),
    ("tiny:t5", True, FastPathError),
])
def test_the_difficulty_pass_packs_as_training_does(tmp_path, monkeypatch, model, setting, want):
    """train.packing and the training's probe decide the difficulty pass too: auto falls back to
    padding for a seq2seq student, an explicit true is the training's error naming the field."""
    from kpod.engine.phases import Weights, measure_difficulty
    from kpod.engine.prepare import prepare
    from kpod.progress import Reporter

    monkeypatch.setenv("KPOD_CACHE", str(tmp_path))
    recipe = tiny_recipe(student={"model": model}, train={"packing": setting})
    setup = prepare(recipe, Reporter(quiet=True))
    if want is FastPathError:
        with pytest.raises(FastPathError, match=r"train\.packing: true"):
            measure_difficulty(recipe, setup, Weights(None), "cpu", Reporter(quiet=True))
        return
    got = measure_difficulty(recipe, setup, Weights(None), "cpu", Reporter(quiet=True))
    assert got.report["packing"].startswith(want)
    assert got.report["chunked_head"] == "256 rationale tokens per chunk"  # the tiny heads are plain linear layers
    assert set(got.per_step) == {r.sample_id for r in setup.train}


def test_packed_run_trains_and_resumes_like_itself(tmp_path):
    """A whole packed run: the loss falls and the summary says which fast paths ran."""
    from kpod.engine.run import run_recipe
    from tests.helpers import train_events

    summary = run_recipe(tiny_recipe(train={"epochs": 2}), tmp_path / "run", quiet=True)
    assert summary["train"]["packing"] == "on"
    assert summary["train"]["loss_chunk"].startswith("256")
    losses = [e["loss"] for e in train_events(tmp_path / "run")]
    assert sum(losses[-3:]) < sum(losses[:3])


def test_group_by_length_covers_the_epoch_once_with_less_padding(tmp_path):
    plain, records = _trainer(tiny_recipe(student={"model": "tiny:t5"}, train={"batch_size": 4}), tmp_path)
    grouped, _ = _trainer(tiny_recipe(student={"model": "tiny:t5"}, train={"batch_size": 4, "group_by_length": True}), tmp_path)
    for epoch in (1, 2):
        mbs = grouped._micro_batches(epoch)
        assert sorted(s for mb in mbs for s in mb) == sorted(r.sample_id for r in records)
        assert mbs == grouped._micro_batches(epoch)  # a pure function of (seed, epoch): resume-safe

    def spread(mbs):
        return sum(max(map(grouped.collator.length, mb)) - min(map(grouped.collator.length, mb)) for mb in mbs)

    assert spread(grouped._micro_batches(1)) < 0.5 * spread(plain._micro_batches(1))
    assert grouped._micro_batches(1) != grouped._micro_batches(2)
