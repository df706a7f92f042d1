"""``kpod ablate``: variants × seeds of a recipe, run as separate processes, aggregated from disk.

Variants come from ``--vary`` (several make a grid) or a preset:

* ``--vary scheduler`` — one variant per registered scheduler (likewise ``weighting``, ``loss``);
* ``--vary weighting=uniform,mask_learning`` — those component names;
* ``--vary train.lr=1e-3,3e-3`` — any dotted recipe field with a comma-separated list of values;
* ``--preset paper`` — the paper's Table 2 set: the base recipe plus ``ablations/wo_*.yaml``,
  the curricula ``ablations/{acl,spl,icl}.yaml``, ``ablations/std_cot.yaml`` and
  ``ablations/answer_only.yaml`` next to the base recipe; a variant whose file is not there is
  the base recipe with the same change as ``--set`` overrides (:data:`PAPER_PRESET`), so the
  preset works for any recipe (the flat ``recipes/paper/*.yaml``);
* ``--preset keypoints`` — std_cot, w.o.-prog, kpod and the oracle keypoint weights (files or
  overrides as for ``paper``, :data:`KEYPOINTS_PRESET`): does keypoint weighting help at all;
* ``--preset baselines`` — Table 1's methods plus std_cot and answer_only:
  ``baselines/<name>.yaml`` next to the base recipe (:data:`BASELINES_PRESET`; the base recipe
  itself is not a variant).

The table has each variant's wall time relative to the sweep's ``std_cot`` variant (mean
``summary.json`` ``wall_seconds.total`` over its seeds; :func:`relative_wall`).

Every run is a plain ``kpod run`` in ``OUT/<variant>/seed<k>/``; this module only reads run
directories (``summary.json``), never in-memory objects. A rerun skips runs whose resolved recipe
already has a finished summary and resumes an interrupted one of the same recipe from its last
checkpoint (``kpod run --resume``); a failing run is reported with its error and the others go on;
Ctrl-C stops the running processes and leaves finished runs intact.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kpod import registry
from kpod.engine.run_lock import PARENT_ENV
from kpod.recipe import RecipeError, dump_recipe, load_recipe

COMPONENT_FIELDS = {"scheduler": "scheduler.name", "weighting": "weighting.name", "loss": "loss.name"}


@dataclass(frozen=True)
class PresetVariant:
    """A ``--preset paper`` variant: its recipe file relative to the base recipe (None: the base
    itself) and the same change as ``--set`` overrides on the base recipe."""

    name: str
    file: str | None
    overrides: tuple[str, ...] = ()


# What the shipped ablation files change (recipes/ablations/*.yaml; the std_cot and answer_only
# files extend their own base recipes, i.e. kpod_full without its weighting, schedule, difficulty
# and clusters). The files win where they exist (recipes/kpod_full.yaml and
# recipes/smollm2/*/kpod_full.yaml ship them, so those sweeps run what they ran); tests/test_ablate.py
# checks that these overrides on recipes/kpod_full.yaml resolve to the files' recipes (up to ``name``).
_PLAIN_COT = ("weighting.name=uniform", "scheduler.name=none", "loss.name=std_cot", "difficulty={}", "clusters={}")
PAPER_PRESET = [
    PresetVariant("kpod", None),
    PresetVariant("w.o.-sig", "ablations/wo_sig.yaml", ("loss.name=kpod", "loss.params.weights=uniform")),
    PresetVariant("w.o.-sig-dif", "ablations/wo_sig_dif.yaml", ("difficulty.within_step=mean",)),
    PresetVariant("w.o.-prog", "ablations/wo_prog.yaml", ("scheduler.name=none",)),
    PresetVariant("w.o.-div", "ablations/wo_div.yaml", ("scheduler.name=kpod_knapsack", "scheduler.params.beta=0.0")),
    PresetVariant("ACL", "ablations/acl.yaml", ("scheduler.name=acl",)),
    PresetVariant("SPL", "ablations/spl.yaml", ("scheduler.name=spl",)),
    PresetVariant("ICL", "ablations/icl.yaml", ("scheduler.name=icl",)),
    PresetVariant("std_cot", "ablations/std_cot.yaml", _PLAIN_COT),
    PresetVariant("answer_only", "ablations/answer_only.yaml", (
        *_PLAIN_COT, 'data.template.trigger=""', 'data.template.answer_sentence="The answer is {answer}"',
        "data.template.use_rationale=false", "eval.max_new_tokens=16")),
]
# --preset keypoints: does keypoint weighting help, and is KPOD's mask the reason? std_cot (uniform
# weights), w.o.-prog (KPOD's weights, no curriculum), kpod (both), and the data set's own keypoints
# as weights with no curriculum (the oracle: the most keypoint weighting can give; built-in data only)
_BY_NAME = {pv.name: pv for pv in PAPER_PRESET}
KEYPOINTS_PRESET = [
    _BY_NAME["std_cot"], _BY_NAME["w.o.-prog"], _BY_NAME["kpod"],
    PresetVariant("oracle", "ablations/oracle.yaml", ("scheduler.name=none", "weighting.name=oracle")),
]
# --preset baselines: Table 1's comparison set (docs/baselines.md), each recipes/baselines/<name>.yaml
BASELINES_PRESET = ["std_cot", "answer_only", "dsbs", "mcc_kd", "scotd", "specialized_kd", "scott"]
# --preset weighting: every token signal × both selection policies, all with the kpod loss (which
# reads the weights; with uniform weights it is std_cot's Eq. 1) at the base recipe's steps
WEIGHTING_PRESET = ["uniform", "mask_learning", "attention", "dft", "entropy", "excess_loss", "oracle"]
WEIGHTING_POLICIES = ["weight", "top_k"]
# the excess_loss variants' reference model: the sweep's own uniform-weights run of the same seed
# (Rho-1's reference is a model trained on the target data); resolved in plan_runs
SWEEP_DIR = "{sweep_dir}"
EXCESS_REFERENCE = f"{SWEEP_DIR}/uniform/seed{{seed}}"
WALL_REFERENCE = "std_cot"  # the variant the relative wall-time column divides by
WALL_REFERENCES = (WALL_REFERENCE, "uniform")  # the first one present in a sweep (uniform: --preset weighting)
SPLITS = ("validation", "test", "ood")
PRESETS = ("paper", "baselines", "weighting", "keypoints")


@dataclass
class Variant:
    name: str  # e.g. "scheduler=linear,train.lr=0.001"
    recipe: Path
    overrides: list[str] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    # overrides that make the variant's recipe out of ``recipe`` (a derived --preset paper variant),
    # applied before the sweep's own --set, which wins as it does over a variant's recipe file
    derive: list[str] = field(default_factory=list)

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.=-]+", "_", self.name.replace(",", "__").replace("=", "-")) or "base"


@dataclass
class RunSpec:
    variant: Variant
    seed: int
    run_dir: Path
    track: list[str] = field(default_factory=list)  # tracker group/tags/run name (recipes with `track:`)

    @property
    def overrides(self) -> list[str]:
        return [*self.variant.overrides, *self.track, f"seed={self.seed}"]


@dataclass
class RunResult:
    spec: RunSpec
    status: str  # "done", "skipped" (already finished), "failed"
    summary: dict[str, Any] | None = None
    error: str | None = None
    wall: float = 0.0


def parse_vary(text: str) -> tuple[str, list[str]]:
    """``"scheduler"`` → (scheduler.name, every registered scheduler); ``"a.b=x,y"`` → (a.b, [x, y])."""
    registry.discover()
    if "=" not in text:
        if text in COMPONENT_FIELDS:
            reg = registry.ALL_REGISTRIES[text]
            return COMPONENT_FIELDS[text], reg.names()
        raise RecipeError(
            f"--vary {text!r}: give values (--vary {text}=a,b) or a component kind ({', '.join(COMPONENT_FIELDS)})"
        )
    key, values = text.split("=", 1)
    key = COMPONENT_FIELDS.get(key.strip(), key.strip())
    vals = [v.strip() for v in values.split(",") if v.strip()]
    if not vals:
        raise RecipeError(f"--vary {text!r}: no values after '='")
    if key.endswith(".name"):
        kind = key.rsplit(".", 1)[0]
        reg = registry.ALL_REGISTRIES.get(kind)
        for v in vals:
            if reg is not None and v not in reg:
                raise RecipeError(f"--vary {text!r}: {reg.miss_message(v)}")
    return key, vals


def expand(recipe: Path, vary: Sequence[str] = (), preset: str | None = None) -> list[Variant]:
    """The variants of an ablation: a grid over ``vary`` or a preset (not both)."""
    if preset is not None:
        if vary:
            raise RecipeError("--preset and --vary cannot be combined")
        if preset not in PRESETS:
            raise RecipeError(f"--preset {preset!r}: unknown (available: {', '.join(PRESETS)})")
        if preset == "baselines":
            return baselines_variants(recipe)
        if preset == "weighting":
            return weighting_variants(recipe)
        return paper_variants(recipe, KEYPOINTS_PRESET if preset == "keypoints" else PAPER_PRESET)
    if not vary:
        return [Variant("base", recipe)]
    axes = [parse_vary(v) for v in vary]
    keys = [k for k, _ in axes]
    if len(set(keys)) != len(keys):
        raise RecipeError(f"--vary: a field is varied twice ({', '.join(keys)})")
    variants = []
    for combo in itertools.product(*[vals for _, vals in axes]):
        fields = dict(zip(keys, combo))
        name = ",".join(f"{k.removesuffix('.name')}={v}" for k, v in fields.items())
        variants.append(Variant(name, recipe, [f"{k}={v}" for k, v in fields.items()], fields))
    return variants


def paper_variants(recipe: Path, preset: Sequence[PresetVariant] = PAPER_PRESET) -> list[Variant]:
    """``--preset paper`` (or ``keypoints``): each variant's ablation file next to ``recipe`` when it
    exists, else ``recipe`` with the variant's overrides (:data:`PAPER_PRESET`)."""
    out = []
    for pv in preset:
        path = recipe if pv.file is None else recipe.parent / pv.file
        if path.exists():
            out.append(Variant(pv.name, path, [], {"variant": pv.name}))
        else:
            out.append(Variant(pv.name, recipe, [], {"variant": pv.name}, derive=list(pv.overrides)))
    return out


