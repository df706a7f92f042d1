"""The report's plots, each a function of plain data returning PNG bytes (matplotlib, Agg)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any


class ReportError(ValueError):
    """A report cannot be made (not a run directory, matplotlib missing); names the file."""


def _plt() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ReportError("kpod report draws its plots with matplotlib: pip install 'kpod[plot]'") from None
    return plt


def _png(fig: Any) -> bytes:
    plt = _plt()
    buf = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=80)
    finally:
        plt.close(fig)
    return buf.getvalue()


def _integer_x(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def training_curves(events: Sequence[dict[str, Any]]) -> bytes:
    """Loss components, learning rate and tokens/s over optimizer steps (``phase: train`` events)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    steps = [e["step"] for e in events]
    for key, label in (("loss", "loss (weighted)"), ("ce_rationale", "rationale CE"), ("ce_answer", "answer CE")):
        pts = [(s, e[key]) for s, e in zip(steps, events) if isinstance(e.get(key), (int, float))]
        if pts:
            axes[0].plot(*zip(*pts), label=label, lw=1.4)
    axes[0].set_title("training loss")
    axes[0].legend(fontsize=8)
    for ax, key, title in ((axes[1], "lr", "learning rate"), (axes[2], "tokens_per_s", "tokens / s")):
        pts = [(s, e[key]) for s, e in zip(steps, events) if isinstance(e.get(key), (int, float))]
        if pts:
            ax.plot(*zip(*pts), lw=1.4, color="#555")
        ax.set_title(title)
    epochs = {}
    for e in events:
        epochs.setdefault(e.get("epoch"), e["step"])
    for ax in axes:
        ax.set_xlabel("step")
        _integer_x(ax)
        for ep, first in epochs.items():  # stage (epoch) boundaries
            if isinstance(ep, int) and ep > 1:
                ax.axvline(first, color="#bbb", lw=0.8, ls=":")
    return _png(fig)


def eval_curve(
    curves: dict[str, list[tuple[int, float]]],
    finals: dict[str, list[tuple[int, float]]],
    selection: dict[str, Any] | None,
) -> bytes:
    """Accuracy per evaluation during training for each split (lines), the final evaluations at
    the step of the model they evaluated (squares) and the selected step (star, dashed line)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    colors: dict[str, Any] = {}
    for split, pts in curves.items():
        pts = sorted(pts)
        (line,) = ax.plot([s for s, _ in pts], [100 * a for _, a in pts], marker="o", ms=4, label=f"{split} (during training)")
        colors[split] = line.get_color()
    for split, pts in finals.items():
        ax.plot([s for s, _ in pts], [100 * a for _, a in pts], ls="none", marker="s", ms=6, mfc="none",
                color=colors.get(split), label=f"{split} (final)")
    if selection and isinstance(selection.get("step"), int):
        ax.axvline(selection["step"], color="#c0392b", ls="--", lw=1)
        acc = selection_accuracy(selection)
        if acc is not None:
            ax.plot([selection["step"]], [100 * acc], marker="*", ms=14, color="#c0392b", ls="none",
                    label=f"selected: step {selection['step']} ({selection.get('split', '')})")
    ax.set_xlabel("step")
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=7)
    _integer_x(ax)
    return _png(fig)


def selection_accuracy(selection: dict[str, Any]) -> float | None:
    """The selected step's score: ``accuracy``, or ``score`` when the metric is accuracy."""
    for key in ("accuracy", "score"):
        v = selection.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return None


def curriculum(stages_info: Sequence[dict[str, Any]], counts: Sequence[dict[int, int]], title: str) -> bytes:
    """Target budget D(t) vs achieved difficulty H(t) (knapsack schedulers), and questions per
    number of given steps c in each stage."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    trained = [s for s in stages_info if isinstance(s.get("epoch"), int)]  # stages that became epochs
    if trained:
        t = [s["epoch"] for s in trained]
        axes[0].plot(t, [s["target_D"] for s in trained], marker="o", ms=3, label="target D(t)")
        axes[0].plot(t, [s["achieved_H"] for s in trained], marker="x", ms=4, label="achieved H(t)")
        axes[0].set_xlabel("epoch (stage)")
        axes[0].set_ylabel("output difficulty (nats)")
        axes[0].legend(fontsize=8)
    else:
        axes[0].text(0.5, 0.5, "no difficulty budget\n(this scheduler has none)", ha="center", va="center")
        axes[0].set_axis_off()
    cs = sorted({c for stage in counts for c in stage})
    bottom = [0] * len(counts)
    cmap = plt.get_cmap("viridis")
    for j, c in enumerate(cs):
        vals = [stage.get(c, 0) for stage in counts]
        axes[1].bar(range(1, len(counts) + 1), vals, bottom=bottom, label=f"c={c}",
                    color=cmap(j / max(1, len(cs) - 1)))
        bottom = [b + v for b, v in zip(bottom, vals)]
    axes[1].set_xlabel("epoch (stage)")
    axes[1].set_ylabel("questions")
    axes[1].set_title("leading steps given as input (c)")
    if cs:
        axes[1].legend(fontsize=7, ncol=2)
    for ax in axes:
        _integer_x(ax)
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def histogram(counts: Sequence[int], edges: Sequence[float], xlabel: str) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3))
    widths = [b - a for a, b in zip(edges[:-1], edges[1:])]
    ax.bar(edges[:-1], counts, width=widths, align="edge", color="#4c72b0", edgecolor="white")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("steps")
    return _png(fig)


def bars_with_ci(rows: Sequence[dict[str, Any]], ylabel: str, title: str) -> bytes:
    """Mean with its interval per variant (``kpod ablate``'s rows)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(rows)), 3.4))
    means = [r["mean"] for r in rows]
    lo = [m - r["ci_low"] if not math.isnan(r["ci_low"]) else 0 for m, r in zip(means, rows)]
    hi = [r["ci_high"] - m if not math.isnan(r["ci_high"]) else 0 for m, r in zip(means, rows)]
    ax.bar(range(len(rows)), means, yerr=[lo, hi], capsize=4, color="#4c72b0")
    ax.set_xticks(list(range(len(rows))))
    ax.set_xticklabels([r["variant"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return _png(fig)
