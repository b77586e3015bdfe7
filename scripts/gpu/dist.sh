#!/usr/bin/env bash
# Run ON a multi-GPU machine, from the repository root, after `scripts/gpu/run.sh build`:
#   bash scripts/gpu/dist.sh
# (a) correctness: a small bf16 model trained on N GPUs (mpirun -np N, NCCL) against 1 GPU at the
#     same global batch, plain and ZeRO-1: per-step losses within a bf16 tolerance -> PASS/FAIL;
# (b) throughput: each shape of SHAPES (configs/bench/qwen2.5-<shape>-shape.json, 16K tokens per
#     GPU per step) on 1 GPU and on every N of GPU_COUNTS, plain and ZeRO-1: tokens/s, scaling
#     efficiency (tokens/s on N / (N x tokens/s on 1)) and peak memory per GPU;
# (c) with 4 or more GPUs: a Qwen2.5-7B-shape ZeRO-1 run (activation checkpointing), if it fits.
# Writes to $OUT (default out/): dist-summary.txt (the results) and one log per run.
# Environment: BUILD_DIR (build-gpu), RUN_TIMEOUT (seconds per run, default 150),
# SCRATCH (default /dev/shm: the final checkpoints of 1.5B/7B shapes take a minute on disk),
# LOSS_RTOL (default 0.01), BENCH_STEPS (default 12; the first 3 are warmup, not timed),
# GPU_COUNTS (default: 2 4 8, those this machine has), SHAPES (default: 0.5b 1.5b),
# PARTS (default: correctness throughput 7b).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
export NCCL_NVLS_ENABLE=0  # NVLink multicast stays off on this machine
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

out=${OUT:-out}
build=${BUILD_DIR:-build-gpu}
run_timeout=${RUN_TIMEOUT:-150}
loss_rtol=${LOSS_RTOL:-0.01}
bench_steps=${BENCH_STEPS:-12}
scratch=${SCRATCH:-/dev/shm}
shapes=(${SHAPES:-0.5b 1.5b})
parts=" ${PARTS:-correctness throughput 7b} "
bin="$build/lrsa-train"
work=$(mktemp -d "$scratch/lrsa-dist-XXXXXX")  # run dirs and final checkpoints, in RAM by default
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
counts=()
for n in ${GPU_COUNTS:-2 4 8}; do [ "$n" -le "$gpus" ] && counts+=("$n"); done
note "dist.sh: $gpus GPUs; GPU counts ${counts[*]}; shapes ${shapes[*]}; parts$parts"
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

# --- (a) N GPUs vs 1 GPU at the same global batch ---------------------------------------
correct=PASS
if [[ $parts == *" correctness "* ]]; then
  "$bin" make-data --kind passkey --context-tokens 1900 --samples 128 --out "$work/small.jsonl" >/dev/null 2>&1
  small=(--config configs/tiny-cpu-smoke.json --set device='"cuda"' --set data.train="$work/small.jsonl"
    --set data.eval=null --set data.max_seq_len=2048 --set model.hidden_size=256 --set model.intermediate_size=688
    --set model.num_hidden_layers=4 --set model.num_attention_heads=4 --set model.num_key_value_heads=2
    --set model.max_position_embeddings=4096 --set attention.sink=16 --set attention.lag=64
    --set precision.param_dtype='"bf16"' --set precision.deterministic=true --set batch.micro_batch_tokens=4096
    --set batch.tokens_per_step=16384 --set schedule.max_steps=20 --set checkpoint.every_steps=0
    --set logging.progress='"plain"')
  compared=()
  run small-1gpu 0 "${small[@]}" || correct=FAIL
  for n in "${counts[@]}"; do
    run "small-${n}gpu" "$n" "${small[@]}" && compared+=("small-${n}gpu") || correct=FAIL
    run "small-${n}gpu-zero1" "$n" "${small[@]}" --set distributed.zero1=true && compared+=("small-${n}gpu-zero1") ||
      correct=FAIL
  done
  python3 - "$work" "$loss_rtol" "${compared[@]}" <<'PY' | tee -a "$summary"
import json, sys
work, rtol, names = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
def losses(name):
    return [json.loads(l)["loss"] for l in open(f"{work}/{name}/metrics.jsonl")]
