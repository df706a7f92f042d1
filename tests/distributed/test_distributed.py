"""Two CPU processes (DDP over gloo) against one: same losses and gradients on the same global
batch, every sample seen exactly once (uneven shards padded with zero-weight passes), and a full
`kpod run --launch multi_cpu` with gathered evaluation and main-process-only writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import TINY, deep_update

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("WORLD_SIZE", None)
    return env


def _torchrun(n: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(n),
            "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args]


@pytest.fixture(scope="module")
def kd_teacher(tmp_path_factory):
    """A teacher for the worker's student (same tokenizer, other weights) and its stored top-k."""
    from kpod.data.load import load_data, template_from
    from kpod.data.topk_store import TopKStore
    from kpod.models.student import load_student, save_student
    from kpod.teach.rescore import rescore
    from tests.helpers import tiny_recipe

    root = tmp_path_factory.mktemp("kd_teacher")
    recipe = tiny_recipe()
    train, template = load_data(recipe)["train"], template_from(recipe)
    teacher = load_student(recipe.student, [template.serialize(r).text for r in train], seed=1)
    save_student(teacher, str(root / "model"))
    with TopKStore(root / "store", k=8, teacher="tiny-seed1", tokenizer="tiny") as store:
        rescore(teacher.model, teacher.tokenizer, train, template, store)
    return root


