"""What every command shares: the consoles, the recipe and ``--set`` arguments, and how errors
become exit codes (2 bad input, 1 a run that failed)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

err = Console(stderr=True)
out = Console()

RecipeArg = Annotated[Path, typer.Argument(help="recipe YAML file", show_default=False)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="override a recipe field: --set train.lr=1e-3 (repeatable)"),
]


def bad_input_errors() -> tuple[type[BaseException], ...]:
    from kpod.compare import CompareError
    from kpod.data.records import DataError
    from kpod.models.student import StudentError
    from kpod.recipe import RecipeError
    from kpod.registry import RegistryError
    from kpod.reports.figures import ReportError
    from kpod.runs import RunDirError
    from kpod.tracking import TrackerError

    return (RecipeError, DataError, StudentError, RunDirError, RegistryError, TrackerError, CompareError, ReportError)


def checkpoint_note(run_dir: Path) -> str:
    from kpod.engine.checkpointing import last_checkpoint

    last = last_checkpoint(Path(run_dir))
    return f"the last complete checkpoint, {last}, is intact" if last else "no checkpoint had been written yet"


def fail(message: str, code: int) -> typer.Exit:
    # the message is text, not markup: "pip install 'kpod[plot]'" must keep its [plot]
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(code)
