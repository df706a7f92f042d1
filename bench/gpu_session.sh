#!/usr/bin/env bash
# The GPU checks (throughput against TRL, FSDP end to end, vLLM), sized for one 10-minute device call:
#   bash bench/gpu_session.sh            (results under $OUT, default ./gpu_out)
# 1. tokens/s and MFU of the 1.1B Llama (bf16, packed + chunked loss), seq 512 and 2048, and TRL's
#    SFTTrainer (its own packing) on the same shape; 2. the same sequences padded with full logits;
# 3. `kpod run --launch fsdp` end to end (20 steps, evaluation on 16 questions);
# 4. optional: kpod's greedy loop vs the vLLM backend on that run's model (bench/vllm_eval.py), only
#    where `import vllm` already works (this script never installs vLLM: it brings its own torch).
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 KPOD_CACHE="$OUT/cache"
if ! python -c "import kpod, torch; assert torch.cuda.is_available()" 2>/dev/null; then
  python3 -m venv .venv && . .venv/bin/activate
  pip install -q torch==2.13.0 && pip install -q -e ".[dev]" || exit 1
fi
python -c "import trl" 2>/dev/null || pip install -q trl==1.16.0 || echo "trl not installed: TRL side skipped"
TRL=$(python -c "import trl" 2>/dev/null && echo --trl)
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
run() { echo "== $*"; timeout 170 python bench/gpu_throughput.py "$@" || echo "FAILED ($?): $*"; }
run --seq 512 --batch-size 16 --steps 15 --warmup 4 $TRL --json "$OUT/tput_512.json"
run --seq 512 --batch-size 16 --steps 15 --warmup 4 --padded --json "$OUT/tput_512_padded.json"
run --seq 2048 --batch-size 4 --steps 10 --warmup 3 $TRL --json "$OUT/tput_2048.json"
echo "== kpod run --launch fsdp"
timeout 150 kpod run recipes/std_cot.yaml --launch fsdp --num-processes 1 --out "$OUT/fsdp_run" --overwrite -q \
  --set train.max_steps=20 --set eval.limit=16 --set eval.splits='[test]' --set data.source.params.n_train=2000 \
  > "$OUT/fsdp.log" 2>&1; echo "fsdp rc=$?" | tee -a "$OUT/fsdp.log"
cp "$OUT/fsdp_run/summary.json" "$OUT/fsdp_summary.json" 2>/dev/null || true
echo "== kpod vs vllm evaluation backends (optional)"
if ! python -c "import vllm" >/dev/null 2>&1; then
  echo "vllm absent (import vllm fails): kpod vs vllm comparison skipped" | tee "$OUT/vllm.log"
elif [ ! -d "$OUT/fsdp_run/model" ]; then
  echo "no model from the fsdp run: kpod vs vllm comparison skipped" | tee "$OUT/vllm.log"
else
  timeout 200 python bench/vllm_eval.py "$OUT/fsdp_run/model" "$OUT/fsdp_run/recipe.resolved.yaml" \
    --split test --limit 200 --json "$OUT/vllm_vs_kpod.json" > "$OUT/vllm.log" 2>&1
  echo "vllm bench rc=$?" | tee -a "$OUT/vllm.log"
fi
true
