"""Launch presets: accelerate configs shipped with kpod and chosen by name (``--launch NAME``).

``single_gpu``, ``multi_gpu`` (DDP), ``fsdp`` (FSDP2) and ``multi_cpu`` (DDP over gloo, for checks
without GPUs) live next to this file; ``--launch`` also takes the path of your own accelerate
config. GPU presets start ``accelerate launch --config_file PRESET``; ``multi_cpu`` starts
``torch.distributed.run`` (accelerate's own launcher needs MPI for several CPU processes). Either
way each process runs ``python -m kpod.cli run …`` and the engine finds its rank from the
environment. The command is an argv list (never a shell string) and its exit code is returned.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from kpod.recipe import RecipeError
from kpod.recipe.safe_yaml import read_yaml_file

PRESET_DIR = Path(__file__).parent


def presets() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PRESET_DIR.glob("*.yaml"))}


def resolve(name_or_path: str) -> tuple[Path, dict[str, Any]]:
    """A preset by name, or an accelerate config file by path, with its parsed contents."""
    known = presets()
    path = known.get(name_or_path) or Path(name_or_path)
    if not path.is_file():
        raise RecipeError(
            f"--launch {name_or_path!r}: not a preset ({', '.join(known)}) or an accelerate config file"
        )
    cfg = read_yaml_file(path)  # bounded like a recipe (size, depth, aliases)
    if not isinstance(cfg, dict) or "distributed_type" not in cfg:
        raise RecipeError(f"--launch {path}: an accelerate config needs a 'distributed_type' key")
    return path, cfg


def launch_argv(
    name_or_path: str, kpod_args: list[str], num_processes: int | None = None, port: int | None = None
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that start ``kpod <kpod_args>`` under the preset."""
    path, cfg = resolve(name_or_path)
    env = dict(os.environ)
    n = num_processes or int(cfg.get("num_processes", 1))
    if num_processes is not None and num_processes < 1:
        raise RecipeError(f"--num-processes {num_processes}: must be at least 1")
    if cfg["distributed_type"] == "MULTI_CPU":
        env["ACCELERATE_USE_CPU"] = "true"
        argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(n)]
        argv += ["--master_addr", "127.0.0.1", "--master_port", str(port or 29500)]
        return argv + ["-m", "kpod.cli", *kpod_args], env
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(path)]
    if num_processes is not None:
        argv += ["--num_processes", str(n)]
    elif cfg["distributed_type"] != "NO":  # one process per visible GPU unless told otherwise
        argv += ["--num_processes", str(_visible_gpus() or n)]
    if port is not None:
        argv += ["--main_process_port", str(port)]
    return argv + ["-m", "kpod.cli", *kpod_args], env


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def launch(name_or_path: str, kpod_args: list[str], num_processes: int | None = None, port: int | None = None) -> int:
    argv, env = launch_argv(name_or_path, kpod_args, num_processes, port)
    return subprocess.run(argv, env=env, check=False).returncode