def baselines_variants(recipe: Path) -> list[Variant]:
    """``--preset baselines``: ``baselines/<name>.yaml`` next to ``recipe`` for each name of
    :data:`BASELINES_PRESET`; a missing file is an error naming it (nothing runs)."""
    out = []
    for name in BASELINES_PRESET:
        path = recipe.parent / "baselines" / f"{name}.yaml"
        if not path.exists():
            raise RecipeError(f"--preset baselines: {path} not found (expected next to {recipe})")
        out.append(Variant(name, path, [], {"variant": name}))
    return out


def weighting_variants(recipe: Path) -> list[Variant]:
    """``--preset weighting``: ``recipe`` (e.g. recipes/std_cot.yaml) with the kpod loss and each
    strategy of :data:`WEIGHTING_PRESET` under each selection policy, named ``<strategy>`` (weight)
    and ``<strategy>+top_k``. mask_learning takes its params from ``kpod_full.yaml`` next to the
    recipe when there is one (the shipped, tuned fit; else its defaults); excess_loss's reference is
    the sweep's ``uniform`` run of the same seed (listed first, so with ``--jobs 1`` it has finished)."""
    ml_params: list[str] = []
    full = recipe.parent / "kpod_full.yaml"
    if full.exists():
        section = load_recipe(full).weighting
        if section.name == "mask_learning":
            ml_params = [f"weighting.params={json.dumps(section.params.model_dump(mode='json'))}"]
    extra = {"mask_learning": ml_params, "excess_loss": [f"weighting.params.reference={EXCESS_REFERENCE}"]}
    out = []
    for strategy in WEIGHTING_PRESET:
        for policy in WEIGHTING_POLICIES:
            name = strategy if policy == "weight" else f"{strategy}+{policy}"
            derive = ["loss.name=kpod", f"weighting.name={strategy}", *extra.get(strategy, []),
                      f"weighting.select.policy={policy}"]
            out.append(Variant(name, recipe, [], {"weighting": strategy, "select": policy}, derive=derive))
    return out


