"""Rich progress bars per phase and short status lines (stderr; silent when ``quiet``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def silence_transformers_progress() -> None:
    """No transformers progress bars ("Loading weights: 0%" reads like token weights); kpod's
    Reporter shows progress where it matters."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


class Reporter:
    def __init__(self, quiet: bool = False, console: Console | None = None) -> None:
        self.quiet = quiet
        self.console = console or Console(stderr=True)

    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(escape(message))  # text, not markup (paths, 'kpod[plot]')

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/] {escape(message)}")

    @contextlib.contextmanager
    def task(
        self, name: str, total: int, completed: int = 0, enabled: bool = True
    ) -> Iterator[Callable[[int, str], None]]:
        """A progress bar (none when quiet, or ``enabled`` is false: e.g. inside another task)."""
        if self.quiet or not enabled:
            yield lambda n, desc: None
            return
        with Progress(
            TextColumn("[bold blue]{task.fields[phase]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        ) as progress:
            tid = progress.add_task("", total=total, completed=completed, phase=name)

            def advance(n: int, desc: str) -> None:
                progress.update(tid, advance=n, description=desc)

            yield advance
