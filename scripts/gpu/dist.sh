#!/usr/bin/env bash
# Run ON the 2-GPU machine, from the repository root, after `scripts/gpu/run.sh build`:
#   bash scripts/gpu/dist.sh
# (a) correctness: a small bf16 model trained on 2 GPUs (mpirun -np 2, NCCL) against 1 GPU at the
#     same global batch: per-step losses within a bf16 tolerance -> PASS/FAIL;
# (b) throughput: the Qwen2.5-0.5B shape (configs/bench/qwen2.5-0.5b-shape.json, 16K tokens per
#     GPU per step) on 1 GPU and on 2 GPUs, plain and ZeRO-1: tokens/s, scaling efficiency
#     (tokens/s on 2 / (2 x tokens/s on 1)) and peak memory per GPU.
# Writes to $OUT (default out/): dist-summary.txt (the results) and one log per run.
# Environment: BUILD_DIR (build-gpu), RUN_TIMEOUT (seconds per run, default 150),
# LOSS_RTOL (default 0.01), BENCH_STEPS (default 12; the first 3 are warmup, not timed).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
export NCCL_NVLS_ENABLE=0  # NVLink multicast stays off on this machine
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

out=${OUT:-out}
build=${BUILD_DIR:-build-gpu}
run_timeout=${RUN_TIMEOUT:-150}
loss_rtol=${LOSS_RTOL:-0.01}
bench_steps=${BENCH_STEPS:-12}
bin="$build/lrsa-train"
work=$(mktemp -d /tmp/lrsa-dist-XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
summary="$out/dist-summary.txt"
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }

[ -x "$bin" ] || { note "dist.sh: $bin is missing: run scripts/gpu/run.sh build first"; exit 2; }
command -v mpirun >/dev/null || { note "dist.sh: mpirun is not installed on this machine (Debian: openmpi-bin)"; exit 2; }
for feature in MPI NCCL; do
  grep -q "LRSA_WITH_$feature=1" "$build/compile_commands.json" ||
    { note "dist.sh: $build was configured without $feature (see 'lrsa: $feature' in its CMake output)"; exit 2; }
done
gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
[ "$gpus" -ge 2 ] || { note "dist.sh: needs 2 GPUs, found $gpus"; exit 2; }
mpirun=(mpirun --allow-run-as-root --oversubscribe --bind-to none -x NCCL_NVLS_ENABLE -x OMP_NUM_THREADS -x NCCL_DEBUG)
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}

# run NAME RANKS ARGS...: one training run (RANKS 0 = without mpirun), output in $work/NAME.
run() {
  local name=$1 ranks=$2
  shift 2
  local start=$SECONDS rc
  if [ "$ranks" -eq 0 ]; then
    timeout "$run_timeout" "$bin" train "$@" --set output_dir="$work/$name" >"$out/dist-$name.log" 2>&1
  else
    timeout "$run_timeout" "${mpirun[@]}" -np "$ranks" "$bin" train "$@" --set output_dir="$work/$name" \
      >"$out/dist-$name.log" 2>&1
  fi
  rc=$?
  note "run $name: exit $rc in $((SECONDS - start))s (log $out/dist-$name.log)"
  [ $rc -eq 0 ] || tail -5 "$out/dist-$name.log" | tee -a "$summary"
  return $rc
}

# --- (a) 2 GPUs vs 1 GPU at the same global batch ---------------------------------------
"$bin" make-data --kind passkey --context-tokens 1900 --samples 128 --out "$work/small.jsonl" >/dev/null 2>&1
small=(--config configs/tiny-cpu-smoke.json --set device='"cuda"' --set data.train="$work/small.jsonl"
  --set data.eval=null --set data.max_seq_len=2048 --set model.hidden_size=256 --set model.intermediate_size=688
  --set model.num_hidden_layers=4 --set model.num_attention_heads=4 --set model.num_key_value_heads=2
  --set model.max_position_embeddings=4096 --set attention.sink=16 --set attention.lag=64
  --set precision.param_dtype='"bf16"' --set precision.deterministic=true --set batch.micro_batch_tokens=4096
  --set batch.tokens_per_step=16384 --set schedule.max_steps=20 --set checkpoint.every_steps=0
  --set logging.progress='"plain"')
