"""Every cache entry is checked against the digest written after its data: a truncated, edited
or incomplete entry is reported on one line and rebuilt (or, for token weights, removed with the
rerun that rebuilds it named); an unwritable KPOD_CACHE is an error naming it."""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kpod import cache
from kpod.cache import (
    CacheDamaged,
    CacheUnwritable,
    build_dir,
    read_verified,
    verified_dir,
    write_verified,
)
from kpod.cli import app
from kpod.data.sources import Arith
from kpod.data.template import PromptTemplate
from kpod.difficulty import compute_difficulties
from kpod.models.config import StudentConfig
from kpod.models.student import load_student
from kpod.weighting.cache import load_weights, save_weights
from tests.helpers import TINY, deep_update

runner = CliRunner()

# damage done to a file entry: name → bytes → damaged bytes
FILE_DAMAGE = {
    "truncated": lambda b: b[: len(b) // 2],
    "last line removed": lambda b: b"".join(b.splitlines(True)[:-2] + b.splitlines(True)[-1:]),
    "middle line removed": lambda b: b"".join(b.splitlines(True)[:1] + b.splitlines(True)[2:]),
    "a value edited": lambda b: b.replace(b"0.25", b"0.75", 1),
    "digest line gone": lambda b: b"".join(b.splitlines(True)[:-1]),
    "empty": lambda b: b"",
}
WEIGHTS = {"a/1": [(0, 4, 0.25), (4, 9, 1.0)], "a/2": [(0, 3, 0.5)], "a/3": [(1, 2, 0.25)]}


@pytest.mark.parametrize("damage", list(FILE_DAMAGE))
def test_a_damaged_file_entry_is_reported_removed_and_read_as_missing(tmp_path, damage, caplog):
    path = tmp_path / "difficulty" / "k.json"
    write_verified(path, json.dumps({"a/1": [0.25, 0.5], "a/2": [1.0]}) + "\n" + json.dumps({"x": 1}))
    assert json.loads(read_verified(path).splitlines()[0]) == {"a/1": [0.25, 0.5], "a/2": [1.0]}
    path.write_bytes(FILE_DAMAGE[damage](path.read_bytes()))
    with caplog.at_level(logging.WARNING, logger="kpod.cache"):
        assert read_verified(path) is None
    assert not path.exists()
    [record] = caplog.records
    assert f"{path} is damaged" in record.getMessage() and "\n" not in record.getMessage()


@pytest.mark.parametrize("damage", list(FILE_DAMAGE))
def test_a_damaged_weights_entry_is_removed_and_reported(tmp_path, damage):
    path = tmp_path / "weights" / "mask_learning-abc.jsonl"
    save_weights(path, WEIGHTS, {"fit": 1})
    assert load_weights(path) == (WEIGHTS, {"fit": 1})
    path.write_bytes(FILE_DAMAGE[damage](path.read_bytes()))
    with pytest.raises(CacheDamaged, match=rf"{path}: the token-weights cache entry is damaged .*removed"):
        load_weights(path)
    assert not path.exists()


@pytest.mark.parametrize("damage", list(FILE_DAMAGE))
def test_the_weighting_phase_computes_a_damaged_entry_again(tmp_path, damage):
    """compute_cached: a damaged entry is said on one line and the strategy computes again (once)."""
    from typing import ClassVar

    from pydantic import BaseModel

    from kpod.weighting.base import WeightingContext, WeightingStrategy
    from kpod.weighting.cached import compute_cached

    class Counted(WeightingStrategy):
        name: ClassVar[str] = "counted"

        class Params(BaseModel):
            pass

        calls = 0

        def cache_inputs(self, ctx):
            return {"model": "m"}

        def compute(self, ctx):
            Counted.calls += 1
            self.report = {"fit": Counted.calls}
            return WEIGHTS

    warnings = []
    reporter = type("R", (), {"warn": lambda self, m: warnings.append(m), "info": lambda self, m: None})()
    records = Arith(Arith.Params(n_train=4, n_validation=0, n_test=0, n_ood=0, max_steps=3)).load()["train"]
    ctx = WeightingContext(records=records, seed=0, cache_dir=tmp_path, reporter=reporter)
    strategy = Counted(Counted.Params())
    first, report = compute_cached(strategy, ctx)
    path = Path(report["cache_path"])
    assert first == WEIGHTS and Counted.calls == 1 and not report["cache_hit"]
    path.write_bytes(FILE_DAMAGE[damage](path.read_bytes()))
    again, report = compute_cached(strategy, ctx)
    assert again == WEIGHTS and Counted.calls == 2 and not report["cache_hit"]
    assert len(warnings) == 1 and "damaged" in warnings[0] and "computing the weights again" in warnings[0]
    assert "\n" not in warnings[0]
    _, report = compute_cached(strategy, ctx)  # the rebuilt entry is whole again
    assert report["cache_hit"] and Counted.calls == 2


def test_a_damaged_difficulty_entry_is_computed_again(tmp_path, caplog):
    records = Arith(Arith.Params(n_train=12, n_validation=0, n_test=0, n_ood=0, max_steps=3)).load()["train"]
    template = PromptTemplate()
    cfg = StudentConfig(model="tiny:llama", tiny={"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
                        tokenizer={"vocab_size": 150})
    st = load_student(cfg, [template.serialize(r).text for r in records], seed=0)

    def difficulties():
        return compute_difficulties(st.model, st.tokenizer, False, records, template, None, "mean", cache_dir=tmp_path)

    first = difficulties()
    [entry] = (tmp_path / "difficulty").iterdir()
    entry.write_bytes(entry.read_bytes()[:-40])  # truncated
    with caplog.at_level(logging.WARNING, logger="kpod.cache"):
        again = difficulties()
    assert again == first and "is damaged" in caplog.text
    assert read_verified(entry) is not None  # written again, whole


def _fill(tag: str):
    def build(tmp):
        tmp.mkdir()
        (tmp / "model.safetensors").write_bytes(bytes(range(256)) * 40 + tag.encode())
        (tmp / "sub").mkdir()
        (tmp / "sub" / "tokenizer.json").write_text('{"v": 1}')
        (tmp / "base.json").write_text(tag)
    return build


DIR_DAMAGE = {
    "4,000 bytes zeroed": lambda d: (d / "model.safetensors").write_bytes(
        b"\0" * 4000 + (d / "model.safetensors").read_bytes()[4000:]),
    "truncated weights": lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:100]),
    "marker deleted": lambda d: (d / "base.json").unlink(),
    "a nested file deleted": lambda d: (d / "sub" / "tokenizer.json").unlink(),
    "manifest deleted": lambda d: (d / cache.MANIFEST).unlink(),
    "manifest garbled": lambda d: (d / cache.MANIFEST).write_text("{"),
}


