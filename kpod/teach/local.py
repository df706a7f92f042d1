"""A local Hugging Face teacher: batched generation from a causal or encoder-decoder model.

The prompt is the tokenizer's chat template applied to the messages (``prompt_format: chat``),
or their plain-text form (:func:`kpod.teach.prompts.plain_text`). Token counts come from the
tokenizer: prompt tokens fed, completion tokens generated up to and including EOS (or the stop
token). ``generate_contrastive`` is SCOTT's contrastive decoding (``teacher.hf.contrastive``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from kpod.teach.base import Completion, TeacherError
from kpod.teach.contrastive import contrastive_greedy, open_stream
from kpod.teach.prompts import Message, Sampling, plain_text
from kpod.teacher_config import ContrastiveConfig, TeacherHFConfig


class HFTeacher:
    def __init__(self, model: str, cfg: TeacherHFConfig, gguf_file: str | None = None) -> None:
        from transformers import (
            AutoConfig,
            AutoModelForCausalLM,
            AutoModelForSeq2SeqLM,
            AutoTokenizer,
        )

        from kpod.models.gguf import resolve
        from kpod.models.student import StudentError, resolve_model_name

        kw = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
        try:
            model = resolve_model_name(model, "teacher.model")
            if gguf_file is not None:  # a GGUF checkpoint: load the cached de-quantized copy instead
                model = resolve(model, gguf_file, "teacher.gguf_file", cfg.revision)
                kw["revision"] = None
        except StudentError as e:
            raise TeacherError(str(e)) from None
        try:
            config = AutoConfig.from_pretrained(model, **kw)
            tok = AutoTokenizer.from_pretrained(model, **kw)
        except OSError as e:
            raise TeacherError(
                f"teacher.model: cannot load {model!r} ({e.__class__.__name__}: {str(e).splitlines()[0]}). "
                "Offline? Use a local path, or set HF_HUB_OFFLINE=0 with network access."
            ) from None
        self.is_encoder_decoder = bool(config.is_encoder_decoder)
        auto = AutoModelForSeq2SeqLM if self.is_encoder_decoder else AutoModelForCausalLM
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
        self.model = auto.from_pretrained(model, **kw).to(self.device).eval()
        self.tokenizer = tok
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if self.pad_id is None:
            raise TeacherError(f"teacher.model: {model!r} has neither a pad nor an EOS token")
        has_template = bool(getattr(tok, "chat_template", None))
        if cfg.prompt_format == "chat" and not has_template:
            raise TeacherError(
                f"teacher.hf.prompt_format: 'chat', but {model!r} has no chat template; use 'plain' or 'auto'"
            )
        self.prompt_format = "chat" if (cfg.prompt_format == "chat" or (cfg.prompt_format == "auto" and has_template)) else "plain"

    def render(self, messages: list[Message]) -> str:
        """The exact text the model is given (part of the cache key)."""
        if self.prompt_format == "plain":
            return plain_text(messages)
        text: Any = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return str(text)

    def _ids(self, text: str) -> list[int]:
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        eos, bos = self.tokenizer.eos_token_id, self.tokenizer.bos_token_id
        if self.is_encoder_decoder:
            return [*ids, eos] if eos is not None else ids
        if self.prompt_format == "plain" and bos is not None and bos != eos and ids[:1] != [bos]:
            ids = [bos, *ids]  # as kpod's own evaluation feeds causal models
        return ids

    def _batch(self, prompts: Sequence[str]) -> tuple[list[list[int]], torch.Tensor, torch.Tensor]:
        """Token ids per prompt, and the padded batch: causal models left-padded (generation
        continues at the right edge), encoder inputs right-padded."""
        ids = [self._ids(p) for p in prompts]
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(ids), width), dtype=torch.long)
        for i, x in enumerate(ids):
            sl = slice(0, len(x)) if self.is_encoder_decoder else slice(width - len(x), width)  # causal: left pad
            input_ids[i, sl] = torch.tensor(x)
            attention[i, sl] = 1
        return ids, input_ids, attention

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], sampling: Sampling, seed: int) -> list[Completion]:
        """One completion per prompt; sampling (temperature > 0) is seeded by ``seed``."""
        start = time.monotonic()
        ids, input_ids, attention = self._batch(prompts)
        width = input_ids.shape[1]
        kw: dict[str, Any] = {"do_sample": False, "num_beams": 1}
        if sampling.temperature > 0:
            kw = {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p}
            torch.manual_seed(seed)
        out = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention.to(self.device),
            max_new_tokens=sampling.max_tokens,
            pad_token_id=self.pad_id,
            eos_token_id=self.tokenizer.eos_token_id,
            **kw,
        )
        gen = (out if self.is_encoder_decoder else out[:, width:]).tolist()
        latency = round(time.monotonic() - start, 3)
        results = []
        eos = self.tokenizer.eos_token_id
        for x, g in zip(ids, gen):
            if self.is_encoder_decoder and g[:1] == [self.model.config.decoder_start_token_id]:
                g = g[1:]
            stop = eos is not None and eos in g
            g = g[: g.index(eos) + 1] if stop else g
            text = self.tokenizer.decode(g, skip_special_tokens=True)
            results.append(Completion(text.strip(), "stop" if stop else "length", len(x), len(g), 1, latency))
        return results

    def stop_ids(self, texts: Sequence[str]) -> set[int]:
        """EOS plus the one token of each stop text (``teacher.hf.contrastive.stop``)."""
        out = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        for text in texts:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise TeacherError(f"teacher.hf.contrastive.stop: {text!r} is {len(ids)} tokens of the teacher's "
                                   "tokenizer, not one")
            out.add(int(ids[0]))
        if not out:
            raise TeacherError("teacher.hf.contrastive.stop: the teacher has no EOS token; give a stop text")
        return out

    @torch.no_grad()
    def generate_contrastive(
        self, prompts: Sequence[str], contrasts: Sequence[str], max_tokens: int, cfg: ContrastiveConfig
    ) -> list[Completion]:
        """SCOTT's contrastive decoding: ``prompts[i]`` (the answer to explain) against
        ``contrasts[i]`` (the perturbed or empty answer), greedy, in lock-step (kpod.teach.contrastive)."""
        start = time.monotonic()
        ids, gold_ids, gold_mask = self._batch(prompts)
        _, pert_ids, pert_mask = self._batch(contrasts)
        dev = self.device
        decoded = contrastive_greedy(
            open_stream(self.model, gold_ids.to(dev), gold_mask.to(dev)),
            open_stream(self.model, pert_ids.to(dev), pert_mask.to(dev)),
            max_new_tokens=max_tokens, stop_ids=self.stop_ids(cfg.stop),
            gamma=cfg.gamma, temperature=cfg.tau,
        )
        latency = round(time.monotonic() - start, 3)
        out = []
        for x, d in zip(ids, decoded):
            text, cut = cut_at_stop(self.tokenizer.decode(d.tokens, skip_special_tokens=True), cfg.stop)
            # completion tokens count the stop token, as generate() counts EOS
            out.append(Completion(text.strip(), "stop" if d.stopped or cut else "length", len(x),
                                  len(d.tokens) + d.stopped, 1, latency))
        return out


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to its first stop text: a stop text merged into a longer token (``"\\n\\n"``
    inside ``".\\n\\n"``) does not stop the decoding, but ends the rationale all the same."""
    at = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text, False) if at < 0 else (text[:at], True)
