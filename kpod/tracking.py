"""Experiment trackers (TensorBoard, Weights & Biases) through accelerate's tracker API.

``metrics.jsonl`` stays the source of truth: :class:`RunTracker` is a listener of
:class:`kpod.runs.MetricsWriter` and receives a copy of every event written there, so whatever
the engine logs (training loss components, LR, tokens/s, evaluations, also those written during
training) reaches the trackers without the engine knowing they exist. On top of that it logs the
resolved recipe as the run config, the curriculum statistics of each stage (at the first step of
that stage) and the final accuracy per split.

Tracker names map to accelerate's ``GeneralTracker`` classes (``accelerate.tracking``); the
trackers are created on the main process only. Scalar names:

=============================  ===============================================================
``train/<key>``                every numeric field of a ``phase: train`` event, at its step
``eval/<split>/<key>``         accuracy, correct, count of each evaluation, at its step
``curriculum/<key>``           per stage: mean given steps c, questions with the full rationale,
                               target D(t) and achieved H(t) (knapsack schedulers), at the stage's
                               first training step
``weighting/<key>``            mask-learning fit curves (TensorBoard only: their steps restart
                               at 1 before training, which wandb's one step axis would drop)
``final/<split>/accuracy``     the run's final accuracy per split, at the last step
=============================  ===============================================================
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

BACKENDS = {"tensorboard": "tensorboard", "wandb": "wandb"}  # recipe name -> pip extra
_EVAL_KEYS = ("accuracy", "correct", "count")


class TrackerError(ValueError):
    """A tracker cannot be started as the recipe asks (names the recipe field)."""


def flatten_config(obj: Any, prefix: str = "") -> dict[str, bool | int | float | str]:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}``; lists and ``None`` as strings
    (TensorBoard's hparams accept only scalars)."""
    out: dict[str, bool | int | float | str] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten_config(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, (bool, int, float, str)):
        out[prefix] = obj
    else:
        out[prefix] = str(obj)
    return out


