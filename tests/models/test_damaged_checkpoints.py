"""Damaged or hostile model files are one-line exit-2 errors of `kpod eval`, never tracebacks:
truncated, empty and oversized-header safetensors, a pytorch_model.bin that pickles code (refused,
and the code never runs), truncated and empty GGUF files."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kpod.cli import app

runner = CliRunner()
WEIGHTS = "model.safetensors"


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    from kpod.data.tokenize import train_tokenizer
    from kpod.models.config import TinyModelConfig
    from kpod.models.student import Student, save_student
    from kpod.models.tiny import build_tiny

    tok = train_tokenizer(["Q: 1 + 2 ? A: 3"] * 20, 100)
    model = build_tiny("tiny:llama", TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tok)
    path = tmp_path_factory.mktemp("model") / "good"
    save_student(Student(model, tok, False, "tiny:llama"), str(path))
    return path


class RunsCode:
    """Unpickling this would create the marker file (what a malicious checkpoint does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _eval(tmp_path: Path, model: Path | str) -> str:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: t\nstudent: {model: tiny:llama}\neval: {limit: 2}\n")
    res = runner.invoke(app, ["eval", str(model), "--recipe", str(recipe), "--data", "arith", "-o", str(tmp_path / "o"), "-q"],
                        terminal_width=4000)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


@pytest.mark.parametrize("damage, says", [
    (lambda b: b[: len(b) // 2], "incomplete metadata"),
    (lambda b: b"", "header too small"),
    (lambda b: (2**40).to_bytes(8, "little") + b"{}", "header too large"),
])
def test_a_damaged_safetensors_file_is_one_line(tmp_path, saved_model, damage, says):
    model = tmp_path / "m"
    shutil.copytree(saved_model, model)
    (model / WEIGHTS).write_bytes(damage((model / WEIGHTS).read_bytes()))
    line = _eval(tmp_path, model)
    assert f"{model}: cannot read the weights (SafetensorError" in line and says in line


def test_a_pytorch_model_bin_that_pickles_code_is_refused_and_nothing_runs(tmp_path, saved_model):
    model, marker = tmp_path / "m", tmp_path / "code-ran"
    shutil.copytree(saved_model, model)
    (model / WEIGHTS).unlink()
    with open(model / "pytorch_model.bin", "wb") as f:
        pickle.dump({"model.embed_tokens.weight": RunsCode(marker)}, f)
    line = _eval(tmp_path, model)
    assert "refused to load pytorch_model.bin" in line and "nothing in it was run" in line
    assert not marker.exists()


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory) -> bytes:
    pytest.importorskip("gguf", reason="the GGUF file is written with the gguf package (pip install 'kpod[gguf]')")
    from tests.gguf_writer import write_tiny_llama_gguf

    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_llama_gguf(path, seed=0)
    return path.read_bytes()


@pytest.mark.parametrize("cut, says", [
    (lambda b: b[: len(b) // 2], "cannot read this GGUF file"),
    (lambda b: b[:100], "cannot read this GGUF file (struct.error"),
    (lambda b: b"", "an empty file, not a GGUF checkpoint"),
    (lambda b: b"PK\x03\x04" + b[4:], "not a GGUF file"),
])
def test_a_damaged_gguf_file_is_one_line(tmp_path, gguf_bytes, cut, says, monkeypatch):
    monkeypatch.setenv("KPOD_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "bad.gguf"
    path.write_bytes(cut(gguf_bytes))
    line = _eval(tmp_path, path)
    assert f"{path}: {says}" in line
    cache = tmp_path / "cache" / "gguf"
    assert not cache.exists() or not any(cache.iterdir())  # nothing half-converted left in the cache
