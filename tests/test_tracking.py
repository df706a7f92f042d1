"""Experiment trackers: TensorBoard event files read back with TensorBoard's own reader; wandb
offline run directories; the recipe's `track` section."""

from __future__ import annotations

import json
import os

import pytest

from kpod.engine.run import run_recipe
from kpod.recipe import RecipeError
from kpod.tracking import curriculum_stats, flatten_config
from tests.helpers import tiny_recipe, train_events

TRACKED = {
    "train": {"epochs": 2},
    "scheduler": {"name": "linear", "params": {"T": 2}},
    "eval": {"splits": ["validation", "test"]},
    "track": {"backends": ["tensorboard"], "project": "proj", "run_name": "r1"},
}


def _scalars(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_event_files_hold_the_logged_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    summary = run_recipe(tiny_recipe(**TRACKED), run, quiet=True)
    logdir = run / "tracking" / "tensorboard" / "proj" / "r1"
    assert list(logdir.glob("events.out.tfevents.*")), "no TensorBoard event file"
    scalars = _scalars(logdir)
    # every training event of metrics.jsonl (the source of truth) is in TensorBoard, same step, same value
    events = train_events(run)
    assert [s for s, _ in scalars["train/loss"]] == [e["step"] for e in events]
    for (_, v), e in zip(scalars["train/loss"], events):
        assert v == pytest.approx(e["loss"], rel=1e-6)
    for key in ("train/lr", "train/tokens_per_s", "train/ce_rationale", "train/ce_answer"):
        assert len(scalars[key]) == len(events), key
    # every evaluation event (final ones, and those during training when the run selects a model)
    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for split in ("validation", "test"):
        expected = [(e["step"], pytest.approx(e["accuracy"])) for e in evals if e.get("phase") == "eval" and e["split"] == split]
        assert expected and scalars[f"eval/{split}/accuracy"] == expected
        assert scalars[f"final/{split}/accuracy"] == [(summary["train"]["steps"], pytest.approx(summary["splits"][split]["accuracy"]))]
    # the per-stage curriculum statistics
    stages = scalars["curriculum/mean_given_steps"]
    assert len(stages) == 2 and stages[0][0] == events[0]["step"]
    plan = json.loads((run / "plan.json").read_text())
    assert [v for _, v in stages] == pytest.approx([s["mean_given_steps"] for s in curriculum_stats(plan)])
    # the resolved recipe as the run config (hparams.yml beside the hparams event file)
    hparams = list(logdir.rglob("hparams.yml"))
    assert hparams and "train.lr" in hparams[0].read_text()


def test_tracker_receives_in_training_eval_events_through_the_metrics_writer(tmp_path):
    """The engine's evaluation events (also those written during training, by model selection) reach the
    tracker by being written to metrics.jsonl; log_eval is the entry point they use."""
    pytest.importorskip("tensorboard")
    from kpod.runs import MetricsWriter
    from kpod.tracking import RunTracker

    cfg = tiny_recipe(track={"backends": ["tensorboard"], "run_name": "x"}).track
    tracker = RunTracker(cfg, tmp_path, {"a": {"b": 1}})
    writer = MetricsWriter(tmp_path / "metrics.jsonl", listener=tracker)
    for step, acc in ((5, 0.25), (10, 0.5)):
        writer.write(phase="eval", split="validation", step=step, accuracy=acc, count=8, correct=int(8 * acc),
                     during_training=True)
    tracker.finish()
    scalars = _scalars(tmp_path / "tracking" / "tensorboard" / "kpod" / "x")
    assert scalars["eval/validation/accuracy"] == [(5, 0.25), (10, 0.5)]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


def test_wandb_offline_writes_its_run_directory(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from kpod.tracking import RunTracker

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny_recipe(track={"backends": ["wandb"], "project": "p", "run_name": "w1", "group": "sweep",
                             "tags": ["variant-a"]}).track
    tracker = RunTracker(cfg, tmp_path, {"train": {"lr": 0.01}})
    tracker.on_event({"phase": "train", "step": 1, "epoch": 1, "loss": 2.5, "lr": 0.01})
    tracker.log_eval("test", 1, {"accuracy": 0.5, "count": 4, "correct": 2})
    tracker.finish()
    runs = list((tmp_path / "tracking" / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, os.listdir(tmp_path / "tracking" / "wandb")
    assert list(runs[0].glob("*.wandb")), "no wandb log file in the offline run"


def test_track_section_is_validated_and_optional():
    assert tiny_recipe().track is None
    with pytest.raises(RecipeError, match="track.backends"):
        tiny_recipe(track={"backends": ["mlflow_typo"]})
    with pytest.raises(RecipeError, match="track.backends"):
        tiny_recipe(track={"backends": []})
    with pytest.raises(RecipeError, match="track.projekt"):
        tiny_recipe(track={"projekt": "x"})


def test_flatten_config_gives_scalars_only():
    flat = flatten_config({"a": {"b": 1, "c": [1, 2], "d": None}, "e": "x"})
    assert flat == {"a.b": 1, "a.c": "[1, 2]", "a.d": "None", "e": "x"}


def test_ablate_groups_a_sweeps_runs_in_the_tracker(tmp_path):
    import yaml

    from kpod.ablate import expand, plan_runs
    from kpod.recipe import load_recipe
    from tests.helpers import TINY, deep_update

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(deep_update(TINY, {"track": {"backends": ["tensorboard"], "tags": ["mine"]}})))
    specs = plan_runs(expand(path, ["scheduler=none,linear"]), [0, 1], tmp_path / "sweep1")
    recipes = [load_recipe(s.variant.recipe, s.overrides) for s in specs]
    assert {r.track.group for r in recipes} == {"sweep1"}
    assert [r.track.tags for r in recipes] == [["mine", "scheduler=none"]] * 2 + [["mine", "scheduler=linear"]] * 2
    assert [r.track.run_name for r in recipes] == ["scheduler-none/seed0", "scheduler-none/seed1",
                                                   "scheduler-linear/seed0", "scheduler-linear/seed1"]
    # recipes without `track:` are left alone
    plain = tmp_path / "p.yaml"
    plain.write_text(yaml.safe_dump(TINY))
    assert all(s.track == [] for s in plan_runs(expand(plain, ["scheduler=none"]), [0], tmp_path / "s2"))


def test_resolved_recipe_without_track_is_unchanged_and_round_trips(tmp_path):
    """No `track:` → no `track` key in recipe.resolved.yaml, so runs and sweeps from before the
    section existed still resume and are still skipped as finished."""
    from kpod.recipe import dump_recipe, load_recipe

    assert "track" not in dump_recipe(tiny_recipe())
    tracked = tiny_recipe(track={"backends": ["tensorboard"], "group": "g"})
    path = tmp_path / "r.yaml"
    path.write_text(dump_recipe(tracked))
    assert load_recipe(path).track == tracked.track
