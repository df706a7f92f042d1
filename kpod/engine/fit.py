"""The training phase of a run: stage-wise batches from the plan, the recipe's loss, model
selection on ``eval.select_on`` during training, and the trained (or selected) model saved to
``RUN_DIR/model``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kpod import registry
from kpod.data.collate import StageCollator
from kpod.data.records import Record
from kpod.engine.checkpointing import TrainState, selection_history
from kpod.engine.distributed import RunEnv
from kpod.engine.evaluate import Evaluator
from kpod.engine.phases import Plan, Weights
from kpod.engine.prepare import Setup
from kpod.engine.train import Trainer
from kpod.models.student import Student, apply_lora, save_student
from kpod.recipe import RecipeError, build_component
from kpod.recipe_types import Recipe
from kpod.runs import atomic_save_dir


@dataclass
class Trained:
    model: Any  # the unwrapped model: the selected step's weights when eval.select_on is set
    state: TrainState
    selection: dict[str, Any] | None  # split, step, score, every selection evaluation
    packing: str  # whether (and why not) batches were packed
    loss_chunk: str  # whether (and why not) the chunked loss ran

    @property
    def model_step(self) -> int | None:
        """The optimizer step of the weights in ``model`` (None: no step ran, the model as loaded)."""
        return self.selection["step"] if self.selection else self.state.global_step


def train_student(
    recipe: Recipe, setup: Setup, weights: Weights, plan: Plan, evaluator: Evaluator, env: RunEnv
) -> Trained:
    """Train on the plan's stages (resuming from the last checkpoint with ``env.resume``),
    load the selected step, save the model."""
    collator = StageCollator(setup.train, setup.template, setup.tokenizer, setup.student.is_encoder_decoder,
                             weights.weights, setup.max_length, encoded=setup.encoded)
    loss_fn = build_component(registry.LOSSES, recipe.loss)
    if weights.dynamic is not None:  # a dynamic strategy's signal, computed in the loss at every step
        try:
            loss_fn.use_dynamic(weights.dynamic)
        except ValueError as e:
            raise RecipeError(f"weighting.name: {recipe.weighting.name} is dynamic, but {e}") from None
    student = setup.student
    if recipe.student.lora is not None:  # after weights and difficulty: both read the student as initialised, without adapters
        student = with_lora(student, recipe, env.run_dir, env.procs)
    student.model.to(env.accelerator.device)
    loss_fn.bind(student, env.accelerator.device)
    trainer = Trainer(
        model=student.model,
        is_encoder_decoder=student.is_encoder_decoder,
        collator=collator,
        loss_fn=loss_fn,
        plan=plan.plan,
        scheduler=plan.scheduler,
        train_ids=[r.sample_id for r in setup.train],
        cfg=recipe.train,
        seed=recipe.seed,
        run_dir=env.run_dir,
        accelerator=env.accelerator,
        metrics=env.metrics,
    )
    selection_log: list[dict[str, Any]] = []
    if recipe.eval.select_on is not None:
        trainer.select = _selector(recipe, trainer, evaluator, setup.splits[recipe.eval.select_on], env, selection_log)
        trainer.select_every_steps = recipe.eval.select_every_steps
    _resume(trainer, env)
    env.reporter.info(f"packing {trainer.packing_reason}; chunked loss {trainer.loss_chunk_reason}")
    with env.reporter.task("train", total=trainer.total_steps, completed=trainer.state.global_step) as advance:
        trainer.on_step = lambda step, epoch, s: advance(1, f"epoch {epoch} loss {s['loss']:.3f}")
        state = trainer.train()
    selection = _load_selected(recipe, trainer, state, env, selection_log)
    model = env.accelerator.unwrap_model(trainer.model)
    full_state = env.accelerator.get_state_dict(trainer.model)  # gathers FSDP shards; every rank calls it
    if env.is_main:
        final = Student(model, student.tokenizer, student.is_encoder_decoder, student.source)
        # written aside and renamed: a full disk leaves no half model/ behind
        atomic_save_dir(env.run_dir / "model", lambda tmp: save_student(final, tmp, state_dict=full_state))
    return Trained(model, state, selection, trainer.packing_reason, trainer.loss_chunk_reason)


def _selector(
    recipe: Recipe, trainer: Trainer, evaluator: Evaluator, records: list[Record], env: RunEnv,
    log: list[dict[str, Any]],
) -> Callable[[int], float]:
    split = recipe.eval.select_on
    assert split is not None

    def select(step: int) -> float:
        """Accuracy on the selection split (every rank calls this; each generates its share)."""
        res, _ = evaluator.score(env.accelerator.unwrap_model(trainer.model), split, records,
                                 limit=recipe.eval.select_limit, progress=False)
        env.metrics.write(phase="eval", split=split, step=step, during_training=True, **res)
        log.append({"step": step, "accuracy": res["accuracy"]})
        return float(res["accuracy"])

    return select


def _resume(trainer: Trainer, env: RunEnv) -> None:
    ckpt = trainer.checkpoints.last() if env.resume else None
    if ckpt is not None:
        trainer.load_checkpoint(ckpt)
        env.reporter.info(f"resumed from {ckpt.name} (epoch {trainer.state.epoch}, step {trainer.state.global_step})")
    elif env.resume:
        env.reporter.info("--resume: no complete checkpoint yet; training starts from step 0")


def _load_selected(
    recipe: Recipe, trainer: Trainer, state: TrainState, env: RunEnv, log: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """With ``eval.select_on``: the best step's weights back into the model, and the selection record."""
    if recipe.eval.select_on is None:
        return None
    selected = trainer.load_selected()
    selection = {
        "split": recipe.eval.select_on, "metric": "accuracy", "step": selected,
        "score": state.best_score, "last_step": state.global_step,
        "evaluations": selection_history(env.run_dir / "metrics.jsonl", recipe.eval.select_on) or log,
    }
    if selected is None:  # no optimizer step ran (train.epochs: 0): the model as loaded
        env.reporter.info("no training step ran: nothing to select, the model as loaded is reported")
    else:
        env.reporter.info(f"selected step {selected} of {state.global_step} "
                          f"({recipe.eval.select_on} accuracy {state.best_score:.3f})")
    return selection


def with_lora(student: Student, recipe: Recipe, run_dir: Path, procs: Any) -> Student:
    """LoRA adapters on the student. A tiny student's random base is saved to ``RUN_DIR/base`` so
    the adapter in ``RUN_DIR/model`` can be reloaded (and merged) later."""
    base_dir = run_dir / "base"
    if recipe.student.model.startswith("tiny:") and procs.is_main_process:
        atomic_save_dir(base_dir, lambda tmp: save_student(student, tmp))
    wrapped = apply_lora(student, recipe.student.lora)
    if recipe.student.model.startswith("tiny:"):
        for cfg in wrapped.model.peft_config.values():
            cfg.base_model_name_or_path = str(base_dir.resolve())
    return wrapped
