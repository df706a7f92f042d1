"""`kpod report`: a self-contained page whose images and tables are there (the HTML is parsed);
validation accuracy across training with the selected step when the run has them; robust to
unfinished runs; `kpod ablate`'s sweep report."""

from __future__ import annotations

import base64
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("matplotlib")

from kpod.ablate import RunResult, RunSpec, Variant, aggregate, write_outputs  # noqa: E402
from kpod.cli import app  # noqa: E402
from kpod.engine.run import run_recipe  # noqa: E402
from kpod.reports.figures import ReportError  # noqa: E402
from kpod.reports.run_report import build_run_report  # noqa: E402
from tests.helpers import (
    KPOD_TINY,  # noqa: E402
    tiny_recipe,  # noqa: E402
)


class Page(HTMLParser):
    """Sections (by id) with their images, tables (header + rows of cell text) and weight spans."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, dict] = {}
        self.current: dict | None = None
        self.cell: list[str] | None = None
        self.row: list[str] | None = None
        self.external: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        for key in ("src", "href"):
            if key in a and not str(a[key]).startswith(("data:", "#")):
                self.external.append(a[key])
        if tag == "section":
            self.current = self.sections.setdefault(a["id"], {"images": [], "tables": [], "spans": 0, "text": []})
        elif self.current is None:
            return
        elif tag == "img":
            self.current["images"].append(a["src"])
        elif tag == "table":
            self.current["tables"].append([])
        elif tag == "tr":
            self.row = []
        elif tag in ("td", "th"):
            self.cell = []
        elif tag == "span" and "background" in a.get("style", ""):
            self.current["spans"] += 1

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.row is not None and self.cell is not None:
            self.row.append("".join(self.cell).strip())
            self.cell = None
        elif tag == "tr" and self.row is not None and self.current is not None:
            self.current["tables"][-1].append(self.row)
            self.row = None
        elif tag == "section":
            self.current = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)
        if self.current is not None:
            self.current["text"].append(data)


def parse(text: str) -> Page:
    p = Page()
    p.feed(text)
    return p


def _png(src: str) -> bytes:
    assert src.startswith("data:image/png;base64,")
    data = base64.b64decode(src.split(",", 1)[1], validate=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return data


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("report") / "run"
    run_recipe(tiny_recipe(**{**KPOD_TINY, "eval": {"splits": ["validation", "test"], "max_new_tokens": 24}}), run, quiet=True)
    return run


def test_report_page_has_its_images_and_tables(run_dir, tmp_path):
    out = tmp_path / "r.html"
    res = CliRunner().invoke(app, ["report", str(run_dir), "--out", str(out), "--worst", "3"])
    assert res.exit_code == 0, res.output
    page = parse(out.read_text())
    assert page.external == [] and "script" not in page.tags and "link" not in page.tags  # opens offline
    s = page.sections
    assert set(s) >= {"summary", "training", "accuracy-across-training", "curriculum", "step-difficulty",
                      "token-weights", "worst-predictions", "recipe"}
    for section in ("training", "curriculum", "step-difficulty"):
        assert len(s[section]["images"]) == 1, section
        _png(s[section]["images"][0])
    summary = json.loads((run_dir / "summary.json").read_text())
    acc = next(t for t in s["summary"]["tables"] if t[0][:2] == ["split", "accuracy (%)"])
    assert {r[0]: (r[1], int(r[3])) for r in acc[1:]} == {
        k: (f"{100 * v['accuracy']:.1f}", v["count"]) for k, v in summary["splits"].items()}
    # the keypoint AUC with its split by kind (mask learning on the built-in set has the side data)
    auc = summary["weighting"]["keypoint_auc"]
    cells = {r[0]: r[1] for t in s["summary"]["tables"] for r in t if len(r) == 2}
    kinds = ", ".join(f"{k} {v['auc']:.3f}" for k, v in auc["by_kind"].items())
    assert cells["keypoint ROC-AUC of the weights"].startswith(f"{auc['auc']:.3f} ({kinds}): ") and "number" in kinds
    assert "below 0.5 = calculation tokens get less weight than filler" in cells["keypoint ROC-AUC of the weights"]
    (curr,) = s["curriculum"]["tables"]
    plan = json.loads((run_dir / "plan.json").read_text())
    assert len(curr) - 1 == len(plan["stages"]) and curr[0][0] == "epoch"
    assert int(curr[1][1]) == len(plan["stages"][0])
    (diff,) = s["step-difficulty"]["tables"]
    hist = summary["scheduler"]["difficulty"]["histogram"]
    assert int(diff[1][0]) == sum(hist["counts"])
    # heatmap: one span per rationale token of the sampled rationales
    rows = [json.loads(x) for x in (run_dir / "weights_sample.jsonl").read_text().splitlines()]
    assert s["token-weights"]["spans"] == sum(len(r["tokens"]) for r in rows) > 0
    # worst predictions: at most 3 wrong ones per split, each a real wrong prediction
    preds = {p["sample_id"]: p for p in map(json.loads, (run_dir / "predictions.jsonl").read_text().splitlines())}
    tables = s["worst-predictions"]["tables"]
    assert len(tables) == 2
    for t in tables:
        assert t[0] == ["sample_id", "prompt", "output", "parsed", "gold"]
        assert 1 <= len(t) - 1 <= 3 and all(not preds[r[0]]["correct"] for r in t[1:])
    assert "weighting:" in "".join(s["recipe"]["text"])


def test_report_plots_accuracy_across_training_and_marks_the_selected_step(run_dir, tmp_path):
    """The engine's in-training evaluations (model selection's) and summary.json's selection, when present."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    events = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events if e.get("phase") != "eval"))
    with open(run / "metrics.jsonl", "a") as f:
        for step, acc in ((6, 0.25), (12, 0.5), (18, 0.375)):
            f.write(json.dumps({"phase": "eval", "split": "validation", "step": step, "accuracy": acc, "count": 8,
                                "correct": int(8 * acc), "during_training": True}) + "\n")
        # the final evaluation of the selected model: logged at the last step, of the model of step 12
        f.write(json.dumps({"phase": "eval", "split": "validation", "step": 18, "model_step": 12, "accuracy": 0.5,
                            "count": 8, "correct": 4}) + "\n")
    summary = json.loads((run / "summary.json").read_text())
    # summary.json's selection block as the engine writes it (eval.select_on)
    summary["selection"] = {"split": "validation", "metric": "accuracy", "step": 12, "score": 0.5, "last_step": 18,
                            "evaluations": [{"step": 6, "accuracy": 0.25}, {"step": 12, "accuracy": 0.5}]}
    (run / "summary.json").write_text(json.dumps(summary))
    s = parse(build_run_report(run)).sections
    sec = s["accuracy-across-training"]
    assert len(sec["images"]) == 1 and _png(sec["images"][0])
    (t,) = sec["tables"]
    during = [r for r in t[1:] if r[1] == "validation" and r[3] == "during training"]
    assert [int(r[0]) for r in during] == [6, 12, 18]
    assert [r for r in t[1:] if r[4] == "selected"] == [["12", "validation", "50.0", "during training", "selected"]]
    assert ["12", "validation", "50.0", "final (model of step 12)", ""] in t
    assert any(r[0] == "selected model" and "step 12 of 18" in r[1] and "50.0" in r[1] for r in s["summary"]["tables"][0])


