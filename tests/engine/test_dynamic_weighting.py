"""A dynamic weighting strategy in the training engine: packed micro-batches give the padded ones'
per-token weights and gradients, the chunked loss the full-logits one's, and a run resumed inside
an epoch continues bitwise (same machine, same process type).

Tolerances as tests/engine/test_fast_paths.py: fp32; packed vs padded per-token NLL and weights
atol 1e-5, gradients rtol 1e-4 / atol 1e-6 (the attention kernels sum in another order); chunked
vs full gradients rtol 1e-4 / atol 1e-6.
"""

from __future__ import annotations

import json

import pytest
import torch

from kpod.data.packing import unpack_targets
from kpod.losses.dynamic import DynamicWeights
from kpod.weighting.dynamic import Dft, Entropy
from tests.helpers import crash_after, make_trainer, tiny_recipe, train_events

SIGNALS = {"dft": Dft, "entropy": Entropy}


def _dynamic_trainer(tmp_path, signal, policy, **train):
    recipe = tiny_recipe(loss={"name": "kpod"}, weighting={"name": signal, "select": {"policy": policy, "k": 0.5}},
                         train={"grad_clip": None, **train})
    trainer, records = make_trainer(recipe, tmp_path)
    trainer.loss_fn.use_dynamic(DynamicWeights(SIGNALS[signal](), policy, 0.5))
    if policy == "top_k":
        # an untrained tiny model predicts ≈ uniformly: every token's signal ties up to float
        # rounding, and two exact-to-rounding layouts may keep different tokens. A sharper head
        # spreads the signal, so the kept set is the same whenever the layouts agree to rounding.
        with torch.no_grad():
            head = trainer.acc.unwrap_model(trainer.model).get_output_embeddings()
            head.weight.mul_(30.0)
    return trainer, records


def _window_grads(trainer, given):
    got = []
    trainer.optimizer.step = lambda *a, **k: got.extend(p.grad.detach().clone() for p in trainer.model.parameters())
    _, _, window = next(trainer.windows())
    stats = trainer._window([trainer._batch(ids, given, window) for ids in window])
    return got, stats


@pytest.mark.parametrize(("signal", "policy"), [("dft", "weight"), ("entropy", "weight"), ("dft", "top_k")])
def test_packed_equals_padded_for_a_dynamic_strategy(tmp_path, signal, policy):
    tp, records = _dynamic_trainer(tmp_path, signal, policy, packing=True, batch_size=12)
    td, _ = _dynamic_trainer(tmp_path, signal, policy, packing=False, batch_size=12)
    assert tp.packing and not td.packing
    sids = [r.sample_id for r in records[:11]]
    given = {sid: i % 3 for i, sid in enumerate(sids)}
    padded, packed = td.collator(sids, given), tp.collator.packed(sids, given, rows_of=2)
    assert packed["input_ids"].shape[0] < len(sids)
    with torch.no_grad():
        a, b = td._token_loss(padded), tp._token_loss(packed)
    width = padded["labels"].shape[1]
    torch.testing.assert_close(unpack_targets(b.nll, packed, width), a.nll, rtol=0, atol=1e-5)
    torch.testing.assert_close(unpack_targets(b.weight, packed, width), a.weight, rtol=0, atol=1e-5)
    rat = a.mask & ~a.is_answer
    assert 0 < float(a.weight[rat].mean()) < 1  # a real signal, not all ones
    torch.testing.assert_close(tp.loss_fn.window_weights(packed, False).sum(), td.loss_fn.window_weights(padded, False).sum())
    # one training window through each layout: same gradients, loss and weight mean
    tp.pack_rows_of = 2
    plan_given = {r.sample_id: i % 2 for i, r in enumerate(records)}
    (gp, sp), (gd, sd) = _window_grads(tp, plan_given), _window_grads(td, plan_given)
    assert len(gp) == len(gd) > 0
    for x, y in zip(gp, gd):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)
    assert sp["loss"] == pytest.approx(sd["loss"], rel=1e-5)
    assert sp["weight_mean"] == pytest.approx(sd["weight_mean"], rel=1e-5)


@pytest.mark.parametrize(("signal", "policy"), [("dft", "weight"), ("entropy", "top_k")])
def test_chunked_equals_full_logits_for_a_dynamic_strategy(tmp_path, signal, policy):
    tc, records = _dynamic_trainer(tmp_path, signal, policy, loss_chunk_tokens=7, packing=False)
    tf, _ = _dynamic_trainer(tmp_path, signal, policy, loss_chunk_tokens=0, packing=False)
    assert tc.loss_chunk == 7 and not tf.loss_chunk
    given = {r.sample_id: i % 2 for i, r in enumerate(records)}
    (gc, sc), (gf, sf) = _window_grads(tc, given), _window_grads(tf, given)
    for x, y in zip(gc, gf):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)
    assert sc["loss"] == pytest.approx(sf["loss"], rel=1e-5)
    assert sc["weight_mean"] == pytest.approx(sf["weight_mean"], rel=1e-5)


def test_resume_inside_an_epoch_is_bitwise_with_a_dynamic_strategy(tmp_path):
    from kpod.engine.run import run_recipe

    recipe = tiny_recipe(loss={"name": "kpod"}, weighting={"name": "entropy", "select": {"policy": "top_k", "k": 0.5}},
                         train={"epochs": 2, "checkpoint_every": 4, "keep_checkpoints": 5})
    full = tmp_path / "full"
    summary = run_recipe(recipe, full, quiet=True)
    assert summary["weighting"]["dynamic"] is True and summary["weighting"]["select"]["policy"] == "top_k"
    events = train_events(full)
    assert len(events) == 12  # 96 samples / 16 = 6 steps per epoch: step 4 is inside epoch 1
    # the mask really applies: about half the rationale targets weigh 1, the rest 0
    assert all(0.45 < e["weight_mean"] < 0.65 for e in events)
    crash_after(full, tmp_path / "resumed", "step-0000004")
    run_recipe(recipe, tmp_path / "resumed", resume=True, quiet=True)
    resumed = train_events(tmp_path / "resumed")

    def values(evts):
        return [{k: e[k] for k in ("step", "loss", "weight_mean", "grad_norm")} for e in evts]

    assert values(resumed) == values(events)[4:]
    from safetensors.torch import load_file  # the saved final models, tensor by tensor

    fa = load_file(str(next((full / "model").glob("*.safetensors"))))
    fb = load_file(str(next((tmp_path / "resumed" / "model").glob("*.safetensors"))))
    assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)
    assert json.loads((full / "summary.json").read_text())["weighting"]["signal"] == "entropy"
