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

Every run is a plain ``kpod run`` in ``OUT/<variant>/seed<k>/``; the sweep only reads run
directories (``summary.json``), never in-memory objects. A rerun skips runs whose resolved recipe
already has a finished summary and resumes an interrupted one of the same recipe from its last
checkpoint (``kpod run --resume``); a failing run is reported with its error and the others go on;
Ctrl-C stops the running processes and leaves finished runs intact.

Three modules, in the order a sweep uses them: :mod:`kpod.ablate.variants` (``--vary``, the
presets, :func:`plan_runs`), :mod:`kpod.ablate.execution` (local processes or Ray, skip, resume)
and :mod:`kpod.ablate.results` (statistics, ``table.md``/``results.csv``, plot, report).
"""

from kpod.ablate.execution import (
    EXECUTORS,
    Runner,
    RunResult,
    execute,
    is_finished,
    is_resumable,
    make_runner,
    ran_this_recipe,
    ray_runner,
    run_spec,
    subprocess_runner,
    was_resumed,
)
from kpod.ablate.results import (
    SPLITS,
    WALL_REFERENCE,
    WALL_REFERENCES,
    aggregate,
    confidence_interval,
    console_table,
    flatten,
    plot,
    progress_line,
    relative_wall,
    table_markdown,
    training_steps,
    write_outputs,
    write_results_csv,
    write_sweep_report,
)
from kpod.ablate.variants import (
    BASELINES_PRESET,
    COMPONENT_FIELDS,
    EXCESS_REFERENCE,
    KD_PRESET,
    KEYPOINTS_PRESET,
    PAPER_PRESET,
    PRESETS,
    SWEEP_DIR,
    WEIGHTING_POLICIES,
    WEIGHTING_PRESET,
    PresetVariant,
    RunSpec,
    Variant,
    expand,
    file_variants,
    paper_variants,
    parse_vary,
    plan_runs,
    weighting_variants,
)

__all__ = [
    "BASELINES_PRESET", "COMPONENT_FIELDS", "EXCESS_REFERENCE", "EXECUTORS", "KD_PRESET", "KEYPOINTS_PRESET", "PAPER_PRESET",
    "PRESETS", "SPLITS", "SWEEP_DIR", "WALL_REFERENCE", "WALL_REFERENCES", "WEIGHTING_POLICIES", "WEIGHTING_PRESET",
    "PresetVariant", "RunResult", "RunSpec", "Runner", "Variant", "aggregate",
    "confidence_interval", "console_table", "execute", "expand", "file_variants", "flatten", "is_finished", "is_resumable",
    "make_runner", "paper_variants", "parse_vary", "plan_runs", "plot", "progress_line", "ran_this_recipe",
    "ray_runner", "relative_wall", "run_spec", "subprocess_runner", "table_markdown", "training_steps",
    "was_resumed", "weighting_variants", "write_outputs", "write_results_csv", "write_sweep_report",
]
