"""What every command shares: the consoles, the recipe and ``--set`` arguments, and the one policy
that turns errors into exit codes.

Exit codes: 0 success, 2 bad input (:func:`bad_input_errors`: recipe, data, run directory, …),
1 a run that failed (:func:`failed_run_errors`: non-finite loss, a write that failed mid-run,
a teacher that kept failing), 130 Ctrl-C where the command says how to continue. Every command is
wrapped once by :func:`exit_codes` (kpod/cli/__init__.py), so a command only calls its library
function; one that knows what the user can do next after a failure says so with
:func:`next_steps`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

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

P = ParamSpec("P")
R = TypeVar("R")
INTERRUPTED = 130  # the shell's code for a process stopped by SIGINT


def bad_input_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean the input cannot be used as given: exit code 2."""
    from kpod.compare import CompareError
    from kpod.data.records import DataError
    from kpod.models.student import StudentError
    from kpod.recipe import RecipeError
    from kpod.registry import RegistryError
    from kpod.reports.figures import ReportError
    from kpod.runs import RunDirError
    from kpod.teach.base import TeacherError
    from kpod.tracking import TrackerError

    return (RecipeError, DataError, StudentError, RunDirError, RegistryError, TrackerError, CompareError, ReportError,
            TeacherError)


def failed_run_errors() -> tuple[type[BaseException], ...]:
    """Errors of a run that started and failed: exit code 1. Checked before
    :func:`bad_input_errors` (a TeacherUnavailable is also a TeacherError)."""
    from kpod.engine.train import NonFiniteLossError
    from kpod.runs import RunWriteError
    from kpod.teach.base import TeacherUnavailable

    return (NonFiniteLossError, RunWriteError, TeacherUnavailable)


class NextStep(Exception):
    """``error`` with what the user can do next (see :func:`next_steps`); the exit code is the
    error's own."""

    def __init__(self, error: BaseException, hint: str) -> None:
        super().__init__(hint)
        self.error = error
        self.hint = hint


@contextmanager
def next_steps(hints: Mapping[type[BaseException], Callable[[], str]]) -> Iterator[None]:
    """Adds ``hints[type](...)`` to an error of that type raised inside (the first type that
    matches, in order): the message becomes ``"<error>; <hint>"``. A hint is a function, called
    when the error happens, so it can name what exists by then (the last checkpoint).
    ``KeyboardInterrupt`` as a key makes Ctrl-C exit with code 130 and the message
    ``"interrupted; <hint>"``."""
    try:
        yield
    except tuple(hints) as e:
        hint = next(h for kind, h in hints.items() if isinstance(e, kind))
        raise NextStep(e, hint()) from None


def exit_codes(command: Callable[P, R]) -> Callable[P, R]:
    """The command, with the errors of :func:`failed_run_errors` and :func:`bad_input_errors`
    printed as one-line messages and turned into exit codes 1 and 2 (130 for an interrupted
    :func:`next_steps` block). Any other error is a bug and keeps its traceback."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except NextStep as e:
            raise fail(f"{_message(e.error)}; {e.hint}", exit_code(e.error)) from None
        except (*failed_run_errors(), *bad_input_errors()) as e:
            raise fail(_message(e), exit_code(e)) from None

    return run


def exit_code(error: BaseException) -> int:
    """The policy in one place: 130 interrupted, 1 a failed run, 2 bad input."""
    if isinstance(error, KeyboardInterrupt):
        return INTERRUPTED
    return 1 if isinstance(error, failed_run_errors()) else 2


def _message(error: BaseException) -> str:
    return "interrupted" if isinstance(error, KeyboardInterrupt) else str(error)


def checkpoint_note(run_dir: Path) -> str:
    from kpod.engine.checkpointing import last_checkpoint

    last = last_checkpoint(Path(run_dir))
    return f"the last complete checkpoint, {last}, is intact" if last else "no checkpoint had been written yet"


def fail(message: str, code: int) -> typer.Exit:
    # the message is text, not markup: "pip install 'kpod[plot]'" must keep its [plot]
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(code)
