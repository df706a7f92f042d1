"""Run under torchrun (or plainly): one epoch of windows with the optimizer step replaced by a
recorder; rank 0 saves every window's loss and gradients. Used by tests/distributed/test_distributed.py."""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from kpod import registry
from kpod.data.collate import StageCollator
from kpod.data.load import load_data, template_from
from kpod.engine.train import Trainer
from kpod.models.student import load_student
from kpod.recipe import build_component
from kpod.runs import MetricsWriter
from kpod.schedulers.base import CurriculumPlan
from tests.helpers import tiny_recipe


def main(out: Path, grad_accum: int, dynamic: str = "") -> None:
    """``dynamic``: "" (static weights), ``signal:policy`` (a dynamic strategy, e.g. dft:weight), or
    ``kd={json params}`` (the kd loss with those params, keypoint-weighted)."""
    torch.set_num_threads(1)
    loss = {"name": "kpod"}
    if dynamic.startswith("kd="):
        loss = {"name": "kd", "params": {**json.loads(dynamic[3:]), "weights": "weighted"}}
        dynamic = ""
    recipe = tiny_recipe(loss=loss, train={"batch_size": 20, "grad_accum": grad_accum, "grad_clip": None})
    train = load_data(recipe)["train"]
    weights = {r.sample_id: [(0, len(r.rationale) // 2, 0.1 if i % 3 == 0 else 0.9)] for i, r in enumerate(train)}
    template = template_from(recipe)
    student = load_student(recipe.student, [template.serialize(r).text for r in train], seed=0)
    acc = Accelerator(cpu=True)
    loss_fn = build_component(registry.LOSSES, recipe.loss)
    loss_fn.bind(student, acc.device)
    trainer = Trainer(
        model=student.model, is_encoder_decoder=False,
        collator=StageCollator(train, template, student.tokenizer, False, weights),
        loss_fn=loss_fn, plan=CurriculumPlan(),
        train_ids=[r.sample_id for r in train], cfg=recipe.train, seed=0, run_dir=out.parent,
        accelerator=acc, metrics=MetricsWriter(out.parent / "m.jsonl", enabled=False),
    )
    if dynamic:
        from kpod.losses.dynamic import DynamicWeights

        signal, policy = dynamic.split(":")
        trainer.loss_fn.use_dynamic(DynamicWeights(registry.WEIGHTING.get(signal)(), policy, 0.5))
    windows = []
    seen: list[str] = []
    grads: list[torch.Tensor] = []
    params = list(trainer.model.parameters())
    trainer.optimizer.step = lambda *a, **k: grads.extend(p.grad.detach().clone() for p in params)
    for _epoch, _m, window in trainer.windows():
        if _epoch > 1:
            break
        batches = [trainer._batch(ids, None, window) for ids in window]
        seen += [s for b in batches if not b.get("padding") for s in b["sample_ids"]]
        grads.clear()
        stats = trainer._window(batches)
        windows.append({"loss": stats["loss"], "grads": list(grads)})
    from accelerate.utils import gather_object

    all_seen = gather_object(seen)
    if acc.is_main_process:
        torch.save({"windows": windows, "seen": all_seen, "world": acc.num_processes}, out)
    del trainer  # the DDP reducer holds the process group: free it before the group is destroyed
    acc.free_memory()
    gc.collect()
    acc.wait_for_everyone()  # no rank leaves while another still talks to it (gloo aborts then)
    if acc.num_processes > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "")