def was_resumed(run_dir: Path) -> bool:
    """Did this run continue from a checkpoint (a ``resume`` event in its metrics log)?"""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return False
    lines = path.read_text(encoding="utf-8").splitlines()
    return any(json.loads(line).get("phase") == "resume" for line in lines if '"resume"' in line)


def relative_wall(results: list[RunResult], reference: str = WALL_REFERENCE) -> tuple[dict[str, float], str]:
    """Each variant's mean ``summary.json`` ``wall_seconds.total`` (finished runs that were not
    resumed: a resumed run's summary times only its last process) divided by the
    ``reference`` variant's mean in the same sweep, and a note for the table. Without a finished
    reference variant the values are relative to the fastest variant instead (the note says so)."""

    def wall(r: RunResult) -> float | None:
        total = ((r.summary or {}).get("wall_seconds") or {}).get("total")
        # a resumed run's summary times its last process only: not a cost figure
        ok = isinstance(total, (int, float)) and total > 0 and not was_resumed(r.spec.run_dir)
        return float(total) if ok else None

    means = _variant_means(results, wall)
    if not means:
        return {}, "wall time: no summary.json has wall_seconds"
    if reference in means:
        ref, note = means[reference], f"wall time relative to {reference} (mean summary.json wall_seconds.total over seeds)"
    else:
        fastest = min(means, key=means.__getitem__)
        ref, note = means[fastest], f"wall time relative to the fastest variant, {fastest} (no {reference} variant in this sweep)"
    return {name: m / ref for name, m in means.items()}, note


