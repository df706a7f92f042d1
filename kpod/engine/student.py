"""Students: any Hugging Face causal or seq2seq model, or a tiny one built from a config.

The architecture is decided by ``config.is_encoder_decoder`` (never by the model's name).
Tiny students get a BPE tokenizer trained in-process on the training text (digits split).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from kpod.data.tokenize import train_tokenizer


@dataclass
class Student:
    model: Any  # transformers PreTrainedModel
    tokenizer: Any  # a fast tokenizer (offsets are required)
    is_encoder_decoder: bool
    source: str  # "tiny:llama", hub id or path


class StudentError(ValueError):
    """The student cannot be built as the recipe asks (names the recipe field)."""


def build_tiny(kind: str, tiny: Any, tokenizer: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    vocab = len(tokenizer)
    if kind == "tiny:llama":
        cfg = LlamaConfig(
            vocab_size=vocab,
            hidden_size=tiny.hidden_size,
            intermediate_size=tiny.intermediate_size,
            num_hidden_layers=tiny.num_layers,
            num_attention_heads=tiny.num_heads,
            num_key_value_heads=tiny.num_heads,
            max_position_embeddings=tiny.max_positions,
            attention_dropout=tiny.dropout,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        return LlamaForCausalLM(cfg)
    cfg = T5Config(
        vocab_size=vocab,
        d_model=tiny.hidden_size,
        d_kv=tiny.hidden_size // tiny.num_heads,
        d_ff=tiny.intermediate_size,
        num_layers=tiny.num_layers,
        num_decoder_layers=tiny.num_layers,
        num_heads=tiny.num_heads,
        feed_forward_proj="gated-gelu",
        dropout_rate=tiny.dropout,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5ForConditionalGeneration(cfg)


def load_student(cfg: Any, train_texts: Iterable[str] | None = None, seed: int = 0) -> Student:
    """Build or load the student described by the recipe's ``student`` section."""
    torch.manual_seed(seed)
    if cfg.model.startswith("tiny:"):
        if train_texts is None:
            raise StudentError("student.model: a tiny student needs training text for its tokenizer")
        tok = train_tokenizer(train_texts, cfg.tokenizer.vocab_size)
        model = build_tiny(cfg.model, cfg.tiny, tok)
        return Student(model, tok, bool(model.config.is_encoder_decoder), cfg.model)
    return load_pretrained(cfg.model, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)


def load_pretrained(name: str, revision: str | None = None, trust_remote_code: bool = False) -> Student:
    """A Hugging Face model by hub id or local path (``AutoModelForCausalLM`` or ``…Seq2SeqLM``)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise StudentError(
            f"student.model: cannot load {name!r} ({e.__class__.__name__}: {str(e).splitlines()[0]}). "
            "Offline? Use a local path, or set HF_HUB_OFFLINE=0 with network access."
        ) from None
    tok = AutoTokenizer.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    if not getattr(tok, "is_fast", False):
        raise StudentError(f"student.model: {name!r} has no fast tokenizer; kpod needs offset mappings")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    model = auto.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    return Student(model, tok, bool(config.is_encoder_decoder), name)


def save_student(student: Student, path: str) -> None:
    student.model.save_pretrained(path)
    student.tokenizer.save_pretrained(path)
