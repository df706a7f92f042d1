"""``attention``: token weights from the attention a reference model pays to the rationale.

Definition. The reference model (default: the student as initialised; or any HF model by
``params.model``) reads the full training serialisation teacher-forced, with eager attention.
For rationale token ``j`` and answer positions ``A`` (the tokens of the answer sentence, EOS
included — for encoder–decoder models, the decoder's answer positions over the decoder's
rationale tokens)::

    a_j = mean over layers l, heads h, and i in A of  attn[l, h, i, j]
    w_j = a_j / max_k a_k            (k over the rationale's tokens; so w ∈ (0, 1])

``a_j > 0`` because softmax attention is positive, so no weight is 0. Weights are stored per
sample_id over character spans, like every strategy's.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from kpod.cache import model_digest
from kpod.data.padding import pad_batch
from kpod.data.tokenize import anchors_from_offsets
from kpod.models.student import load_pretrained
from kpod.registry import WEIGHTING
from kpod.weighting.base import CharSpanWeights, WeightingContext, WeightingStrategy


@WEIGHTING
class AttentionWeighting(WeightingStrategy):
    name: ClassVar[str] = "attention"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        model: str | None = Field(None, description="reference model (HF id/path); default: the student as initialised")
        gguf_file: str | None = Field(
            None, description="a GGUF checkpoint file inside `model` (de-quantized once and cached, as student.gguf_file)"
        )
        batch_size: int = Field(32, ge=1)
        cache: bool = True
        revision: str | None = None
        trust_remote_code: bool = False

        @model_validator(mode="after")
        def _gguf_needs_model(self) -> AttentionWeighting.Params:
            if self.gguf_file is not None and self.model is None:
                raise ValueError("gguf_file: names a file inside `model`; set model too")
            return self

    params: Params
    _loaded: Any = None  # params.model, once loaded

    def compute(self, ctx: WeightingContext) -> CharSpanWeights:
        _, template = ctx.student_and_template(self.name)
        ref, device = self._reference(ctx), ctx.device
        model = ref.model
        prev = getattr(model.config, "_attn_implementation", None)
        model.set_attn_implementation("eager")
        was_training = model.training
        model.eval()
        model.to(device)
        try:
            weights = self._weights(model, ref.tokenizer, ref.is_encoder_decoder, ctx.records, template, device)
        finally:
            model.train(was_training)
            if prev is not None:
                model.set_attn_implementation(prev)
        self.report = {"reference": self.params.model or "student"}
        return weights

    def cache_inputs(self, ctx: WeightingContext) -> dict[str, Any] | None:
        """Every weight and the vocabulary size of the reference model."""
        if not self.params.cache:
            return None
        ref = self._reference(ctx)
        return {"reference": model_digest(ref.model), "vocab": len(ref.tokenizer)}

    def _reference(self, ctx: WeightingContext) -> Any:
        """The student, or ``params.model`` loaded once (the key and the pass share it)."""
        student, _ = ctx.student_and_template(self.name)
        if self.params.model is None:
            return student
        if self._loaded is None:
            self._loaded = load_pretrained(
                self.params.model,
                self.params.revision,
                self.params.trust_remote_code,
                gguf_file=self.params.gguf_file,
                field="weighting.params.model",
                gguf_field="weighting.params.gguf_file",
            )
        return self._loaded

    @torch.no_grad()
    def _weights(self, model: Any, tok: Any, enc_dec: bool, records: list[Any], template: Any, device: torch.device) -> CharSpanWeights:
        out: CharSpanWeights = {}
        todo = [r for r in records if r.steps]
        bs = self.params.batch_size
        for i in range(0, len(todo), bs):
            rows = [_row(r, template, tok, enc_dec) for r in todo[i : i + bs]]
            for row, a in zip(rows, self._attend(model, rows, enc_dec, tok.pad_token_id or 0, device)):
                r, ser = row["record"], row["ser"]
                rs, ans = ser.rationale_start, ser.answer_span[0]
                anchors = row["anchors"]
                # rationale tokens with visible text (whitespace-only tokens have no characters)
                rat = [k for k, x in enumerate(anchors) if rs <= x < ans and row["ends"][k] > x]
                ansp = [k for k, x in enumerate(anchors) if x >= ans]
                shift = row["shift"]  # position of token k in the attention matrix is k + shift
                scores = a[[k + shift for k in ansp]][:, [k + shift for k in rat]].mean(0)
                scores = scores / scores.max().clamp_min(1e-12)
                out[r.sample_id] = [
                    (int(anchors[k]) - rs, min(int(row["ends"][k]) - rs, len(r.rationale)), float(scores[j]))
                    for j, k in enumerate(rat)
                ]
        return out

    def _attend(self, model: Any, rows: list[dict[str, Any]], enc_dec: bool, pad: int, device: torch.device) -> list[torch.Tensor]:
        """Per row: ``[L, L]`` attention averaged over layers and heads (decoder self-attention
        for encoder–decoder models, whose decoder input is ``[start] + target``)."""
        seqs = [row["ids"] for row in rows]
        if enc_dec:
            start = model.config.decoder_start_token_id
            seqs = [[start, *x] for x in seqs]
        ids, att = pad_batch(seqs, pad)
        if enc_dec:
            src, satt = pad_batch([row["src"] for row in rows], pad)
            out = model(
                input_ids=src.to(device), attention_mask=satt.to(device),
                decoder_input_ids=ids.to(device), decoder_attention_mask=att.to(device), output_attentions=True,
            )
            layers = out.decoder_attentions
        else:
            out = model(input_ids=ids.to(device), attention_mask=att.to(device), output_attentions=True)
            layers = out.attentions
        mean = torch.stack([a.float() for a in layers]).mean(dim=(0, 2)).cpu()  # [B, L, L]
        return [mean[i, : len(x), : len(x)] for i, x in enumerate(seqs)]


def _row(r: Any, template: Any, tok: Any, enc_dec: bool) -> dict[str, Any]:
    """Token ids, absolute anchors and token ends of one serialisation (target side for seq2seq)."""
    ser = template.serialize(r)
    eos, end = tok.eos_token_id, len(ser.text)
    if enc_dec:
        rs = ser.rationale_start
        tgt = ser.text[rs:]
        enc = tok(tgt, return_offsets_mapping=True, add_special_tokens=False)
        anchors = [*anchors_from_offsets(tgt, enc["offset_mapping"], shift=rs), end]
        ends = [e + rs for _, e in enc["offset_mapping"]] + [end]
        src = tok(ser.text[:rs].rstrip(), add_special_tokens=False)["input_ids"] + [eos]
        return {"record": r, "ser": ser, "ids": [*enc["input_ids"], eos], "anchors": anchors, "ends": ends, "src": src, "shift": 1}
    enc = tok(ser.text, return_offsets_mapping=True, add_special_tokens=False)
    ids, anchors = [*enc["input_ids"], eos], [*anchors_from_offsets(ser.text, enc["offset_mapping"]), end]
    ends = [e for _, e in enc["offset_mapping"]] + [end]
    bos = tok.bos_token_id
    if bos is not None and bos != eos:
        ids, anchors, ends = [bos, *ids], [-1, *anchors], [0, *ends]
    return {"record": r, "ser": ser, "ids": ids, "anchors": anchors, "ends": ends, "src": None, "shift": 0}