def training_steps(results: list[RunResult]) -> dict[str, float]:
    """Each variant's mean optimiser steps (``summary.json`` ``train.steps``) over its finished
    seeds. Methods that train on several rationales a question take more steps per epoch: a
    difference in accuracy is only a method's when the steps match (docs/benchmarks.md,
    compute-matched control)."""

    def steps(r: RunResult) -> float | None:
        n = ((r.summary or {}).get("train") or {}).get("steps")
        return float(n) if isinstance(n, (int, float)) else None

    return _variant_means(results, steps)


def _variant_means(results: list[RunResult], value: Callable[[RunResult], float | None]) -> dict[str, float]:
    """Mean of ``value(run)`` per variant over the runs where it is not None."""
    per_variant: dict[str, list[float]] = {}
    for r in results:
        v = value(r)
        if v is not None:
            per_variant.setdefault(r.spec.variant.name, []).append(v)
    return {name: statistics.fmean(vs) for name, vs in per_variant.items()}


def plan_runs(variants: list[Variant], seeds: Sequence[int], out: Path, extra: Sequence[str] = ()) -> list[RunSpec]:
    """Validate every variant × seed up front (a bad variant fails before anything runs)."""
    specs = []
    for v in variants:
        derive = [o.replace(SWEEP_DIR, str(out)) for o in v.derive]  # a preset's paths inside the sweep
        v.overrides = [*derive, *extra, *v.overrides]
        for s in seeds:
            recipe = load_recipe(v.recipe, [*v.overrides, f"seed={s}"])  # raises RecipeError naming the field
            spec = RunSpec(v, s, out / v.slug / f"seed{s}")
            if recipe.track is not None:  # one tracker group per sweep, the variant as a tag
                spec.track = [f"track.group={json.dumps(recipe.track.group or Path(out).resolve().name)}",
                              f"track.tags={json.dumps([*recipe.track.tags, v.name])}",
                              f"track.run_name={json.dumps(f'{v.slug}/seed{s}')}"]
            specs.append(spec)
    return specs


def ran_this_recipe(spec: RunSpec) -> bool:
    """Does the run directory hold a run of exactly the recipe this spec would run now?"""
    resolved = spec.run_dir / "recipe.resolved.yaml"
    if not resolved.exists():
        return False
    return resolved.read_text(encoding="utf-8") == dump_recipe(load_recipe(spec.variant.recipe, spec.overrides))


def is_finished(spec: RunSpec) -> bool:
    """A finished summary whose resolved recipe equals what this spec would run now."""
    summary = spec.run_dir / "summary.json"
    return summary.exists() and json.loads(summary.read_text()).get("finished") is True and ran_this_recipe(spec)


