"""``kpod ablate``: grid expansion, seeds, interval math, resume, failure isolation, outputs."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import yaml
from scipy import stats
from typer.testing import CliRunner

from kpod.ablate import (
    BASELINES_PRESET,
    KEYPOINTS_PRESET,
    PAPER_PRESET,
    RunResult,
    RunSpec,
    Variant,
    aggregate,
    confidence_interval,
    execute,
    expand,
    parse_vary,
    plan_runs,
    relative_wall,
    training_steps,
    write_outputs,
)
from kpod.cli import app
from kpod.engine.run import run_recipe
from kpod.recipe import RecipeError, dump_recipe, load_recipe
from tests.helpers import TINY, deep_update

REPO = Path(__file__).resolve().parents[1]
QUICK = deep_update(TINY, {"train": {"epochs": 1, "max_steps": 2}, "eval": {"splits": ["test"], "limit": 4, "max_new_tokens": 8}})


def _recipe(tmp_path, raw=QUICK):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_grid_expansion_and_naming(tmp_path):
    path = _recipe(tmp_path)
    variants = expand(path, ["scheduler", "train.lr=1e-3,3e-3"])
    from kpod.registry import SCHEDULERS

    assert len(variants) == len(SCHEDULERS.names()) * 2
    names = [v.name for v in variants]
    assert "scheduler=none,train.lr=1e-3" in names and len(set(names)) == len(names)
    assert len({v.slug for v in variants}) == len(variants)
    v = next(v for v in variants if v.name == "scheduler=linear,train.lr=3e-3")
    assert v.overrides == ["scheduler.name=linear", "train.lr=3e-3"]
    assert load_recipe(path, v.overrides).train.lr == pytest.approx(3e-3)
    assert [v.name for v in expand(path, ["weighting=uniform,mask_learning"])] == ["weighting=uniform", "weighting=mask_learning"]
    assert [v.name for v in expand(path, [])] == ["base"]


def test_vary_errors_are_clear(tmp_path):
    with pytest.raises(RecipeError, match="did you mean 'kpod_knapsack'"):
        parse_vary("scheduler=kpod_knapsak")
    with pytest.raises(RecipeError, match="give values"):
        parse_vary("train.lr")
    path = _recipe(tmp_path)
    with pytest.raises(RecipeError, match="train.lrr"):
        plan_runs(expand(path, ["train.lrr=1,2"]), [0], tmp_path / "out")
    with pytest.raises(RecipeError, match="cannot be combined"):
        expand(path, ["loss"], preset="paper")


def test_paper_preset_finds_the_table2_recipes():
    variants = expand(REPO / "recipes" / "kpod_full.yaml", preset="paper")
    assert [v.name for v in variants] == ["kpod", "w.o.-sig", "w.o.-sig-dif", "w.o.-prog", "w.o.-div",
                                          "ACL", "SPL", "ICL", "std_cot", "answer_only"]
    base = load_recipe(variants[0].recipe)
    for v, name in zip(variants[5:8], ["acl", "spl", "icl"]):  # kpod_full with only the scheduler changed
        r = load_recipe(v.recipe)
        assert r.scheduler.name == name
        assert r.model_copy(update={"scheduler": base.scheduler, "name": base.name}) == base
    wo_div = load_recipe(variants[4].recipe)
    assert wo_div.scheduler.params.beta == 0.0 and wo_div.scheduler.name == "kpod_knapsack"
    assert load_recipe(variants[1].recipe).loss.params.weights == "uniform"
    assert load_recipe(variants[3].recipe).scheduler.name == "none"
    assert load_recipe(variants[2].recipe).difficulty.within_step == "mean"


def _without_name(recipe) -> str:
    return "\n".join(line for line in dump_recipe(recipe).splitlines() if not line.startswith("name:"))


@pytest.mark.parametrize("preset,table", [("paper", PAPER_PRESET), ("keypoints", KEYPOINTS_PRESET)])
def test_preset_overrides_give_the_shipped_ablation_recipes(preset, table):
    base = REPO / "recipes" / "kpod_full.yaml"
    variants = expand(base, preset=preset)
    assert [v.name for v in variants] == [pv.name for pv in table]
    assert all(not v.derive for v in variants)  # the files next to kpod_full.yaml are used, as before
    for pv in [pv for pv in table if pv.file is not None]:
        shipped = load_recipe(base.parent / pv.file)
        derived = load_recipe(base, list(pv.overrides))
        assert _without_name(derived) == _without_name(shipped), pv.name


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO / "recipes" / "paper").glob("[!_]*.yaml")))
def test_paper_preset_derives_every_variant_of_a_flat_paper_recipe(recipe, tmp_path):
    path = REPO / "recipes" / "paper" / recipe
    assert not (path.parent / "ablations").exists()
    variants = expand(path, preset="paper")
    assert [v.name for v in variants] == [pv.name for pv in PAPER_PRESET]
    assert all(v.recipe == path for v in variants) and [bool(v.derive) for v in variants] == [False] + [True] * 9
    specs = plan_runs(variants, [0], tmp_path)  # every variant validates (no training)
    got = {s.variant.name: load_recipe(path, s.overrides) for s in specs}
    base = got["kpod"]
    for name, sched in (("ACL", "acl"), ("SPL", "spl"), ("ICL", "icl"), ("w.o.-prog", "none")):
        r = got[name]
        assert r.scheduler.name == sched and (r.weighting, r.loss, r.train, r.data) == (base.weighting, base.loss,
                                                                                      base.train, base.data)
    assert got["w.o.-sig"].loss.params.weights == "uniform"
    assert got["w.o.-sig-dif"].difficulty.within_step == "mean"
    if base.scheduler.name == "kpod_knapsack":
        div = got["w.o.-div"].scheduler
        assert div.params.beta == 0.0 and div.params.model_copy(update={"beta": base.scheduler.params.beta}) == \
            base.scheduler.params
    std, ans = got["std_cot"], got["answer_only"]
    assert (std.weighting.name, std.scheduler.name, std.loss.name) == ("uniform", "none", "std_cot")
    assert std.data == base.data and std.student == base.student
    assert ans.data.template.use_rationale is False and ans.data.source == base.data.source


def test_a_sweeps_set_wins_over_a_derived_variants_overrides(tmp_path):
    path = REPO / "recipes" / "paper" / "svamp_flan_t5_large.yaml"
    specs = plan_runs(expand(path, preset="paper"), [0], tmp_path, extra=["eval.max_new_tokens=32"])
    answer_only = next(s for s in specs if s.variant.name == "answer_only")
    assert load_recipe(path, answer_only.overrides).eval.max_new_tokens == 32  # not the variant's 16


@pytest.mark.parametrize("values", [[61.0, 70.5, 66.2], [10.0, 12.0], [50.0, 50.0, 50.0, 50.0]])
def test_interval_matches_scipy(values):
    mean, sd, lo, hi = confidence_interval(values)
    exp_lo, exp_hi = stats.t.interval(0.95, len(values) - 1, loc=sum(values) / len(values), scale=stats.sem(values)) if sd else (mean, mean)
    assert lo == pytest.approx(exp_lo) and hi == pytest.approx(exp_hi)
    assert sd == pytest.approx(stats.tstd(values))
    assert confidence_interval([42.0]) == (42.0, 0.0, 42.0, 42.0)


def _in_process_runner(calls):
    """Runs the real engine in-process (no subprocess start-up), like `kpod run` would."""

    def run(spec: RunSpec):
        calls.append((spec.variant.name, spec.seed))
        recipe = load_recipe(spec.variant.recipe, [*spec.variant.overrides, f"seed={spec.seed}"])
        try:
            run_recipe(recipe, spec.run_dir, overwrite=True, quiet=True)
        except ValueError as e:
            return 1, str(e)
        return 0, ""

    return run


def test_seeds_resume_and_failure_isolation(tmp_path):
    path = _recipe(tmp_path)
    out = tmp_path / "abl"
    # max_length 8 cannot hold any example: that variant fails, the other must still run
    specs = plan_runs(expand(path, ["data.max_length=8,1024"]), [0, 1], out)
    calls: list = []
    results = execute(specs, _in_process_runner(calls), jobs=2)
    status = {(r.spec.variant.name, r.spec.seed): r.status for r in results}
    assert status == {("data.max_length=8", 0): "failed", ("data.max_length=8", 1): "failed",
                      ("data.max_length=1024", 0): "done", ("data.max_length=1024", 1): "done"}
    assert "max_length" in next(r.error for r in results if r.status == "failed")
    rows = aggregate(results)
    write_outputs(results, rows, out)
    table = (out / "table.md").read_text()
    assert "data.max_length=1024 | test | 2 |" in table and "Failed: data.max_length=8 seed 0" in table
    with open(out / "results.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == 4 and {r["seed"] for r in csv_rows} == {"0", "1"}
    ok = [r for r in csv_rows if r["status"] == "done"]
    assert all(0.0 <= float(r["splits.test.accuracy"]) <= 1.0 and float(r["wall_seconds.total"]) > 0 for r in ok)
    # rerun: finished runs are skipped, failed ones are tried again
    calls.clear()
    again = execute(plan_runs(expand(path, ["data.max_length=8,1024"]), [0, 1], out), _in_process_runner(calls), jobs=1)
    assert sorted(calls) == [("data.max_length=8", 0), ("data.max_length=8", 1)]
    assert sum(r.status == "skipped" for r in again) == 2
    # a changed recipe is not "finished": the run is redone
    calls.clear()
    execute(plan_runs(expand(path, ["data.max_length=1024"]), [0], out, ["train.lr=0.02"]), _in_process_runner(calls))
    assert calls == [("data.max_length=1024", 0)]


def test_cli_ablate_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _recipe(tmp_path)
    # the baselines' task losses (dsbs, scott) need their data.format, so the sweep names its losses
    res = CliRunner().invoke(app, ["ablate", str(path), "--vary", "loss=kpod,std_cot,mcc_kd", "--seeds", "1",
                                   "--jobs", "2", "--out", "abl"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "abl"
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert sorted(r["variant"] for r in rows) == ["loss=kpod", "loss=mcc_kd", "loss=std_cot"]
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((out / "loss-kpod" / "seed0" / "summary.json").read_text())
    assert summary["loss"] == "kpod" and summary["finished"] is True
    assert math.isfinite(summary["splits"]["test"]["accuracy"])
    shutil.rmtree(out / "loss-std_cot")  # a lost run is redone, the finished one is skipped
    res = CliRunner().invoke(app, ["ablate", str(path), "--vary", "loss=kpod,std_cot,mcc_kd", "--seeds", "1",
                                   "--out", "abl"])
    assert res.exit_code == 0, res.output
    assert "skipped loss=kpod seed 0" in " ".join(res.output.split())
    assert (out / "loss-std_cot" / "seed0" / "summary.json").exists()


def test_cli_ablate_reports_runs_without_a_test_split(tmp_path, monkeypatch):
    """A finished run with only a validation split (recipes/smollm2) once crashed the progress line."""
    monkeypatch.chdir(tmp_path)
    path = _recipe(tmp_path)
    res = CliRunner().invoke(app, ["ablate", str(path), "--vary", "loss=std_cot", "--seeds", "1", "--out", "abl",
                                   "--set", "eval.splits=[validation]"])
    assert res.exit_code == 0, res.output
    assert "done    loss=std_cot seed 0: validation" in res.output
    assert (tmp_path / "abl" / "results.csv").exists() and (tmp_path / "abl" / "table.md").exists()


def test_ray_executor_on_a_local_ray_instance(tmp_path):
    """Ray 2.60 removed `local_mode`; the test starts a local single-node Ray instance instead."""
    ray = pytest.importorskip("ray")
    from kpod.ablate import ray_runner

    path = _recipe(tmp_path)
    specs = plan_runs(expand(path, ["loss=kpod,std_cot"]), [0], tmp_path / "abl")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        results = execute(specs, ray_runner(threads=1), jobs=2)
    finally:
        ray.shutdown()
    assert [r.status for r in results] == ["done", "done"]
    assert {r.summary["loss"] for r in results} == {"kpod", "std_cot"}
    assert all((r.spec.run_dir / "predictions.jsonl").exists() for r in results)


def test_baselines_preset_expands_to_the_seven_table1_variants(tmp_path):
    base = _recipe(tmp_path)
    (tmp_path / "baselines").mkdir()
    for name in BASELINES_PRESET[:-1]:
        (tmp_path / "baselines" / f"{name}.yaml").write_text("extends: ../tiny.yaml\n")
    with pytest.raises(RecipeError, match=r"--preset baselines: .*baselines/scott.yaml not found"):
        expand(base, preset="baselines")
    (tmp_path / "baselines" / "scott.yaml").write_text("extends: ../tiny.yaml\n")
    variants = expand(base, preset="baselines")
    assert [v.name for v in variants] == ["std_cot", "answer_only", "dsbs", "mcc_kd", "scotd", "specialized_kd", "scott"]
    assert all(v.recipe == tmp_path / "baselines" / f"{v.name}.yaml" for v in variants)
    with pytest.raises(RecipeError, match="available: paper, baselines"):
        expand(base, preset="table1")
    for name in ("std_cot", "answer_only", "mcc_kd", "scotd"):  # the offline recipes this repo ships
        assert load_recipe(REPO / "recipes" / "baselines" / f"{name}.yaml").name


def test_kd_preset_runs_the_recipes_beside_the_base():
    variants = expand(REPO / "recipes" / "kd" / "std_cot.yaml", preset="kd")
    assert [v.name for v in variants] == ["std_cot", "kd_topk", "kd_keypoint", "gkd", "kpod_full"]
    losses = {v.name: load_recipe(v.recipe).loss for v in variants}
    assert losses["std_cot"].name == "std_cot" and losses["kpod_full"].name == "kpod"
    assert losses["kd_topk"].params.teacher_store == losses["kd_keypoint"].params.teacher_store
    assert losses["gkd"].params.on_policy == 0.5 and losses["gkd"].params.teacher_model.startswith("trained:")
    assert load_recipe(variants[2].recipe).weighting.name == "mask_learning"
    with pytest.raises(RecipeError, match=r"--preset kd: .*recipes/kd_topk.yaml not found"):
        expand(REPO / "recipes" / "std_cot.yaml", preset="kd")


def _result(name: str, seed: int, wall: float | None, steps: int = 450) -> RunResult:
    summary = None if wall is None else {"wall_seconds": {"total": wall, "phases": {}}, "splits": {}, "train": {"steps": steps}}
    return RunResult(RunSpec(Variant(name, Path(f"{name}.yaml")), seed, Path(name)), "done" if summary else "failed", summary)


def test_relative_wall_time_column(tmp_path):
    results = [_result("std_cot", 0, 10.0), _result("std_cot", 1, 30.0), _result("mcc_kd", 0, 50.0, 900),
               _result("mcc_kd", 1, 30.0, 900), _result("scotd", 0, 45.0, 1800), _result("scotd", 1, None)]
    rel, note = relative_wall(results)
    assert rel == {"std_cot": 1.0, "mcc_kd": 2.0, "scotd": pytest.approx(2.25)} and "relative to std_cot" in note
    rel, note = relative_wall([r for r in results if r.spec.variant.name != "std_cot"])
    assert rel == {"mcc_kd": 1.0, "scotd": pytest.approx(45 / 40)} and "fastest variant, mcc_kd (no std_cot" in note
    rows = [{"variant": n, "split": "test", "n": 2, "mean": 50.0, "std": 1.0, "ci_low": 40.0, "ci_high": 60.0, "failed": 0}
            for n in ("std_cot", "mcc_kd")]
    write_outputs(results[:4], rows, tmp_path / "out")
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| steps | wall × |" in table and "| mcc_kd | test | 2 | 50.0 ± 1.0 | [40.0, 60.0] | 0 | 900 | 2.00 |" in table
    assert "| std_cot | test | 2 | 50.0 ± 1.0 | [40.0, 60.0] | 0 | 450 | 1.00 |" in table
    assert training_steps(results) == {"std_cot": 450.0, "mcc_kd": 900.0, "scotd": 1800.0}  # a failed seed has no steps
    assert "wall ×: wall time relative to std_cot" in table


def test_an_interrupted_run_is_resumed_not_restarted(tmp_path, monkeypatch):
    """A sweep stopped mid-run (here: a run with its checkpoint but no summary) continues that run
    with ``kpod run --resume``; a run directory of another recipe is replaced."""
    from kpod.ablate import is_resumable, run_spec, was_resumed

    monkeypatch.setenv("KPOD_CACHE", str(tmp_path / "cache"))
    path = _recipe(tmp_path)
    [spec] = plan_runs(expand(path, ["train.lr=0.01"]), [0], tmp_path / "abl")
    run_recipe(load_recipe(spec.variant.recipe, spec.overrides), spec.run_dir, quiet=True)
    first = json.loads((spec.run_dir / "summary.json").read_text())
    (spec.run_dir / "summary.json").unlink()  # killed after its last checkpoint, before the summary
    assert is_resumable(spec) and not was_resumed(spec.run_dir)
    [other] = plan_runs(expand(path, ["train.lr=0.01"]), [0], tmp_path / "abl", ["train.warmup_steps=1"])
    assert other.run_dir == spec.run_dir and not is_resumable(other)  # same directory, another recipe

    code, tail = run_spec(spec)
    assert code == 0, tail
    assert was_resumed(spec.run_dir)
    again = json.loads((spec.run_dir / "summary.json").read_text())
    assert again["finished"] is True and again["splits"] == first["splits"] and again["train"]["steps"] == 2
    res = RunResult(spec, "done", again)
    assert relative_wall([res])[0] == {}  # a resumed run's wall time is its last process only: left out


def test_weighting_preset_trains_every_signal_under_both_policies_at_equal_steps(tmp_path):
    from kpod.ablate import WEIGHTING_PRESET

    path = REPO / "recipes" / "std_cot.yaml"
    variants = expand(path, preset="weighting")
    assert [v.name for v in variants] == [n if p == "weight" else f"{n}+top_k" for p in ("weight", "top_k")
                                          for n in WEIGHTING_PRESET]
    specs = plan_runs(variants, [0, 1], tmp_path / "sweep")  # every variant × seed validates
    base = load_recipe(path)
    full = load_recipe(REPO / "recipes" / "kpod_full.yaml")
    for s in specs:
        r = load_recipe(path, s.overrides)
        strategy, policy = s.variant.fields["weighting"], s.variant.fields["select"]
        assert (r.weighting.name, r.weighting.select.policy, r.loss.name) == (strategy, policy, "kpod")
        assert (r.train, r.data, r.student, r.scheduler) == (base.train, base.data, base.student, base.scheduler)
        if strategy == "mask_learning":  # the shipped fit's params, not the defaults
            assert r.weighting.params == full.weighting.params
        if strategy == "excess_loss":  # the sweep's own uniform run of the same seed
            assert r.weighting.params.reference == str(tmp_path / "sweep" / "uniform" / "seed{seed}")


def test_weighting_preset_runs_excess_loss_against_the_sweeps_uniform_run(tmp_path):
    path = _recipe(tmp_path, deep_update(QUICK, {"train": {"max_steps": 3}}))
    keep = {"uniform", "excess_loss", "dft+top_k", "oracle+top_k"}
    variants = [v for v in expand(path, preset="weighting") if v.name in keep]
    out = tmp_path / "sweep"
    results = execute(plan_runs(variants, [0], out), _in_process_runner([]), jobs=1)
    assert {r.spec.variant.name: r.status for r in results} == dict.fromkeys(
        ["uniform", "dft+top_k", "excess_loss", "oracle+top_k"], "done"), [r.error for r in results]
    by = {r.spec.variant.name: r.summary for r in results}
    assert by["excess_loss"]["weighting"]["reference"] == str(out / "uniform" / "seed0")
    assert by["oracle+top_k"]["weighting"]["keypoint_auc"]["auc"] == 1.0
    assert by["dft+top_k"]["weighting"]["dynamic"] is True
    assert set(training_steps(results).values()) == {3.0}  # equal steps for every signal
