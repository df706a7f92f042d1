"""The tiny students built from a config (``student.model: tiny:llama`` or ``tiny:t5``).

Built with random weights by :func:`kpod.models.student.load_student` or pre-trained once by
:mod:`kpod.models.pretrain`; both take the architecture from here.
"""

from __future__ import annotations

from typing import Any


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
