"""Students: tiny ones from a config, and Hugging Face models loaded from a local path."""

from __future__ import annotations

import pytest

from kpod.engine.distributed import resolve_precision
from kpod.engine.run import run_recipe
from kpod.models.student import StudentError, load_pretrained, load_student
from kpod.recipe import StudentConfig
from tests.helpers import tiny_recipe, train_events

TEXTS = ["Q: Tom has 12 apples. A: 12 + 30 = 42 apples. Therefore, the answer is 42"] * 20


@pytest.mark.parametrize(("kind", "enc_dec"), [("tiny:llama", False), ("tiny:t5", True)])
def test_saved_student_reloads_from_a_local_path(tmp_path, kind, enc_dec):
    cfg = StudentConfig(model=kind, tiny={"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
                        tokenizer={"vocab_size": 100})
    s = load_student(cfg, TEXTS)
    assert s.is_encoder_decoder is enc_dec
    s.model.save_pretrained(tmp_path / "m")
    s.tokenizer.save_pretrained(tmp_path / "m")
    again = load_pretrained(str(tmp_path / "m"))
    assert again.is_encoder_decoder is enc_dec  # decided by config.is_encoder_decoder, not the name
    assert again.tokenizer("12 + 30")["input_ids"] == s.tokenizer("12 + 30")["input_ids"]
    assert type(again.model).__name__ == type(s.model).__name__


def test_pretrained_student_path_trains_end_to_end(tmp_path):
    cfg = StudentConfig(model="tiny:llama", tiny={"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
                        tokenizer={"vocab_size": 300})
    from kpod.data.load import load_data, template_from

    recipe = tiny_recipe(train={"epochs": 1, "max_steps": 3})
    texts = [template_from(recipe).serialize(r).text for r in load_data(recipe)["train"]]
    s = load_student(cfg, texts)
    s.model.save_pretrained(tmp_path / "student")
    s.tokenizer.save_pretrained(tmp_path / "student")
    run = tmp_path / "run"
    summary = run_recipe(tiny_recipe(student={"model": str(tmp_path / "student")}, train={"epochs": 1, "max_steps": 3}), run, quiet=True)
    assert summary["student"]["model"] == str(tmp_path / "student")
    assert len(train_events(run)) == 3


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(StudentError, match="student.model"):
        load_pretrained(str(tmp_path / "no-such-model"))


def test_fp16_with_t5_is_rejected():
    s = load_student(StudentConfig(model="tiny:t5", tiny={"hidden_size": 32, "num_layers": 1, "num_heads": 2,
                                                          "intermediate_size": 64}, tokenizer={"vocab_size": 100}), TEXTS)
    with pytest.raises(StudentError, match="train.precision"):
        resolve_precision("fp16", s)
    assert resolve_precision("auto", s) in ("fp32", "bf16")


@pytest.mark.parametrize(("dtype", "want"), [("fp32", "float32"), ("bf16", "bfloat16"), ("fp16", "float16"), ("auto", "float16")])
def test_pretrained_weights_load_in_fp32_unless_the_recipe_says_otherwise(tmp_path, dtype, want):
    """An fp16 checkpoint: fp32 master weights by default (transformers 5 would keep its stored fp16)."""
    import torch

    cfg = StudentConfig(model="tiny:llama", tiny={"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
                        tokenizer={"vocab_size": 100})
    s = load_student(cfg, TEXTS)
    s.model.half().save_pretrained(tmp_path / "m")
    s.tokenizer.save_pretrained(tmp_path / "m")
    fields = {} if dtype == "fp32" else {"dtype": dtype}  # fp32: the default
    loaded = load_student(StudentConfig(model=str(tmp_path / "m"), **fields))
    assert {p.dtype for p in loaded.model.parameters()} == {getattr(torch, want)}
    if dtype == "fp32":  # exact upcast of the stored values
        for (n, a), (_, b) in zip(s.model.state_dict().items(), loaded.model.state_dict().items()):
            assert torch.equal(a.float(), b), n