def is_resumable(spec: RunSpec) -> bool:
    """An unfinished run of exactly this recipe with a complete checkpoint (a sweep that was
    interrupted): ``kpod run --resume`` continues it, bitwise as if it had not stopped
    (docs/reliability.md), instead of starting it over."""
    from kpod.engine.checkpointing import last_checkpoint

    return last_checkpoint(spec.run_dir) is not None and ran_this_recipe(spec)


def run_spec(spec: RunSpec, threads: int | None = None) -> tuple[int, str]:
    """Run ``kpod run`` for a spec in its own process; returns (exit code, last log lines).
    An interrupted run of the same recipe is resumed from its last checkpoint; anything else in
    the run directory (another recipe, no checkpoint) is replaced."""
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    resume = is_resumable(spec)
    cmd = [sys.executable, "-m", "kpod.cli", "run", str(spec.variant.recipe), "--out", str(spec.run_dir),
           "--resume" if resume else "--overwrite", "-q"]
    for o in spec.overrides:
        cmd += ["--set", o]
    env = dict(os.environ)
    env[PARENT_ENV] = str(os.getpid())  # the run ends when this process dies (kpod/engine/run_lock.py)
    if threads:  # torch reads it at start-up; the recipe (and so resume) stays unchanged
        env["OMP_NUM_THREADS"] = str(threads)
    log = spec.run_dir.parent / f"seed{spec.seed}.log"
    with open(log, "a" if resume else "w", encoding="utf-8") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        try:
            code = proc.wait()
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
    tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:])
    return code, tail


def subprocess_runner(threads: int | None = None) -> Callable[[RunSpec], tuple[int, str]]:
    """Local executor: each run is a child process of this one."""
    return lambda spec: run_spec(spec, threads)