correct=FAIL
if run small-1gpu 0 "${small[@]}" && run small-2gpu 2 "${small[@]}" &&
  run small-2gpu-zero1 2 "${small[@]}" --set distributed.zero1=true; then
  if python3 - "$work" "$loss_rtol" <<'PY' | tee -a "$summary"; then correct=PASS; fi
import json, sys
work, rtol = sys.argv[1], float(sys.argv[2])
def losses(name):
    return [json.loads(l)["loss"] for l in open(f"{work}/{name}/metrics.jsonl")]
ref = losses("small-1gpu")
ok = True
for name in ("small-2gpu", "small-2gpu-zero1"):
    got = losses(name)
    if len(got) != len(ref):
        print(f"{name}: {len(got)} steps, 1 GPU ran {len(ref)}"); ok = False; continue
    worst = max(abs(a - b) / abs(b) for a, b in zip(got, ref))
    print(f"{name} vs small-1gpu: {len(ref)} steps, max relative loss difference {worst:.2e} (tolerance {rtol:g}); "
          f"first {got[0]:.5f}/{ref[0]:.5f}, last {got[-1]:.5f}/{ref[-1]:.5f}")
    ok &= worst <= rtol
sys.exit(0 if ok else 1)
PY
fi
note "correctness (2 GPUs vs 1 GPU, bf16, plain and ZeRO-1): $correct"

# --- (b) throughput of the Qwen2.5-0.5B shape, 16K tokens per GPU --------------------------
"$bin" make-data --kind passkey --context-tokens 16000 --samples 96 --out "$work/bench.jsonl" >/dev/null 2>&1
bench=(--config configs/bench/qwen2.5-0.5b-shape.json --set data.train="$work/bench.jsonl"
  --set schedule.max_steps="$bench_steps" --set checkpoint.every_steps=0 --set logging.progress='"plain"')
run bench-1gpu 0 "${bench[@]}" --set batch.tokens_per_step=16384
run bench-2gpu 2 "${bench[@]}" --set batch.tokens_per_step=32768
run bench-2gpu-zero1 2 "${bench[@]}" --set batch.tokens_per_step=32768 --set distributed.zero1=true
python3 - "$work" <<'PY' | tee -a "$summary"
import json, os, statistics, sys
work = sys.argv[1]
def stats(name):
    path = f"{work}/{name}/metrics.jsonl"
    if not os.path.exists(path):
        return None
    lines = [json.loads(l) for l in open(path)]
    timed = lines[3:] or lines
    return statistics.median(l["tokens_per_s"] for l in timed), max(l["peak_bytes"] for l in lines) / 2**30, len(lines)
rows = [("1 GPU", "bench-1gpu", 1), ("2 GPUs", "bench-2gpu", 2), ("2 GPUs ZeRO-1", "bench-2gpu-zero1", 2)]
base = stats("bench-1gpu")
print(f"{'run':<16}{'steps':>6}{'tokens/s':>12}{'speed-up':>10}{'efficiency':>12}{'peak GiB/GPU':>14}")
for label, name, gpus in rows:
    s = stats(name)
    if s is None:
        print(f"{label:<16}  (no metrics: see its log)")
        continue
    tps, peak, steps = s
    speedup = tps / base[0] if base else float("nan")
    print(f"{label:<16}{steps:>6}{tps:>12.0f}{speedup:>9.2f}x{speedup / gpus:>11.1%}{peak:>14.2f}")
print("target: 2 GPUs >= 1.9x one (efficiency >= 95%)")
PY
note "dist.sh: done"
[ "$correct" = PASS ]
