"""``kpod weights``: token weights per sample as JSONL, and an HTML heatmap (paper Figure 2)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from kpod.data.records import Record
from kpod.data.template import PromptTemplate
from kpod.data.tokenize import CharWeights
from kpod.runs import atomic_write_text, writing
from kpod.weighting.base import CharSpanWeights
from kpod.weighting.tokens import rationale_tokens


def token_rows(
    records: list[Record], weights: CharSpanWeights | None, template: PromptTemplate, tokenizer: Any
) -> list[dict[str, Any]]:
    """Per sample: the student's rationale tokens, their character offsets and weights."""
    rows = []
    for r in records:
        toks = rationale_tokens(r, template, tokenizer)
        cw = CharWeights((weights or {}).get(r.sample_id))
        rows.append(
            {
                "sample_id": r.sample_id,
                "rationale": r.rationale,
                "tokens": tokenizer.convert_ids_to_tokens(toks.rat_ids),
                "offsets": [list(s) for s in toks.rat_spans],
                "weights": [round(cw(s), 6) for s, _ in toks.rat_spans],
            }
        )
    return rows


def write_jsonl(rows: list[dict[str, Any]], path: Path) -> None:
    """Atomically (a full disk leaves no half-written file); RunWriteError names the file."""
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def render_html(rows: list[dict[str, Any]], title: str, limit: int = 50) -> str:
    """Rationales with each token's background intensity set by its weight."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.9}"
        ".s{margin:1.2em 0;padding:.6em;border:1px solid #ddd;border-radius:6px}"
        ".id{color:#888;font-size:.8em}span.t{border-radius:3px}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p>Background intensity = token weight (0 white, 1 red).</p>",
    ]
    for row in rows[:limit]:
        text, pos, out = row["rationale"], 0, []
        for (s, e), w in zip(row["offsets"], row["weights"]):
            if s > pos:
                out.append(html.escape(text[pos:s]))
            out.append(
                f"<span class='t' title='{w:.3f}' style='background:rgba(220,38,38,{max(0.0, min(1.0, w)):.3f})'>"
                f"{html.escape(text[s:e])}</span>"
            )
            pos = e
        out.append(html.escape(text[pos:]))
        parts.append(f"<div class='s'><div class='id'>{html.escape(row['sample_id'])}</div>{''.join(out)}</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_weight_sample(
    run_dir: Path, train: list[Record], weights: CharSpanWeights | None, template: PromptTemplate, tokenizer: Any,
    n: int = 6,
) -> None:
    """``RUN_DIR/weights_sample.jsonl``: tokens and weights of the first ``n`` training rationales
    (`kpod report`'s heatmap)."""
    rows = token_rows([r for r in train if r.steps][:n], weights, template, tokenizer)
    write_jsonl(rows, run_dir / "weights_sample.jsonl")