def ray_runner(
    address: str | None = None, threads: int | None = None, cpus_per_run: float = 1.0
) -> Callable[[RunSpec], tuple[int, str]]:
    """Ray executor: each run is a Ray task (``num_cpus=cpus_per_run``) that starts ``kpod run``
    on whichever node Ray picks. On a multi-node cluster every node needs kpod installed and the
    recipes and the output directory on a shared filesystem. ``address=None`` starts a local
    single-node Ray instance; ``"auto"`` joins a running cluster."""
    try:
        import ray
    except ImportError:
        raise RecipeError("--executor ray needs Ray: pip install 'kpod[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    remote = ray.remote(num_cpus=cpus_per_run)(run_spec)

    def run(spec: RunSpec) -> tuple[int, str]:
        ref = remote.remote(spec, threads)
        try:
            return ray.get(ref)
        except BaseException:
            ray.cancel(ref, force=True)
            raise

    return run


def execute(
    specs: list[RunSpec],
    runner: Callable[[RunSpec], tuple[int, str]],
    jobs: int = 1,
    on_result: Callable[[RunResult], None] | None = None,
) -> list[RunResult]:
    """Run every unfinished spec (``jobs`` at a time); failures are recorded, not raised."""

    def one(spec: RunSpec) -> RunResult:
        if is_finished(spec):
            res = RunResult(spec, "skipped", json.loads((spec.run_dir / "summary.json").read_text()))
        else:
            t0 = time.perf_counter()
            code, tail = runner(spec)
            wall = time.perf_counter() - t0
            summary_path = spec.run_dir / "summary.json"
            if code == 0 and summary_path.exists():
                res = RunResult(spec, "done", json.loads(summary_path.read_text()), wall=wall)
            else:
                res = RunResult(spec, "failed", None, f"exit {code}: {tail}", wall)
        if on_result is not None:
            on_result(res)
        return res

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        return list(pool.map(one, specs))


def flatten(summary: dict[str, Any]) -> dict[str, Any]:
    """Every scalar metric of a summary.json as ``a.b.c`` columns."""
    out: dict[str, Any] = {}

    def walk(prefix: str, obj: Any) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(obj, (int, float, str, bool)) or obj is None:
            out[prefix] = obj

    walk("", summary)
    return out


def confidence_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, sample std, low, high) with a Student-t interval; n = 1 gives a zero-width interval."""
    from scipy import stats

    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, 0.0, mean, mean
    sd = statistics.stdev(values)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


def aggregate(results: list[RunResult]) -> list[dict[str, Any]]:
    """Per variant and split: n, mean, std and the 95 % interval of accuracy (in %)."""
    rows = []
    by_variant: dict[str, list[RunResult]] = {}
    for r in results:
        by_variant.setdefault(r.spec.variant.name, []).append(r)
    for name, rs in by_variant.items():
        ok = [r for r in rs if r.summary is not None]
        for split in SPLITS:
            accs = [100.0 * r.summary["splits"][split]["accuracy"] for r in ok if split in r.summary.get("splits", {})]  # type: ignore[index]
            if not accs:
                continue
            mean, sd, lo, hi = confidence_interval(accs)
            rows.append({"variant": name, "split": split, "n": len(accs), "mean": mean, "std": sd, "ci_low": lo, "ci_high": hi,
                         "failed": sum(r.status == "failed" for r in rs)})
    return rows


def write_outputs(results: list[RunResult], rows: list[dict[str, Any]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    flat = []
    for r in results:
        row: dict[str, Any] = {"variant": r.spec.variant.name, **r.spec.variant.fields, "seed": r.spec.seed, "status": r.status,
                               "error": r.error or "", "run_wall_seconds": round(r.wall, 2), "run_dir": str(r.spec.run_dir)}
        if r.summary is not None:
            row.update(flatten(r.summary))
        flat.append(row)
    columns = list(dict.fromkeys(k for row in flat for k in row))
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(flat)
    names = {r.spec.variant.name for r in results}
    rel, note = relative_wall(results, next((n for n in WALL_REFERENCES if n in names), WALL_REFERENCE))
    steps = training_steps(results)
    lines = ["| variant | split | n | mean ± std (%) | 95 % CI | failed | steps | wall × |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        wall = f"{rel[row['variant']]:.2f}" if row["variant"] in rel else "–"
        n_steps = f"{steps[row['variant']]:.0f}" if row["variant"] in steps else "–"
        lines.append(f"| {row['variant']} | {row['split']} | {row['n']} | {row['mean']:.1f} ± {row['std']:.1f} | "
                     f"[{row['ci_low']:.1f}, {row['ci_high']:.1f}] | {row['failed']} | {n_steps} | {wall} |")
    lines.append("\nsteps: mean optimiser steps over seeds; compare methods at equal steps (more rationales a question = more steps).")
    lines.append(f"\nwall ×: {note}.")
    for r in results:
        if r.status == "failed":
            lines.append(f"\nFailed: {r.spec.variant.name} seed {r.spec.seed}: {r.error}")
    (out / "table.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    plot(rows, out / "plot.png")
    write_sweep_report(results, rows, out)


def write_sweep_report(results: list[RunResult], rows: list[dict[str, Any]], out: Path) -> Path:
    """``OUT/report.html``: table.md's numbers with plots, and every run with its status."""
    from kpod.reports.sweep import build_sweep_report
    from kpod.runs import atomic_write_text

    runs = [{"variant": r.spec.variant.name, "seed": r.spec.seed, "status": r.status, "run_dir": str(r.spec.run_dir),
             "error": r.error or "",
             "accuracy": {k: v["accuracy"] for k, v in ((r.summary or {}).get("splits") or {}).items()}}
            for r in results]
    title = results[0].spec.variant.recipe.name if results else out.name
    path = out / "report.html"
    atomic_write_text(path, build_sweep_report(title, rows, runs, out))
    return path


def plot(rows: list[dict[str, Any]], path: Path, split: str = "test") -> bool:
    """Accuracy per variant with its 95 % interval; False (no file) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sel = [r for r in rows if r["split"] == split] or rows
    if not sel:
        return False
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(sel)), 4))
    x = range(len(sel))
    means = [r["mean"] for r in sel]
    err = [[m - r["ci_low"] for m, r in zip(means, sel)], [r["ci_high"] - m for m, r in zip(means, sel)]]
    ax.bar(x, means, yerr=err, capsize=4, color="#4c72b0")
    ax.set_xticks(list(x))
    ax.set_xticklabels([r["variant"] for r in sel], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"{sel[0]['split']} accuracy (%)")
    ax.set_title(f"mean and 95 % CI over seeds (n = {max(r['n'] for r in sel)})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
