"""The shared helpers below the components: kpod.cache (keys, atomic writes), kpod.data.padding,
and PromptTemplate.from_config."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch

from kpod.cache import build_dir, cache_root, fingerprint, model_digest, tensor_digest, write_file
from kpod.data.padding import lengths_mask, pad_batch, pad_to
from kpod.data.template import PromptTemplate
from kpod.recipe import TemplateConfig
from kpod.runs import RunWriteError


def test_pad_to_right_and_left_with_value_and_dtype():
    rows = [[1, 2, 3], [4], []]
    right = pad_to(rows, -100)
    assert right.tolist() == [[1, 2, 3], [4, -100, -100], [-100, -100, -100]]
    assert right.dtype == torch.long
    left = pad_to(rows, 0, side="left")
    assert left.tolist() == [[1, 2, 3], [0, 0, 4], [0, 0, 0]]
    wide = pad_to([np.array([0.5, 0.25], dtype=np.float32)], 0.0, dtype=torch.float32, width=4)
    assert wide.tolist() == [[0.5, 0.25, 0.0, 0.0]]
    with pytest.raises(ValueError, match="narrower"):
        pad_to(rows, 0, width=2)
    with pytest.raises(ValueError, match="side"):
        pad_to(rows, 0, side="middle")  # type: ignore[arg-type]


def test_pad_to_keeps_trailing_dims_and_gradients():
    a = torch.randn(2, 3, requires_grad=True)
    b = torch.randn(1, 3, requires_grad=True)
    out = pad_to([a, b], 0.0, dtype=torch.float32)
    assert out.shape == (2, 2, 3)
    assert torch.equal(out[1, 1], torch.zeros(3))
    out.sum().backward()
    assert torch.equal(a.grad, torch.ones(2, 3)) and torch.equal(b.grad, torch.ones(1, 3))


def test_pad_batch_masks_real_tokens_on_the_padded_side():
    ids, mask = pad_batch([[7, 8], [9]], pad_id=0)
    assert ids.tolist() == [[7, 8], [9, 0]] and mask.tolist() == [[1, 1], [1, 0]]
    ids, mask = pad_batch([[7, 8], [9]], pad_id=0, side="left", mask_dtype=torch.bool)
    assert ids.tolist() == [[7, 8], [0, 9]] and mask.tolist() == [[True, True], [False, True]]
    assert lengths_mask([0, 3], 3).tolist() == [[0, 0, 0], [1, 1, 1]]


def test_fingerprint_is_canonical_and_sensitive():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})  # key order
    assert fingerprint([(1, 2)]) == fingerprint([[1, 2]])  # tuples are JSON lists
    assert fingerprint({"a": 1}) != fingerprint({"a": 1.5})
    assert fingerprint("x", "y") != fingerprint("xy")


def test_tensor_and_model_digests_see_dtype_shape_and_every_weight():
    t = torch.arange(6, dtype=torch.float32)
    assert tensor_digest(t) == tensor_digest(t.clone())
    assert tensor_digest(t) != tensor_digest(t.view(2, 3))
    assert tensor_digest(t) != tensor_digest(t.double())
    m = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    before = model_digest(m)
    with torch.no_grad():
        m[1].bias[0] += 1e-6
    assert model_digest(m) != before


def test_cache_root_and_atomic_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KPOD_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    path = cache_root() / "kind" / "key.json"
    write_file(path, "{}")
    assert path.read_text() == "{}" and [p.name for p in path.parent.iterdir()] == ["key.json"]


def test_build_dir_first_copy_wins_and_failures_leave_nothing(tmp_path):
    out = tmp_path / "entry"

    def build(tag: str):
        def fill(tmp):
            tmp.mkdir()
            (tmp / "data").write_text(tag)
            (tmp / "done").write_text("")

        return fill

    assert build_dir(out, build("first"), "done") is True
    assert build_dir(out, build("second"), "done") is False  # a lost race keeps the first copy
    assert (out / "data").read_text() == "first"

    def broken(tmp):
        tmp.mkdir()
        raise OSError("disk full")

    with pytest.raises(RunWriteError, match=r"cannot write .*other\.[0-9]+\.[0-9a-f]+\.tmp: disk full"):
        build_dir(tmp_path / "other", broken, "done")
    with pytest.raises(RuntimeError, match="no done"):
        build_dir(tmp_path / "other", lambda tmp: tmp.mkdir(), "done")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]

    results = []
    threads = [threading.Thread(target=lambda i=i: results.append(build_dir(tmp_path / "race", build(str(i)), "done")))
               for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert results.count(True) == 1 and (tmp_path / "race" / "done").is_file()


def test_prompt_template_from_the_recipe_section():
    assert {f.name for f in dataclasses.fields(PromptTemplate)} == set(TemplateConfig.model_fields)
    cfg = TemplateConfig(question_prefix="Question: ", trigger="", use_rationale=False)
    t = PromptTemplate.from_config(cfg)
    assert t == PromptTemplate(question_prefix="Question: ", trigger="", use_rationale=False)
