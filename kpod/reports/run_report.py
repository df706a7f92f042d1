"""``kpod report RUN_DIR``: one self-contained HTML page per run, read from its files only.

Sections (each says so when its file is absent, e.g. a run that has not finished):

* summary: recipe name, seed, student, steps, wall time, memory; accuracy per split;
* training curves (``metrics.jsonl``, ``phase: train``): loss components, LR, tokens/s;
* validation accuracy across training (``phase: eval`` events; several per split once the engine
  evaluates during training), with ``summary.json``'s ``selection`` step marked when present;
* the curriculum (``plan.json``): D(t) vs H(t) and questions per given-steps count c per stage;
* step difficulties (``summary.json`` ``scheduler.difficulty.histogram``);
* token weights of a few training rationales (``weights_sample.jsonl``) as a heatmap;
* the worst predictions (``predictions.jsonl``): wrong answers, unreadable ones first, then by
  distance from the gold number;
* the resolved recipe.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from kpod.reports import figures
from kpod.reports.figures import ReportError
from kpod.reports.html import esc, note, page, png_img, table


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a torn last line (a run killed mid-write) is left out, any other bad
    line is an error naming file:line."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines):  # no newline after it: cut short by a kill
                continue
            raise ReportError(f"{path}:{n}: not a JSON line") from None
    return rows


def _pct(x: Any) -> str:
    return f"{100 * x:.1f}" if isinstance(x, (int, float)) and not math.isnan(x) else "–"


def describe_keypoint_auc(report: dict[str, Any]) -> str:
    """``0.881 (number 1.000, operator 0.391, equals 0.480)``: a summary's ``keypoint_auc`` (overall
    and by keypoint kind, kpod.weighting.evaluate) as one line."""
    kinds = ", ".join(f"{k} {v['auc']:.3f}" for k, v in (report.get("by_kind") or {}).items())
    proxy = " [proxy: numbers, operators and '=' vs every other token; no keypoint side data]" if report.get("proxy") else ""
    return f"{report['auc']:.3f}" + (f" ({kinds})" if kinds else "") + proxy


# what the number means, wherever it is shown
KEYPOINT_AUC_MEANING = (
    "the chance that a calculation token (number, operator, '=') gets a higher weight than a filler token: "
    "1 = every calculation token outweighs all filler, 0.5 = no preference, below 0.5 = calculation tokens "
    "get less weight than filler (the weights favour the wrong tokens)"
)


def _summary_section(run: Path, summary: dict[str, Any] | None) -> str:
    if summary is None:
        return note("summary.json is missing: the run has not finished (or failed); what it wrote so far is shown below.")
    s = summary
    student = s.get("student") or {}
    wall = s.get("wall_seconds") or {}
    rows: list[tuple[str, Any]] = [
        ("recipe", s.get("recipe")), ("seed", s.get("seed")),
        ("student", f"{student.get('model', '')} ({student.get('params', 0) / 1e6:.2f}M params)" if student else None),
        ("weighting / scheduler / loss", " / ".join(str(x) for x in (
            (s.get("weighting") or {}).get("name"), (s.get("scheduler") or {}).get("name"), s.get("loss")))
         if s.get("loss") else None),
        ("evaluated model", s.get("model") if s.get("kind") == "eval" else None),
        ("optimizer steps", (s.get("train") or {}).get("steps")),
        ("wall time", f"{wall.get('total', 0):.0f} s (" + ", ".join(
            f"{k} {v:.0f} s" for k, v in (wall.get("phases") or {}).items()) + ")" if wall else None),
        ("peak host memory", f"{s['memory']['host_peak_mib']:.0f} MiB" if (s.get("memory") or {}).get("host_peak_mib") else None),
        ("kpod / torch", f"{s.get('kpod_version')} / {s.get('torch')}" if s.get("torch") else s.get("kpod_version")),
    ]
    auc = (s.get("weighting") or {}).get("keypoint_auc")
    if auc:
        rows.append(("keypoint ROC-AUC of the weights", f"{describe_keypoint_auc(auc)}: {KEYPOINT_AUC_MEANING}"))
    sel = s.get("selection")
    if sel:
        last = f" of {sel['last_step']}" if sel.get("last_step") else ""
        rows.append(("selected model", f"step {sel.get('step')}{last} by {sel.get('split')} accuracy "
                                       f"{_pct(figures.selection_accuracy(sel))} %"))
    info = table(None, [(k, v) for k, v in rows if v is not None])
    splits = s.get("splits") or {}
    acc = table(["split", "accuracy (%)", "correct", "questions"],
                [(k, _pct(v.get("accuracy")), v.get("correct"), v.get("count")) for k, v in splits.items()],
                numeric=(1, 2, 3)) if splits else note("no split was evaluated (eval.splits is empty)")
    return f'<div class="grid"><div>{info}</div><div><h3>Accuracy per split</h3>{acc}</div></div>'


def _training_section(events: list[dict[str, Any]]) -> str:
    train = [e for e in events if e.get("phase") == "train" and isinstance(e.get("step"), int)]
    if not train:
        return note("metrics.jsonl has no training events.")
    last = train[-1]
    return png_img(figures.training_curves(train), "training loss, learning rate and tokens per second") + table(
        ["last step", "loss", "rationale CE", "answer CE", "lr"],
        [(last["step"], last.get("loss"), last.get("ce_rationale"), last.get("ce_answer"), f"{last.get('lr', 0):.3g}")],
        numeric=(0, 1, 2, 3, 4),
    )


def _eval_section(events: list[dict[str, Any]], summary: dict[str, Any] | None) -> str:
    """Evaluations during training (model selection) as curves; final evaluations at the step of
    the model they evaluated (``model_step``, else ``step``); the selected step marked."""
    evals = [e for e in events if e.get("phase") == "eval" and isinstance(e.get("step"), int)
             and isinstance(e.get("accuracy"), (int, float))]
    curves: dict[str, list[tuple[int, float]]] = {}
    finals: dict[str, list[tuple[int, float]]] = {}
    for e in evals:
        if e.get("during_training"):
            curves.setdefault(str(e.get("split")), []).append((e["step"], float(e["accuracy"])))
        else:
            at = e["model_step"] if isinstance(e.get("model_step"), int) else e["step"]
            finals.setdefault(str(e.get("split")), []).append((at, float(e["accuracy"])))
    selection = (summary or {}).get("selection")
    if not curves:
        return note("One evaluation at the end of training (no evaluation during training in this run)"
                    + ("." if not selection else f"; selected step {selection.get('step')}."))
    body = png_img(figures.eval_curve(curves, finals, selection), "accuracy across training")
    sel = (selection.get("step"), selection.get("split")) if selection else None
    rows = sorted([(s, k, _pct(a), "during training", "selected" if sel == (s, k) else "")
                   for k, v in curves.items() for s, a in v]
                  + [(s, k, _pct(a), f"final (model of step {s})", "") for k, v in finals.items() for s, a in v])
    return body + table(["step", "split", "accuracy (%)", "evaluation", "model selection"], rows, numeric=(0, 2))


def _curriculum_section(plan: dict[str, Any] | None, summary: dict[str, Any] | None) -> str:
    if plan is None:
        return note("plan.json is missing.")
    stages = plan.get("stages") or []
    info = plan.get("info") or {}
    knap = info.get("stages") or (info.get("kpod") or {}).get("stages") or []
    over = plan.get("given_all") or {}  # whole-rationale-given records: at their step count
    counts = []
    for st in stages:
        hist: dict[int, int] = {}
        for sid, c in st.items():
            c = over.get(sid, c)
            hist[int(c)] = hist.get(int(c), 0) + 1
        counts.append(hist)
    name = info.get("scheduler") or ((summary or {}).get("scheduler") or {}).get("name", "")
    if not stages:
        return note(f"{name}: no curriculum (every epoch trains on full rationales).")
    img = png_img(figures.curriculum(knap, counts, f"{name}: {len(stages)} stages"), "curriculum budget and given steps")
    rows = []
    for t, hist in enumerate(counts):
        n = sum(hist.values())
        mean_c = sum(c * k for c, k in hist.items()) / n if n else 0.0
        k = next((s for s in knap if s.get("epoch") == t + 1), None)
        rows.append((t + 1, n, hist.get(0, 0), f"{mean_c:.2f}",
                     f"{k['target_D']:.1f}" if k else "–", f"{k['achieved_H']:.1f}" if k else "–"))
    epochs = ((summary or {}).get("train") or {}).get("epochs")
    after = (note(f"Epochs {len(stages) + 1}–{epochs} come after the plan and train on full rationales.")
             if isinstance(epochs, int) and epochs > len(stages) else "")
    return img + table(["epoch", "questions", "full rationale (c=0)", "mean c", "target D(t)", "achieved H(t)"], rows,
                       numeric=(0, 1, 2, 3, 4, 5)) + after


def _difficulty_section(summary: dict[str, Any] | None) -> str:
    diff = (((summary or {}).get("scheduler") or {}).get("difficulty") or {})
    hist = diff.get("histogram")
    if not hist or not hist.get("counts"):
        return note("No step difficulties in this run (the scheduler does not use them).")
    img = png_img(figures.histogram(hist["counts"], hist["edges"], f"step difficulty (nats, within_step={diff.get('within_step')})"),
                  "step difficulty histogram")
    return img + table(["steps", "mean", "std", "total B"], [(sum(hist["counts"]), diff.get("mean"), diff.get("std"), diff.get("total_B"))],
                       numeric=(0, 1, 2, 3))


def _weights_section(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return note("weights_sample.jsonl is missing (runs from before kpod 0.1's report).")
    # one scale for every rationale, from weight 0: a scale per rationale would paint a narrow band
    # (0.82-0.93) from white to full red and make filler look like keypoints
    all_ws = [float(w) for row in rows for w in row["weights"]]
    top = max([1.0, *all_ws])
    parts = [f"<p>Each token's weight in the loss, on one colour scale for all rationales: white = weight 0, "
             f"full red = weight {top:.3f} (1, or the largest weight shown if above 1); each rationale's range "
             "is given above it; hover for the value.</p>"]
    for row in rows:
        text, pos, out = row["rationale"], 0, []
        ws = [float(w) for w in row["weights"]]
        lo, hi = (min(ws), max(ws)) if ws else (0.0, 0.0)
        for (s, e), w in zip(row["offsets"], ws):
            if s > pos:
                out.append(esc(text[pos:s]))
            a = 0.75 * max(w, 0.0) / top
            out.append(f'<span title="{w:.3f}" style="background:rgba(220,38,38,{a:.3f})">{esc(text[s:e])}</span>')
            pos = e
        out.append(esc(text[pos:]))
        parts.append(f'<div class="w"><div class="id">{esc(row["sample_id"])} · weights {lo:.3f}–{hi:.3f}</div>'
                     f'{"".join(out)}</div>')
    return "".join(parts)


def _badness(p: dict[str, Any]) -> float:
    """How wrong a prediction is: unreadable answers first, then by distance from the gold."""
    try:
        return abs(float(str(p.get("parsed")).replace(",", "")) - float(str(p.get("gold")).replace(",", "")))
    except ValueError:
        return math.inf


def _predictions_section(preds: list[dict[str, Any]], limit: int) -> str:
    if not preds:
        return note("predictions.jsonl is missing or empty.")
    parts = []
    by_split: dict[str, list[dict[str, Any]]] = {}
    for p in preds:
        by_split.setdefault(str(p.get("split")), []).append(p)
    for split, rows in by_split.items():
        wrong = sorted((p for p in rows if not p.get("correct")), key=_badness, reverse=True)
        parts.append(f"<h3>{esc(split)}: {len(wrong)} of {len(rows)} wrong"
                     + (f", the {min(limit, len(wrong))} worst" if wrong else "") + "</h3>")
        if not wrong:
            continue
        body = []
        for p in wrong[:limit]:
            out = str(p.get("output", ""))
            out = out if len(out) <= 400 else out[:400] + " …"
            body.append(f"<tr><td>{esc(p.get('sample_id'))}</td><td>{esc(p.get('prompt'))}</td>"
                        f'<td class="out">{esc(out)}</td><td>{esc(p.get("parsed"))}</td><td>{esc(p.get("gold"))}</td></tr>')
        parts.append("<table><thead><tr><th>sample_id</th><th>prompt</th><th>output</th><th>parsed</th><th>gold</th></tr></thead>"
                     f"<tbody>{''.join(body)}</tbody></table>")
    return "".join(parts)


def build_run_report(run_dir: str | Path, worst: int = 8) -> str:
    """The HTML page for one run directory."""
    run = Path(run_dir)
    if not run.is_dir() or not ((run / "recipe.resolved.yaml").exists() or (run / "summary.json").exists()):
        raise ReportError(f"{run}: not a run directory (no recipe.resolved.yaml or summary.json)")
    summary = _read_json(run / "summary.json") if (run / "summary.json").exists() else None
    plan = _read_json(run / "plan.json") if (run / "plan.json").exists() else None
    events = read_jsonl(run / "metrics.jsonl")
    recipe_text = (run / "recipe.resolved.yaml").read_text(encoding="utf-8") if (run / "recipe.resolved.yaml").exists() else ""
    name = (summary or {}).get("recipe") or run.name
    sections = [
        ("Summary", _summary_section(run, summary)),
        ("Training", _training_section(events)),
        ("Accuracy across training", _eval_section(events, summary)),
        ("Curriculum", _curriculum_section(plan, summary)),
        ("Step difficulty", _difficulty_section(summary)),
        ("Token weights", _weights_section(read_jsonl(run / "weights_sample.jsonl"))),
        ("Worst predictions", _predictions_section(read_jsonl(run / "predictions.jsonl"), worst)),
        ("Recipe", f"<details><summary>recipe.resolved.yaml</summary><pre>{esc(recipe_text)}</pre></details>"
         if recipe_text else note("recipe.resolved.yaml is missing.")),
    ]
    return page(f"kpod run: {name}", str(run.resolve()), sections)


def write_run_report(run_dir: str | Path, out: str | Path | None = None, worst: int = 8) -> Path:
    """``kpod report``: writes ``out`` (default ``RUN_DIR/report.html``) atomically."""
    from kpod.runs import atomic_write_text

    path = Path(out) if out is not None else Path(run_dir) / "report.html"
    atomic_write_text(path, build_run_report(run_dir, worst))
    return path
