"""``trained:RECIPE``: the model a recipe trains, as a model name any model field accepts
(``loss.params.teacher_model``, ``teacher.model``, ``kpod rescore --teacher``).

The first use trains it with :func:`kpod.engine.run.run_recipe` into a temporary directory and
keeps the run (without its checkpoints) under ``$KPOD_CACHE/trained/<name>-<key>/``, like the
pre-trained base: the key is the fingerprint of the resolved recipe and kpod's version, so a
changed recipe is a new entry, and every later use loads the cached model (its files checked
against their digests; a damaged entry is rebuilt). Parallel builders (``kpod ablate --jobs``)
race safely: the first complete entry is kept. This is how the offline testbed gets a teacher
stronger than its student (recipes/kd/teacher.yaml) without a download.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

import kpod
from kpod.cache import build_dir, cache_root, fingerprint, verified_dir
from kpod.engine.checkpointing.tensors import restore_rng, rng_state
from kpod.models.student import register_model_source
from kpod.recipe import dump_recipe, load_recipe

PREFIX = "trained:"
MARKER = "trained.json"


def trained_dir(recipe_path: str, field: str) -> Path:
    """The cache entry of the recipe's trained run (``<entry>/run``), built now if missing."""
    recipe = load_recipe(Path(recipe_path))
    key = fingerprint(dump_recipe(recipe), kpod.__version__)[:20]
    path = cache_root() / "trained" / f"{recipe.name}-{key}"
    if verified_dir(path):
        return path

    def build(tmp: Path) -> None:
        from kpod.engine.run import run_recipe

        print(f"{field}: training {recipe_path} once (cached at {path})", flush=True)
        with _process_state_kept():  # a run that names the teacher goes on as if it had been cached
            summary = run_recipe(recipe, tmp / "run", quiet=True)
        shutil.rmtree(tmp / "run" / "checkpoints", ignore_errors=True)  # optimizer states: not needed to load it
        splits = {k: v.get("accuracy") for k, v in summary.get("splits", {}).items()}
        (tmp / MARKER).write_text(json.dumps({"recipe": recipe_path, "name": recipe.name, "accuracy": splits,
                                              "wall_seconds": summary.get("wall_seconds", {}).get("total")}, indent=1))

    build_dir(path, build, MARKER)
    return path


@contextlib.contextmanager
def _process_state_kept() -> Iterator[None]:
    """The random generators and torch's thread count as they were before: training the teacher
    inside another run (its first use) seeds them and sets threads for itself."""
    rng, numpy_rng, threads = rng_state(), np.random.get_state(), torch.get_num_threads()
    try:
        yield
    finally:
        restore_rng(rng)  # torch (and CUDA) and Python's, as a checkpoint restores them
        np.random.set_state(numpy_rng)
        torch.set_num_threads(threads)


def trained_model(recipe_path: str, field: str) -> str:
    """``trained:RECIPE`` → the directory of the model the recipe trains (cached)."""
    return str(trained_dir(recipe_path, field) / "run" / "model")


register_model_source(PREFIX, trained_model)
