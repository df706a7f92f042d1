"""``kpod`` command line: each command parses, calls one library function, prints.

Exit codes: 0 success, 2 bad input (recipe, data, run directory), 1 a run that failed (non-finite
loss, a write that failed mid-run, e.g. a full disk), 130 interrupted. The library raises; one
wrapper (:func:`kpod.cli.common.exit_codes`) turns errors into messages and exit codes.
"""

from __future__ import annotations

import sys

import typer

from kpod.cli import fluency, inspection, rescore, training
from kpod.cli.common import exit_codes

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="KPOD: keypoint-based progressive chain-of-thought distillation.",
)
# in the order `kpod --help` lists them
COMMANDS = [
    ("validate", training.validate), ("run", training.run), ("eval", training.eval_), ("report", inspection.report),
    ("compare", inspection.compare), ("weights", inspection.weights), ("plan", inspection.plan),
    ("fluency", fluency.fluency), ("ablate", training.ablate), ("data", inspection.data),
    ("export", inspection.export), ("teach", training.teach), ("rescore", rescore.rescore), ("components", inspection.components),
    ("schema", inspection.schema), ("env", inspection.env),
]
for name, command in COMMANDS:
    app.command(name)(exit_codes(command))  # every command: errors become exit codes here, once


def main() -> None:
    try:
        app()
    except BrokenPipeError:  # e.g. `kpod validate r.yaml | head`
        sys.exit(0)
