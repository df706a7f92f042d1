"""The CLI's one error policy: which errors give which exit code and message, applied to every
command once; the hints `kpod run`, `kpod teach` and `kpod ablate` add to a failure."""

from __future__ import annotations

import pytest
import typer
import yaml
from typer.testing import CliRunner

from kpod.cli import COMMANDS, app
from kpod.cli.common import exit_code, exit_codes, next_steps
from kpod.data.records import DataError
from kpod.engine.train import NonFiniteLossError
from kpod.recipe import RecipeError
from kpod.runs import RunWriteError
from kpod.teach.base import TeacherError, TeacherUnavailable
from tests.helpers import TINY

runner = CliRunner()


def _app(command) -> typer.Typer:
    """A one-command app wrapped the way kpod/cli/__init__.py wraps every command."""
    one = typer.Typer()
    one.command()(exit_codes(command))
    return one


@pytest.mark.parametrize("error,code", [
    (RecipeError("train.lrr: unknown field"), 2),
    (DataError("data.json:3: no answer"), 2),
    (TeacherError("teacher.api.base_url: not set"), 2),
    (TeacherUnavailable("the endpoint kept failing"), 1),  # a TeacherError, but a failed run, not bad input
    (RunWriteError("runs/x/metrics.jsonl: disk full"), 1),
    (NonFiniteLossError("loss is nan at step 3"), 1),
])
def test_each_known_error_is_one_line_with_its_exit_code(error, code):
    def command() -> None:
        raise error

    res = runner.invoke(_app(command), [])
    assert res.exit_code == code and exit_code(error) == code
    assert res.output.strip() == f"error: {error}" and "Traceback" not in res.output


def test_an_unknown_error_and_a_plain_ctrl_c_are_not_turned_into_exit_codes():
    def bug() -> None:
        raise ValueError("a bug")

    res = runner.invoke(_app(bug), [])
    assert isinstance(res.exception, ValueError)  # a bug keeps its traceback

    def interrupted() -> None:
        raise KeyboardInterrupt

    res = runner.invoke(_app(interrupted), [])
    assert res.exit_code != 0 and "error:" not in res.output  # click's own "Aborted!"


def test_next_steps_add_their_hint_and_keep_the_errors_exit_code():
    made = []

    def command(kind: str) -> None:
        with next_steps({RunWriteError: lambda: f"hint made {len(made)}", KeyboardInterrupt: lambda: "rerun it"}):
            made.append(1)  # a hint is made when the error happens, not when the block opens
            if kind == "write":
                raise RunWriteError("x.json: disk full")
            if kind == "ctrl-c":
                raise KeyboardInterrupt
            raise RecipeError("seed: must be an integer")  # no hint for it: unchanged

    res = runner.invoke(_app(command), ["write"])
    assert res.exit_code == 1 and res.output.strip() == "error: x.json: disk full; hint made 1"
    res = runner.invoke(_app(command), ["ctrl-c"])
    assert res.exit_code == 130 and res.output.strip() == "error: interrupted; rerun it"
    res = runner.invoke(_app(command), ["recipe"])
    assert res.exit_code == 2 and res.output.strip() == "error: seed: must be an integer"


def test_every_command_is_registered_with_the_policy():
    registered = {c.name: c.callback for c in app.registered_commands}
    assert set(registered) == {name for name, _ in COMMANDS}
    for name, command in COMMANDS:
        assert registered[name].__wrapped__ is command, name


def _recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def test_run_failures_name_the_checkpoint_and_the_resume_command(tmp_path, monkeypatch):
    import kpod.engine.run

    recipe, out = _recipe(tmp_path), tmp_path / "run"

    def fails_with(error):
        def run_recipe(*args, **kwargs):
            raise error

        monkeypatch.setattr(kpod.engine.run, "run_recipe", run_recipe)
        res = runner.invoke(app, ["run", str(recipe), "--out", str(out)])
        return res.exit_code, " ".join(res.output.split())

    assert fails_with(NonFiniteLossError("loss is nan at step 3")) == (
        1, "error: loss is nan at step 3; no checkpoint had been written yet")
    assert fails_with(RunWriteError(f"{out}/metrics.jsonl: No space left on device")) == (
        1, f"error: {out}/metrics.jsonl: No space left on device; no checkpoint had been written yet; free "
           f"space, then continue with: kpod run {recipe} --resume --out {out}")
    assert fails_with(KeyboardInterrupt()) == (130, f"error: interrupted; continue with: kpod run {recipe} --resume --out {out}")


def test_teach_failures_say_that_the_replies_are_saved(tmp_path, monkeypatch):
    import kpod.teach.run

    recipe, out = _recipe(tmp_path), tmp_path / "teach"

    def fails_with(error):
        def teach(*args, **kwargs):
            raise error

        monkeypatch.setattr(kpod.teach.run, "teach", teach)
        res = runner.invoke(app, ["teach", str(recipe), "--out", str(out)])
        return res.exit_code, " ".join(res.output.split())

    assert fails_with(TeacherUnavailable("429 after 8 attempts")) == (1, "error: 429 after 8 attempts")
    assert fails_with(TeacherError("teacher.api: OPENAI_API_KEY is not set")) == (
        2, "error: teacher.api: OPENAI_API_KEY is not set")
    assert fails_with(RunWriteError("cache.jsonl: disk full")) == (
        1, "error: cache.jsonl: disk full; every earlier reply is saved — free space, then rerun the same command to resume")
    assert fails_with(KeyboardInterrupt()) == (
        130, f"error: interrupted; every finished reply is saved — rerun the same command to resume ({out})")


def test_an_interrupted_sweep_says_its_finished_runs_are_kept(tmp_path, monkeypatch):
    import kpod.ablate

    def execute(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(kpod.ablate, "execute", execute)
    res = runner.invoke(app, ["ablate", str(_recipe(tmp_path)), "--seeds", "1", "--out", str(tmp_path / "abl")])
    assert res.exit_code == 130
    assert f"error: interrupted; finished runs are kept in {tmp_path / 'abl'}; rerun the same command to continue" in \
        " ".join(res.output.split())