@pytest.mark.parametrize("damage", list(DIR_DAMAGE))
def test_a_damaged_directory_entry_is_reported_removed_and_rebuilt(tmp_path, damage, caplog):
    entry = tmp_path / "pretrained" / "tiny-llama-abc"
    assert build_dir(entry, _fill("one"), "base.json") and verified_dir(entry)
    DIR_DAMAGE[damage](entry)
    with caplog.at_level(logging.WARNING, logger="kpod.cache"):
        assert verified_dir(entry) is False
    assert not entry.exists() and f"{entry} is damaged" in caplog.text
    assert build_dir(entry, _fill("two"), "base.json") and verified_dir(entry)  # the rebuild lands in place
    assert (entry / "base.json").read_text() == "two"


def test_the_pretrained_base_is_rebuilt_when_damaged(tmp_path, monkeypatch, caplog):
    from kpod.models.pretrain import pretrained_base_dir

    student = StudentConfig(model="tiny:llama", tiny={"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
                            tokenizer={"vocab_size": 150}, pretrain={"steps": 3, "documents": 200, "batch_size": 4})
    path, built = pretrained_base_dir(student, tmp_path)
    assert built and pretrained_base_dir(student, tmp_path) == (path, False)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4000] + b"\0" * 4000)  # used silently before
    with caplog.at_level(logging.WARNING, logger="kpod.cache"):
        again, built = pretrained_base_dir(student, tmp_path)
    assert again == path and built and "model.safetensors does not match its digest" in caplog.text
    (path / "base.json").unlink()  # once "Directory not empty" on every later run
    assert pretrained_base_dir(student, tmp_path)[1] is True


def test_an_unwritable_cache_is_an_error_naming_kpod_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KPOD_CACHE", str(tmp_path / "ro"))

    def read_only(path, text):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(cache, "atomic_write_text", read_only)
    with pytest.raises(CacheUnwritable, match=rf"KPOD_CACHE={tmp_path / 'ro'}: cannot write the cache \(Read-only"):
        write_verified(tmp_path / "ro" / "difficulty" / "k.json", "{}")

    def denied(tmp):
        raise PermissionError(errno.EACCES, "Permission denied")

    with pytest.raises(CacheUnwritable, match="Permission denied"):
        build_dir(tmp_path / "ro" / "pretrained" / "x", denied, "base.json")


def test_cli_run_with_an_unusable_cache_is_one_line_exit_2(tmp_path, monkeypatch):
    import yaml

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("KPOD_CACHE", str(blocker / "cache"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(deep_update(TINY, {"student": {"pretrain": {"steps": 2, "documents": 50}}})))
    res = runner.invoke(app, ["run", str(recipe), "--out", str(tmp_path / "run"), "-q"], terminal_width=4000)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and f"KPOD_CACHE={blocker / 'cache'}: cannot write the cache" in lines[0]

