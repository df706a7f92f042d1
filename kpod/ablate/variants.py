"""The variants of a sweep: ``--vary`` grids, the presets, and each variant × seed as a run to
make (:func:`plan_runs`, which validates every one before anything runs)."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kpod import registry
from kpod.recipe import RecipeError, load_recipe

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
# --preset kd: text against distribution distillation from one teacher (docs/teacher.md), each
# <name>.yaml next to RECIPE (recipes/kd/): std_cot on the teacher's rationales, KD from its stored
# top-k, the same weighted by KPOD's keypoints, GKD with the online teacher, and kpod_full
KD_PRESET = ["std_cot", "kd_topk", "kd_keypoint", "gkd", "kpod_full"]
# --preset weighting: every token signal × both selection policies, all with the kpod loss (which
# reads the weights; with uniform weights it is std_cot's Eq. 1) at the base recipe's steps
WEIGHTING_PRESET = ["uniform", "mask_learning", "attention", "dft", "entropy", "excess_loss", "oracle"]
WEIGHTING_POLICIES = ["weight", "top_k"]
# the excess_loss variants' reference model: the sweep's own uniform-weights run of the same seed
# (Rho-1's reference is a model trained on the target data); resolved in plan_runs
SWEEP_DIR = "{sweep_dir}"
EXCESS_REFERENCE = f"{SWEEP_DIR}/uniform/seed{{seed}}"
PRESETS = ("paper", "baselines", "weighting", "keypoints", "kd")


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
            return file_variants(recipe, BASELINES_PRESET, "baselines", recipe.parent / "baselines")
        if preset == "kd":
            return file_variants(recipe, KD_PRESET, "kd", recipe.parent)
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


def file_variants(recipe: Path, names: Sequence[str], preset: str, folder: Path) -> list[Variant]:
    """``--preset baselines`` (``baselines/<name>.yaml`` next to ``recipe``, :data:`BASELINES_PRESET`)
    and ``--preset kd`` (``<name>.yaml`` beside ``recipe``, :data:`KD_PRESET`): one variant per
    file; a missing file is an error naming it (nothing runs)."""
    out = []
    for name in names:
        path = folder / f"{name}.yaml"
        if not path.exists():
            raise RecipeError(f"--preset {preset}: {path} not found (expected next to {recipe})")
        out.append(Variant(name, path, [], {"variant": name}))
    return out


def weighting_variants(recipe: Path) -> list[Variant]:
    """``--preset weighting``: ``recipe`` (e.g. recipes/std_cot.yaml) with the kpod loss and each
    strategy of :data:`WEIGHTING_PRESET` under each selection policy, named ``<strategy>`` (weight)
    and ``<strategy>+top_k``, every ``weight`` variant first. mask_learning takes its params from
    ``kpod_full.yaml`` next to the recipe when there is one (the shipped, tuned fit; else its
    defaults); excess_loss's reference is the sweep's ``uniform`` run of the same seed (listed
    first, so with ``--jobs 1`` it has finished)."""
    ml_params: list[str] = []
    full = recipe.parent / "kpod_full.yaml"
    if full.exists():
        section = load_recipe(full).weighting
        if section.name == "mask_learning":
            ml_params = [f"weighting.params={json.dumps(section.params.model_dump(mode='json'))}"]
    extra = {"mask_learning": ml_params, "excess_loss": [f"weighting.params.reference={EXCESS_REFERENCE}"]}
    out = []
    for policy in WEIGHTING_POLICIES:  # policy-major: a sweep cut short has whole policies, not whole signals
        for strategy in WEIGHTING_PRESET:
            name = strategy if policy == "weight" else f"{strategy}+{policy}"
            derive = ["loss.name=kpod", f"weighting.name={strategy}", *extra.get(strategy, []),
                      f"weighting.select.policy={policy}"]
            out.append(Variant(name, recipe, [], {"weighting": strategy, "select": policy}, derive=derive))
    return out


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
