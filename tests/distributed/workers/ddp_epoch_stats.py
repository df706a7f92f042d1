"""Run under torchrun (or plainly): the Trainer's epoch-end statistics for an adaptive scheduler
on 33 samples (2 ranks: shares of 17 and 16 in batches of 16, so rank 1 runs a filler pass);
rank 0 saves them. Used by tests/distributed/test_distributed_epoch_stats.py."""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path
from typing import Any, ClassVar

import torch
from accelerate import Accelerator

from kpod import registry
from kpod.data.collate import StageCollator
from kpod.data.load import load_data, template_from
from kpod.engine.train import Trainer
from kpod.models.student import load_student
from kpod.recipe import build_component
from kpod.runs import MetricsWriter
from kpod.schedulers.base import CurriculumPlan, EpochStats, SchedulerBase
from tests.helpers import tiny_recipe


class Measures(SchedulerBase):
    """An adaptive scheduler that only asks for both statistics."""

    name: ClassVar[str] = "measures"
    epoch_stats: ClassVar[frozenset[str]] = frozenset({"output_nll", "step_nll"})

    def plan(self, inputs: Any) -> CurriculumPlan:
        raise NotImplementedError

    def on_epoch_end(self, stats: EpochStats) -> dict[str, int]:
        return dict(stats.given)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def main(out: Path) -> None:
    torch.set_num_threads(1)
    recipe = tiny_recipe()
    train = load_data(recipe)["train"][:33]
    template = template_from(recipe)
    student = load_student(recipe.student, [template.serialize(r).text for r in train], seed=0)
    acc = Accelerator(cpu=True)
    plan = CurriculumPlan(stages=[{r.sample_id: i % r.n_steps for i, r in enumerate(train)}])
    trainer = Trainer(
        model=student.model, is_encoder_decoder=False,
        collator=StageCollator(train, template, student.tokenizer, False),
        loss_fn=build_component(registry.LOSSES, recipe.loss), plan=plan, scheduler=Measures(),
        train_ids=[r.sample_id for r in train], cfg=recipe.train, seed=0, run_dir=out.parent,
        accelerator=acc, metrics=MetricsWriter(out.parent / "m.jsonl", enabled=False),
    )
    trainer.model.train()
    stats = trainer.epoch_stats(1)
    if acc.is_main_process:
        out.write_text(json.dumps({"world": acc.num_processes, "given": stats.given, "output_nll": stats.output_nll,
                                   "step_nll": stats.step_nll, "training": trainer.model.training}))
    del trainer  # the DDP reducer holds the process group: free it before the group is destroyed
    acc.free_memory()
    gc.collect()
    acc.wait_for_everyone()
    if acc.num_processes > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
