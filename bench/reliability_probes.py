"""Hostile-input and fault probes through the CLI, each judged the same way: the command must end
within its time limit with the expected exit code and, on an error, one line without a traceback
(plus a check of its own where the outcome needs one).

    python bench/reliability_probes.py                      # this checkout
    mkdir -p /tmp/old && git archive REV kpod | tar -x -C /tmp/old
    KPOD_PROBE_TREE=/tmp/old python bench/reliability_probes.py   # the CLI of another revision

Prints one row per probe (class, probe, ok/DEFECT, what happened) and the count per class.
Runs on a CPU in about 3 minutes; writes only under a temporary directory.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.helpers import TINY, deep_update  # noqa: E402

RUN = deep_update(TINY, {"name": "probe", "train": {"epochs": 2, "batch_size": 8, "checkpoint_every": 4},
                         "eval": {"splits": ["test"], "max_new_tokens": 16}})
Row = tuple[str, str, bool, str]


def _cap_memory() -> None:
    """At most 6 GiB of address space: a probe that would exhaust the machine fails instead."""
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))


def _cli() -> list[str]:
    """``python -m kpod.cli``, or under ``KPOD_PROBE_TREE`` the kpod package in that directory
    (an editable install's import hook would otherwise win over PYTHONPATH)."""
    tree = os.environ.get("KPOD_PROBE_TREE")
    if not tree:
        return [sys.executable, "-m", "kpod.cli"]
    code = ("import runpy, sys; sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in "
            f"getattr(f, '__module__', '')]; sys.path.insert(0, {tree!r}); sys.argv[0] = 'kpod'; "
            "runpy.run_module('kpod.cli', run_name='__main__')")
    return [sys.executable, "-c", code]


def kpod(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> tuple[int | None, str]:
    """(exit code or None on timeout, stderr+stdout) of ``python -m kpod.cli ARGS``."""
    try:
        res = subprocess.run([*_cli(), *args], capture_output=True, text=True,
                             timeout=timeout, env={**os.environ, "COLUMNS": "4000", **(env or {})},
                             preexec_fn=_cap_memory)
    except subprocess.TimeoutExpired:
        return None, f"still running after {timeout:.0f} s"
    return res.returncode, res.stderr + res.stdout


def one_line_error(code: int | None, out: str, expect: int = 2) -> tuple[bool, str]:
    lines = [x for x in out.strip().splitlines() if x.strip()]
    if code is None:
        return False, out
    summary = (lines[-1] if lines else "")[:160]
    ok = code == expect and len(lines) == 1 and "Traceback" not in out
    return ok, f"exit {code}, {len(lines)} line(s): {summary}"


def recipe_probes(d: Path) -> list[Row]:
    rows: list[Row] = []
    base = d / "ok.yaml"
    base.write_text("name: r\n")
    (d / "sub").mkdir()
    lol = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    files = {
        "billion laughs": lol, "nesting 5,000 deep": "[" * 5000 + "]" * 5000,
        "34 MB recipe": "name: big\n" + "# padding\n" * 3_400_000,
        "extends: /etc": "extends: /etc\n", "extends: sub": "extends: sub\n", 'extends: ""': 'extends: ""\n',
        "extends: /dev/zero": "extends: /dev/zero\n",
    }
    for name, text in files.items():
        path = d / f"{len(rows)}.yaml"
        path.write_text(text)
        ok, what = one_line_error(*kpod("validate", str(path), timeout=60))
        rows.append(("recipe", name, ok, what))
    for name, override in [("--set 3,000 deep", "x=" + "[" * 3000), ("seed overflow", "seed=99999999999999999999"),
                           ("lr inf", "train.lr=.inf"), ("lr 1e309", "train.lr=1e309"),
                           ("name ../../escaped", "name=../../escaped")]:
        ok, what = one_line_error(*kpod("validate", str(base), "--set", override, timeout=60))
        rows.append(("recipe", name, ok, what))
    return rows


def data_probes(d: Path) -> list[Row]:
    rows: list[Row] = []
    good = [{"id": f"q{i}", "question": f"What is {i} + 2?", "rationale": f"{i} + 2 = {i + 2}.", "answer": str(i + 2)}
            for i in range(6)]
    big = json.dumps({**good[0], "id": "big", "x": 0}).replace('"x": 0', '"x": ' + "9" * 5000)
    deep = json.dumps({**good[0], "id": "deep", "x": 0}).replace('"x": 0', '"x": ' + "[" * 200_000 + "]" * 200_000)
    lines = [json.dumps(r) for r in good]
    cases = {
        "5,000-digit integer (.jsonl)": ("a.jsonl", "\n".join([*lines, big]) + "\n", 2),
        "5,000-digit integer (.json)": ("b.json", "[" + ",".join([*lines, big]) + "]", 2),
        "200,000-deep nesting (.jsonl)": ("c.jsonl", "\n".join([*lines, deep]) + "\n", 2),
        "upper.JSONL": ("upper.JSONL", "\n".join(lines) + "\n", 0),
    }
    for name, (file, text, expect) in cases.items():
        (d / file).write_text(text)
        recipe = d / f"{file}.yaml"
        recipe.write_text(yaml.safe_dump(deep_update({k: v for k, v in TINY.items() if k != "data"}, {
            "data": {"source": {"name": "local", "params": {"files": {"train": str(d / file)}, "fields": {"id": "id"}}}}})))
        code, out = kpod("data", str(recipe), timeout=120)
        ok, what = (code == 0, f"exit {code}") if expect == 0 else one_line_error(code, out)
        rows.append(("data rows", name, ok, what))
    return rows


def model_probes(d: Path) -> list[Row]:
    from transformers.utils import logging as hf_logging

    from kpod.data.tokenize import train_tokenizer
    from kpod.models.config import TinyModelConfig
    from kpod.models.student import Student, save_student
    from kpod.models.tiny import build_tiny

    hf_logging.disable_progress_bar()
    tok = train_tokenizer(["Q: 1 + 2 ? A: 3"] * 20, 100)
    model = build_tiny("tiny:llama", TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tok)
    rows: list[Row] = []
    recipe = d / "eval.yaml"
    recipe.write_text("name: t\nstudent: {model: tiny:llama}\neval: {limit: 2}\n")
    weights = "model.safetensors"

    class RunsCode:
        def __reduce__(self):
            return (Path.touch, (d / "code-ran",))

    def evil(m: Path) -> None:
        (m / weights).unlink()
        (m / "pytorch_model.bin").write_bytes(pickle.dumps({"w": RunsCode()}))

    damage: dict[str, Callable[[Path], None]] = {
        "truncated safetensors": lambda m: (m / weights).write_bytes((m / weights).read_bytes()[:5000]),
        "empty safetensors": lambda m: (m / weights).write_bytes(b""),
        "oversized safetensors header": lambda m: (m / weights).write_bytes((2**40).to_bytes(8, "little") + b"{}"),
        "malicious pytorch_model.bin": evil,
    }
    for i, (name, fn) in enumerate(damage.items()):
        m = d / f"model{i}"
        save_student(Student(model, tok, False, "tiny:llama"), str(m))
        fn(m)
        ok, what = one_line_error(*kpod("eval", str(m), "--recipe", str(recipe), "--data", "arith", "-o", str(d / "o"), "-q"))
        rows.append(("model files", name, ok and not (d / "code-ran").exists(), what))
    try:
        from tests.gguf_writer import write_tiny_llama_gguf

        full = d / "full.gguf"
        write_tiny_llama_gguf(full, seed=0)
        for name, data in [("truncated .gguf", full.read_bytes()[:100]), ("empty .gguf", b"")]:
            g = d / f"{name.split()[0]}.gguf"
            g.write_bytes(data)
            ok, what = one_line_error(*kpod("eval", str(g), "--recipe", str(recipe), "--data", "arith", "-o", str(d / "o"), "-q",
                                            env={"KPOD_CACHE": str(d / "gcache")}))
            rows.append(("model files", name, ok, what))
    except ImportError:
        pass
    return rows


def _start_stopped(recipe: Path, out: Path, log: Path, step: int) -> subprocess.Popen:
    env = {**os.environ, "KPOD_FAULT": f"after-step:{step}"}
    with open(log, "wb") as f:
        proc = subprocess.Popen([*_cli(), "run", str(recipe), "--out", str(out), "-q"],
                                stdout=f, stderr=subprocess.STDOUT, env=env)
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), log.read_text()
    return proc


def run_probes(d: Path) -> list[Row]:
    rows: list[Row] = []
    recipe = d / "run.yaml"
    recipe.write_text(yaml.safe_dump(RUN))
    out = d / "busy"
    holder = _start_stopped(recipe, out, d / "holder.log", 2)
    try:
        before = (out / "metrics.jsonl").read_bytes()
        for name, extra in [("second run --overwrite", ["--overwrite", "--set", "train.lr=1e-3"]), ("second run --resume", ["--resume"])]:
            code, text = kpod("run", str(recipe), "--out", str(out), "-q", *extra, timeout=300)
            ok, what = one_line_error(code, text)
            rows.append(("two runs, one directory", name, ok and (out / "metrics.jsonl").read_bytes() == before, what))
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    code, text = kpod("run", str(recipe), "--out", str(out), "-q", "--resume", timeout=300)
    rows.append(("two runs, one directory", "resume after the holder died", code == 0, f"exit {code}"))
    # an epoch end's selection evaluation, then a kill: is it listed twice after --resume?
    sel = d / "sel.yaml"
    sel.write_text(yaml.safe_dump(deep_update(RUN, {"eval": {"select_on": "validation"}})))
    out = d / "sel"
    proc = _start_stopped(sel, out, d / "sel.log", 13)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    kpod("run", str(sel), "--out", str(out), "-q", "--resume", timeout=300)
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"during_training": true' in x]
    rows.append(("resume", "selection evaluations after a kill", len(steps) == len(set(steps)), f"evaluated steps {steps}"))
    return rows


def cache_probes(d: Path) -> list[Row]:
    rows: list[Row] = []
    cache = d / "cache"
    recipe = d / "pre.yaml"
    recipe.write_text(yaml.safe_dump(deep_update(RUN, {"train": {"epochs": 1}, "eval": {"splits": []},
                                                       "student": {"pretrain": {"steps": 5, "documents": 200, "batch_size": 4}}})))
    env = {"KPOD_CACHE": str(cache)}
    kpod("run", str(recipe), "--out", str(d / "p0"), "-q", env=env, timeout=300)
    [base] = (cache / "pretrained").iterdir()
    weights = base / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4000] + b"\0" * 4000)
    code, out = kpod("run", str(recipe), "--out", str(d / "p1"), "-q", env=env, timeout=300)
    rows.append(("caches", "4,000 zeroed bytes in the pre-trained base", code == 0 and "damaged" in out, f"exit {code}; "
                 + ("reported" if "damaged" in out else "used silently")))
    [base] = (cache / "pretrained").iterdir()
    (base / "base.json").unlink()
    code, out = kpod("run", str(recipe), "--out", str(d / "p2"), "-q", env=env, timeout=300)
    rows.append(("caches", "base.json deleted", code == 0, f"exit {code}: {out.strip().splitlines()[-1][:120] if out.strip() else ''}"))
    blocker = d / "a-file"
    blocker.write_text("x")
    code, out = kpod("run", str(recipe), "--out", str(d / "p3"), "-q", env={"KPOD_CACHE": str(blocker / "c")}, timeout=300)
    ok, what = one_line_error(code, out)
    rows.append(("caches", "unusable KPOD_CACHE", ok and "KPOD_CACHE" in out, what))
    return rows


def main() -> None:
    rows: list[Row] = []
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for probes in (recipe_probes, data_probes, model_probes, run_probes, cache_probes):
            d = Path(tmp) / probes.__name__
            d.mkdir()
            rows += probes(d)
    for cls, name, ok, what in rows:
        print(f"{cls:24s} {name:44s} {'ok' if ok else 'DEFECT':6s} {what}")
    per = Counter((cls, ok) for cls, _, ok, _ in rows)
    print()
    for cls in dict.fromkeys(c for c, *_ in rows):
        print(f"{cls:24s} {per[cls, True]} ok, {per[cls, False]} defects")
    print(f"total: {sum(ok for *_, ok, _ in rows)} of {len(rows)} ok ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
