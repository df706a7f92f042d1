"""``kpod`` command line: each command parses, calls one library function, prints.

Exit codes: 0 success, 2 bad input (recipe, data, run directory), 1 a run that failed (non-finite
loss, a write that failed mid-run, e.g. a full disk).
"""

from __future__ import annotations

import sys

import typer

from kpod.cli import fluency, inspection, training

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="KPOD: keypoint-based progressive chain-of-thought distillation.",
)
# in the order `kpod --help` lists them
app.command()(training.validate)
app.command()(training.run)
app.command("eval")(training.eval_)
app.command()(inspection.report)
app.command()(inspection.compare)
app.command()(inspection.weights)
app.command()(inspection.plan)
app.command()(fluency.fluency)
app.command()(training.ablate)
app.command()(inspection.data)
app.command()(inspection.export)
app.command()(training.teach)
app.command()(inspection.components)
app.command()(inspection.schema)
app.command()(inspection.env)


def main() -> None:
    try:
        app()
    except BrokenPipeError:  # e.g. `kpod validate r.yaml | head`
        sys.exit(0)