@pytest.mark.parametrize("dynamic", ["", "dft:weight", "entropy:top_k", "kd:teacher_store", "kd:teacher_model"])
def test_two_ranks_equal_one_process_on_the_same_global_batch(tmp_path, dynamic, request):
    """Static weights, dynamic strategies (weights from each rank's own logits, the window's
    denominator summed over ranks), and keypoint-weighted KD from a stored top-k or beside an
    online teacher. Tolerance: rtol 1e-5 / atol 1e-7 (fp32; only the order of the cross-rank sum
    differs)."""
    if dynamic.startswith("kd:"):
        field = dynamic[3:]
        root = request.getfixturevalue("kd_teacher")
        source = root / ("store" if field == "teacher_store" else "model")
        dynamic = "kd=" + json.dumps({field: str(source), "alpha": 0.7, "divergence": "jsd"})
    one, two = tmp_path / "one" / "out.pt", tmp_path / "two" / "out.pt"
    one.parent.mkdir()
    two.parent.mkdir()
    # 96 samples in micro-batches of 20 → 5 micro-batches: the last window is uneven
    proc = subprocess.run([sys.executable, "-m", "tests.distributed.workers.ddp_window", str(one), "2", dynamic],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    env = dict(_env(), ACCELERATE_USE_CPU="true")
    proc = subprocess.run(_torchrun(2, "-m", "tests.distributed.workers.ddp_window", str(two), "1", dynamic),
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    a, b = torch.load(one, weights_only=True), torch.load(two, weights_only=True)
    assert (a["world"], b["world"]) == (1, 2)
    assert len(a["windows"]) == len(b["windows"]) == 3
    for wa, wb in zip(a["windows"], b["windows"]):
        assert wa["loss"] == pytest.approx(wb["loss"], rel=1e-5)
        assert len(wa["grads"]) == len(wb["grads"]) > 0
        for ga, gb in zip(wa["grads"], wb["grads"]):
            torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-7)
    flat = [s for rank in b["seen"] for s in (rank if isinstance(rank, list) else [rank])]
    assert sorted(flat) == sorted(a["seen"]) and len(set(flat)) == len(flat) == 96


@pytest.mark.parametrize("model", ["tiny:llama"])
def test_kpod_run_launch_multi_cpu_matches_one_process(tmp_path, model):
    recipe = deep_update(TINY, {
        "student": {"model": model},
        "train": {"epochs": 1, "batch_size": 20, "grad_accum": 1, "checkpoint_every": 2, "keep_checkpoints": 5},
        "eval": {"splits": ["validation", "test"], "max_new_tokens": 8},
    })
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    single = deep_update(recipe, {"train": {"grad_accum": 2}})
    spath = tmp_path / "single.yaml"
    spath.write_text(yaml.safe_dump(single))
    kpod = [sys.executable, "-m", "kpod.cli"]
    subprocess.run([*kpod, "run", str(spath), "--out", str(tmp_path / "one"), "-q"],
                   cwd=ROOT, env=_env(), check=True, timeout=300)
    proc = subprocess.run(
        [*kpod, "run", str(path), "--out", str(tmp_path / "two"), "-q", "--launch", "multi_cpu",
         "--num-processes", "2", "--main-process-port", str(_free_port())],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    def losses(run):
        return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()
                if json.loads(x).get("phase") == "train"]

    l1, l2 = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(l1) == len(l2) == 3  # one line per step: only the main process writes
    assert l2 == pytest.approx(l1, rel=1e-4)
    s1 = json.loads((tmp_path / "one" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
    for split in ("validation", "test"):
        assert s2["splits"][split]["count"] == s1["splits"][split]["count"] == 8
    preds = [json.loads(x) for x in (tmp_path / "two" / "predictions.jsonl").read_text().splitlines()]
    ids = [p["sample_id"] for p in preds]
    assert len(ids) == len(set(ids)) == 16  # gathered from both ranks, each sample once
    ckpts = sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir())
    assert ckpts == ["step-0000002", "step-0000003"] and not list((tmp_path / "two").glob("**/*.tmp"))

    # resume under DDP from the step-2 checkpoint: step 3 and the evaluation come out the same
    from tests.helpers import crash_after as _crash_after

    _crash_after(tmp_path / "two", tmp_path / "resumed", "step-0000002")
    proc = subprocess.run(
        [*kpod, "run", str(path), "--out", str(tmp_path / "resumed"), "-q", "--resume", "--launch", "multi_cpu",
         "--num-processes", "2", "--main-process-port", str(_free_port())],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert losses(tmp_path / "resumed") == l2[2:]
    resumed = [json.loads(x) for x in (tmp_path / "resumed" / "predictions.jsonl").read_text().splitlines()]
    assert [p["output"] for p in resumed] == [p["output"] for p in preds]


def test_launch_preset_errors_are_clear(tmp_path):
    from kpod.launch import launch_argv, presets
    from kpod.recipe import RecipeError

    assert {"single_gpu", "multi_gpu", "fsdp", "multi_cpu"} <= set(presets())
    with pytest.raises(RecipeError, match="not a preset"):
        launch_argv("no_such_preset", ["run", "r.yaml"])
    argv, env = launch_argv("multi_cpu", ["run", "r.yaml"], num_processes=3, port=1234)
    assert argv[1:4] == ["-m", "torch.distributed.run", "--nnodes"] and "3" in argv and env["ACCELERATE_USE_CPU"] == "true"
    argv, _ = launch_argv("fsdp", ["run", "r.yaml"], num_processes=4)
    assert "accelerate.commands.launch" in argv and argv[argv.index("--num_processes") + 1] == "4"
    assert argv[-3:] == ["kpod.cli", "run", "r.yaml"]


def test_run_launch_rejects_bad_input_before_starting_processes(tmp_path):
    from typer.testing import CliRunner

    from kpod.cli import app

    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lrr: 1}\n")
    res = CliRunner().invoke(app, ["run", str(bad), "--launch", "multi_cpu"])
    assert res.exit_code == 2 and "train.lrr" in res.output
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(TINY))
    res = CliRunner().invoke(app, ["run", str(good), "--launch", "no_such_preset"])
    assert res.exit_code == 2 and "not a preset" in res.output


def test_fsdp2_checkpoint_state_round_trips_and_training_continues_bitwise(tmp_path):
    """The helpers kpod's checkpoints use under FSDP (kpod/engine/checkpointing/fsdp.py), on 2 CPU ranks
    with FSDP2 over gloo: the full optimizer state gathered from the shards and sharded back into
    a freshly initialised model gives the same next step, bit for bit. (accelerate runs FSDP on
    GPUs only, so the Trainer's FSDP branch itself needs a GPU machine.)"""
    out = tmp_path / "fsdp.pt"
    proc = subprocess.run(_torchrun(2, "-m", "tests.distributed.workers.fsdp_state", str(out)),
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = torch.load(out, weights_only=True)
    assert r["world"] == 2 and r["shard_numel"] < r["total_numel"]  # really sharded
    assert r["missing"] == [] and r["unexpected"] == []
    assert r["full_format"] and r["n_state"] == r["n_params"] and r["moments_nonzero"]
    for name, t in r["saved"].items():
        assert torch.equal(r["loaded"][name], t), name
    assert r["loss_a"] == r["loss_b"]
    changed = 0
    for name, t in r["after_a"].items():
        assert torch.equal(r["after_b"][name], t), name
        changed += not torch.equal(t, r["saved"][name])
    assert changed == len(r["saved"])  # the third step moved every tensor, identically


def test_plain_optimizer_state_is_not_taken_for_the_fsdp_format():
    from kpod.engine.checkpointing.fsdp import is_full_optimizer_state

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    assert not is_full_optimizer_state(opt.state_dict())
    assert is_full_optimizer_state({"state": {"weight": {}}, "param_groups": [{"params": ["weight", "bias"]}]})
