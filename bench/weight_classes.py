"""Mean token weight by class (keypoint, filler, the rest of the step frame) of a recipe's
weighting, per seed: what keypoint AUC does not show.

    python bench/weight_classes.py recipes/kpod_full.yaml --seeds 0 1 2 [--set student.pretrain.corpus=rationale_style]

The weights come from the weighting phase exactly as `kpod run` computes them (cached under
$KPOD_CACHE: a run of the same recipe and seed has already stored them); the classes come from
the built-in data set's side data (kpod/weighting/evaluate.py). One Markdown row per seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kpod.engine.phases import compute_weights
from kpod.recipe import load_recipe
from kpod.reports.exports import offline_setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    print("| seed | keypoint AUC | mean weight: keypoint | filler | frame | tokens: keypoint / filler / frame |")
    print("|---|---|---|---|---|---|")
    for seed in args.seeds:
        recipe = load_recipe(args.recipe, [*args.overrides, f"seed={seed}"])
        setup, device, reporter = offline_setup(recipe, quiet=True)
        auc = compute_weights(recipe, setup, device, reporter).report.get("keypoint_auc") or {}
        if auc.get("uniform"):
            print(f"| {seed} | 0.500 | 1 | 1 | 1 | – |")
            continue
        print(f"| {seed} | {auc['auc']:.3f} | {auc['mean_keypoint']:.3f} | {auc['mean_filler']:.3f} | "
              f"{auc['mean_frame']:.3f} | {auc['n_keypoint']} / {auc['n_filler']} / {auc['n_frame']} |")


if __name__ == "__main__":
    main()