def _numeric(event: dict[str, Any], skip: tuple[str, ...]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in event.items()
        if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def curriculum_stats(plan: dict[str, Any]) -> list[dict[str, float]]:
    """Per stage (epoch) of a plan.json: mean c, questions with c = 0 (full rationale as target),
    and the knapsack's target D(t) / achieved H(t) when the scheduler reports them. A record in
    ``given_all`` counts at its step count (the collator gives it every step)."""
    stages = plan.get("stages") or []
    over = plan.get("given_all") or {}
    info = plan.get("info") or {}
    knap = info.get("stages") or (info.get("kpod") or {}).get("stages") or []
    by_epoch = {s["epoch"]: s for s in knap if s.get("epoch") is not None}
    out = []
    for t, stage in enumerate(stages):
        cs = [over.get(sid, c) for sid, c in stage.items()]
        row: dict[str, float] = {
            "stage": float(t),
            "mean_given_steps": sum(cs) / len(cs) if cs else 0.0,
            "questions_full_rationale": float(sum(1 for c in cs if c == 0)),
        }
        k = by_epoch.get(t + 1)
        if k is not None:
            row["target_D"], row["achieved_H"] = float(k["target_D"]), float(k["achieved_H"])
            row["selected"] = float(k.get("selected", 0))
        out.append(row)
    return out


class RunTracker:
    """The trackers of one run. Call :meth:`on_event` for every metrics event (``MetricsWriter``
    does it when given this object as ``listener``), :meth:`finish` at the end."""

    def __init__(self, cfg: Any, run_dir: Path, config: dict[str, Any], recipe_text: str | None = None) -> None:
        try:
            from accelerate.tracking import LOGGER_TYPE_TO_CLASS
        except ImportError as e:  # accelerate is a core dependency; this is an install problem
            raise TrackerError(f"track: accelerate's tracking module is unavailable ({e})") from None
        self.cfg = cfg
        self.run_name = cfg.run_name or Path(run_dir).resolve().name
        self.dir = Path(cfg.dir) if cfg.dir else Path(run_dir) / "tracking"
        self.trackers: list[Any] = []
        self._epoch: int | None = None
        self._curriculum: list[dict[str, float]] = []
        self._last_step = 0
        for i, name in enumerate(cfg.backends):
            _check_installed(name, i)
            cls = LOGGER_TYPE_TO_CLASS[name]
            if name == "tensorboard":
                # accelerate joins logging_dir / run_name: project/run_name keeps runs of a project apart
                tracker = cls(f"{cfg.project}/{self.run_name}", str(self.dir / "tensorboard"))
            else:  # wandb: WANDB_MODE=offline works without network (files under dir/wandb)
                (self.dir / "wandb").mkdir(parents=True, exist_ok=True)
                tracker = cls(cfg.project, name=self.run_name, group=cfg.group, tags=list(cfg.tags) or None,
                              dir=str(self.dir / "wandb"))
            tracker.start()
            tracker.store_init_configuration(flatten_config(config))
            self.trackers.append(tracker)
        import atexit

        atexit.register(self.finish)  # a run that fails still flushes what was logged
        if recipe_text is not None:
            for t in self.trackers:
                if t.name == "tensorboard":  # the resolved recipe, readable in TensorBoard's text tab
                    t.writer.add_text("recipe", "```yaml\n" + recipe_text + "\n```", 0)

    # ------------------------------------------------------------------ logging
    def _log(self, values: dict[str, float], step: int, *, tensorboard_only: bool = False) -> None:
        if not values:
            return
        for t in self.trackers:
            if tensorboard_only and t.name != "tensorboard":
                continue
            t.log(values, step=step)

    def set_curriculum(self, plan: dict[str, Any]) -> None:
        """The plan (plan.json's content); each stage's statistics are logged when its first
        training step arrives, so every tracker sees increasing steps."""
        self._curriculum = curriculum_stats(plan)

    def on_event(self, event: dict[str, Any]) -> None:
        """One metrics.jsonl event (the ``MetricsWriter`` listener)."""
        phase, step = event.get("phase"), event.get("step")
        if not isinstance(step, int):
            return
        if phase == "train":
            epoch = event.get("epoch")
            if isinstance(epoch, int) and epoch != self._epoch:
                self._epoch = epoch
                if 0 < epoch <= len(self._curriculum):
                    stats = self._curriculum[epoch - 1]
                    self._log({f"curriculum/{k}": v for k, v in stats.items()}, step)
            self._log({f"train/{k}": v for k, v in _numeric(event, ("step", "epoch", "time")).items()}, step)
            self._last_step = max(self._last_step, step)
        elif phase == "eval" and isinstance(event.get("split"), str):
            self.log_eval(event["split"], step, event)
        elif isinstance(phase, str) and phase.startswith("weighting"):
            vals = _numeric(event, ("step", "time"))
            self._log({f"{phase}/{k}": v for k, v in vals.items()}, step, tensorboard_only=True)

    def log_eval(self, split: str, step: int, metrics: dict[str, Any]) -> None:
        """An evaluation on ``split`` at training step ``step`` (accuracy, correct, count).
        Events written to metrics.jsonl with ``phase: eval`` arrive here on their own."""
        self._log({f"eval/{split}/{k}": float(metrics[k]) for k in _EVAL_KEYS if k in metrics}, step)
        self._last_step = max(self._last_step, step)

    def log_final(self, splits: dict[str, dict[str, Any]], step: int | None = None) -> None:
        """The run's final accuracy per split (summary.json's ``splits``)."""
        at = self._last_step if step is None else step
        self._log({f"final/{s}/accuracy": float(r["accuracy"]) for s, r in splits.items()}, at)

    def finish(self) -> None:
        for t in self.trackers:
            t.finish()
        self.trackers = []


def _check_installed(name: str, index: int) -> None:
    import importlib.util

    module = {"tensorboard": "tensorboard", "wandb": "wandb"}[name]
    if importlib.util.find_spec(module) is None:
        raise TrackerError(
            f"track.backends[{index}]: {name!r} needs the {module} package: pip install 'kpod[{BACKENDS[name]}]'"
        )


def start_tracking(recipe: Any, run_dir: Path, resolved_text: str) -> RunTracker | None:
    """The recipe's trackers, or None without a ``track`` section. Main process only."""
    if getattr(recipe, "track", None) is None:
        return None
    return RunTracker(recipe.track, run_dir, recipe.model_dump(mode="json"), resolved_text)