ref = losses("small-1gpu")
ok = bool(names)
for name in names:
    got = losses(name)
    if len(got) != len(ref):
        print(f"{name}: {len(got)} steps, 1 GPU ran {len(ref)}"); ok = False; continue
    worst = max(abs(a - b) / abs(b) for a, b in zip(got, ref))
    print(f"{name} vs small-1gpu: {len(ref)} steps, max relative loss difference {worst:.2e} (tolerance {rtol:g}); "
          f"first {got[0]:.5f}/{ref[0]:.5f}, last {got[-1]:.5f}/{ref[-1]:.5f}")
    ok &= worst <= rtol
sys.exit(0 if ok else 1)
PY
  [ "${PIPESTATUS[0]}" -eq 0 ] || correct=FAIL
  note "correctness (N GPUs vs 1 GPU, bf16, plain and ZeRO-1): $correct"
fi

# --- (b) throughput at 16K tokens per GPU ----------------------------------------------
"$bin" make-data --kind passkey --context-tokens 16000 --samples 256 --out "$work/bench.jsonl" >/dev/null 2>&1
bench_rows=()
if [[ $parts == *" throughput "* ]]; then
  for shape in "${shapes[@]}"; do
    bench=(--config "configs/bench/qwen2.5-$shape-shape.json" --set data.train="$work/bench.jsonl"
      --set schedule.max_steps="$bench_steps" --set checkpoint.every_steps=0 --set logging.progress='"plain"')
    run "bench-$shape-1gpu" 0 "${bench[@]}" --set batch.tokens_per_step=16384
    bench_rows+=("$shape:1:bench-$shape-1gpu:bench-$shape-1gpu")
    for n in "${counts[@]}"; do
      run "bench-$shape-${n}gpu" "$n" "${bench[@]}" --set batch.tokens_per_step=$((16384 * n))
      run "bench-$shape-${n}gpu-zero1" "$n" "${bench[@]}" --set batch.tokens_per_step=$((16384 * n)) \
        --set distributed.zero1=true
      bench_rows+=("$shape:$n:bench-$shape-${n}gpu:bench-$shape-1gpu" "$shape:$n:bench-$shape-${n}gpu-zero1:bench-$shape-1gpu")
    done
  done
fi

# --- (c) Qwen2.5-7B shape, ZeRO-1, activation checkpointing, on the most GPUs --------------
big=${counts[${#counts[@]}-1]:-0}
if [[ $parts == *" 7b "* ]] && [ "$big" -ge 4 ]; then
  run "bench-7b-${big}gpu-zero1" "$big" --config configs/bench/qwen2.5-1.5b-shape.json \
    --set data.train="$work/bench.jsonl" --set model.hidden_size=3584 --set model.intermediate_size=18944 \
    --set model.num_hidden_layers=28 --set model.num_attention_heads=28 --set model.num_key_value_heads=4 \
    --set model.vocab_size=152064 --set model.tie_word_embeddings=false \
    --set memory.activation_checkpointing='"all"' --set schedule.max_steps=8 --set checkpoint.every_steps=0 \
    --set logging.progress='"plain"' --set batch.tokens_per_step=$((16384 * big)) --set distributed.zero1=true
  bench_rows+=("7b:$big:bench-7b-${big}gpu-zero1:-")
fi

python3 - "$work" "${bench_rows[@]}" <<'PY' | tee -a "$summary"
import json, os, statistics, sys
work, rows = sys.argv[1], sys.argv[2:]
def stats(name):
    path = f"{work}/{name}/metrics.jsonl"
    if not os.path.exists(path):
        return None
    lines = [json.loads(l) for l in open(path)]
    timed = lines[3:] or lines
    return (statistics.median(l["tokens_per_s"] for l in timed), max(l["peak_bytes"] for l in lines) / 2**30,
            len(lines), statistics.median(l.get("mfu", float("nan")) for l in timed))
print(f"{'shape':<6}{'run':<26}{'steps':>6}{'tokens/s':>12}{'speed-up':>10}{'efficiency':>12}{'MFU':>8}{'peak GiB/GPU':>14}")
for row in rows:
    shape, gpus, name, base_name = row.split(":")
    gpus = int(gpus)
    s = stats(name)
    base = stats(base_name) if base_name != "-" else None
    if s is None:
        print(f"{shape:<6}{name:<26}  (no metrics: see its log)")
        continue
    tps, peak, steps, mfu = s
    speedup = tps / base[0] if base else float("nan")
    print(f"{shape:<6}{name:<26}{steps:>6}{tps:>12.0f}{speedup:>9.2f}x{speedup / gpus:>11.1%}{mfu:>8.1%}{peak:>14.2f}")
print("targets (0.5B): efficiency >= 95% at 4 GPUs, >= 90% at 8 GPUs")
PY
note "dist.sh: done"
[ "$correct" = PASS ]