def test_report_of_a_run_evaluated_only_at_the_end(run_dir, tmp_path):
    """Runs without evaluations during training (before model selection, or eval.select_on: null)."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    events = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events if not e.get("during_training")))
    summary = json.loads((run / "summary.json").read_text())
    summary.pop("selection", None)
    (run / "summary.json").write_text(json.dumps(summary))
    s = parse(build_run_report(run)).sections
    assert s["accuracy-across-training"]["images"] == []
    assert "no evaluation during training" in "".join(s["accuracy-across-training"]["text"])


def test_report_of_an_unfinished_run_and_of_no_run(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    for name in ("summary.json", "predictions.jsonl", "plan.json", "weights_sample.jsonl"):
        (run / name).unlink()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"phase": "train", "st')  # torn by a kill
    s = parse(build_run_report(run)).sections
    assert "has not finished" in "".join(s["summary"]["text"])
    assert len(s["training"]["images"]) == 1
    assert s["curriculum"]["images"] == [] and s["worst-predictions"]["tables"] == []
    with pytest.raises(ReportError, match="not a run directory"):
        build_run_report(tmp_path)
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "not a run directory" in res.output


def test_ablate_writes_a_sweep_report_beside_table_md(tmp_path):
    out = tmp_path / "abl"
    results = []
    for name, accs in (("scheduler=none", (0.5, 0.6)), ("scheduler=linear", (0.7, 0.65))):
        v = Variant(name, Path("recipes/std_cot.yaml"), [], {"scheduler": name.split("=")[1]})
        for seed, acc in enumerate(accs):
            summary = {"splits": {"test": {"accuracy": acc, "count": 10, "correct": int(10 * acc)}}}
            results.append(RunResult(RunSpec(v, seed, out / v.slug / f"seed{seed}"), "done", summary))
    v = Variant("scheduler=broken", Path("recipes/std_cot.yaml"))
    results.append(RunResult(RunSpec(v, 0, out / v.slug / "seed0"), "failed", None, "exit 2: boom"))
    write_outputs(results, aggregate(results), out)
    assert (out / "table.md").exists()
    page = parse((out / "report.html").read_text())
    assert page.external == []
    sec = page.sections["test-accuracy"]
    assert len(sec["images"]) == 1 and _png(sec["images"][0])
    (t,) = sec["tables"]
    assert [r[0] for r in t[1:]] == ["scheduler=none", "scheduler=linear"]
    assert t[2][2] == "67.5 ± 3.5"
    runs = page.sections["runs"]["tables"][0]
    assert len(runs) - 1 == 5 and ["scheduler=broken", "0", "failed", "–", "scheduler-broken/seed0"] in runs
    assert "boom" in "".join(page.sections["failed-runs"]["text"])


def test_heatmap_uses_one_colour_scale_for_all_rationales():
    """The same weight gets the same colour in every rationale, on a scale from 0 stated on the page;
    a narrow band (0.82-0.93) is not stretched from white to full red."""
    import re

    from kpod.reports.run_report import _weights_section

    def row(sid, ws):
        text = " ".join(f"t{i}" for i in range(len(ws)))
        offsets = [(3 * i, 3 * i + 2) for i in range(len(ws))]
        return {"sample_id": sid, "rationale": text, "offsets": offsets, "weights": ws, "tokens": text.split()}

    html = _weights_section([row("narrow", [0.82, 0.9, 0.93]), row("wide", [0.1, 0.9, 0.5])])
    alpha = {}
    for body in re.findall(r'<div class="id">\w+ · .*?</div>(.*?)</div>', html):
        for w, a in re.findall(r'title="([\d.]+)" style="background:rgba\(220,38,38,([\d.]+)\)"', body):
            alpha.setdefault(w, set()).add(float(a))
    (a90,) = alpha["0.900"]  # one colour in both rationales
    assert a90 == pytest.approx(0.75 * 0.9, abs=1e-3)
    (a82,), (a93,) = alpha["0.820"], alpha["0.930"]
    assert a82 == pytest.approx(0.75 * 0.82, abs=1e-3) and a93 == pytest.approx(0.75 * 0.93, abs=1e-3)
    assert "one colour scale for all rationales: white = weight 0, full red = weight 1.000" in html
