#!/usr/bin/env bash
# Run ON the GPU machine, from the repository root, after `scripts/gpu/run.sh build`:
#   bash scripts/gpu/targets.sh
# The figures behind the performance targets in one call that fits the device tool's 10 minutes
# (scripts/gpu/run.sh bench runs everything, longer):
#   1. the attention tests (CUDA backends against the fp64 reference, tolerance rule);
#   2. lrsa-bench attention at 16K, 32K and 128K, both head shapes, native, cuDNN and wgmma backends
#      (issue 5; correctness is part 1's, so the bench's own self-checks are skipped);
#   3. scripts/bench/train_e2e.py --groups headline: our 0.5B dense 16K/32K and LRSA 32K steps (issue 10);
#   4. lrsa-bench infer: prefill and decode with the LagKV cache (issue 9).
# Parts run on request only (PARTS="ops profile ..."):
#   ops      lrsa-bench ops at T = 32K, the three model shapes (issue 3's targets);
#   profile  scripts/bench/train_e2e.py --groups profile: GPU time per op of our steps (issue 10);
#   wgmma    lrsa-bench attention, 14:2 x d64, on cuDNN and on the Hopper kernels of our own
#            (attention.backend wgmma), with the bench's self-checks;
#   e2e-wgmma  the headline group again with attention.backend=wgmma.
#   rounds   lrsa-bench attention at 32K, both head shapes, cuDNN and wgmma, every case timed once
#            a round in 7 rounds, each pass after 200 ms of untimed calls: issue 5's LRSA / dense
#            ratio (docs/benchmarks.md, "Session 26" and "Session 33").
# Writes to $OUT (default out/): targets.txt (every part's tail) and one log per part.
# Environment: BUILD_DIR (build-gpu), PARTS (default: tests attention e2e infer).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
out=${OUT:-out}
build=${BUILD_DIR:-build-gpu}
parts=" ${PARTS:-tests attention e2e infer} "
mkdir -p "$out"
summary="$out/targets.txt"
: >"$summary"
status=0

# part NAME TAIL_LINES COMMAND...: runs it, log in $out/NAME.log, its tail in the summary.
part() {
  local name=$1 lines=$2
  shift 2
  [[ $parts == *" $name "* ]] || return 0
  local start=$SECONDS rc
  "$@" >"$out/$name.log" 2>&1
  rc=$?
  { echo "=== $name: exit $rc in $((SECONDS - start))s"; tail -n "$lines" "$out/$name.log"; } | tee -a "$summary"
  [ $rc -eq 0 ] || status=1
}

part tests 25 ctest --test-dir "$build" -R "^attn/" --output-on-failure
part attention 110 "$build/lrsa-bench" attention --tokens 16384 32768 131072 --backends native cudnn wgmma \
  --repeats 3 --skip-checks
part e2e 12 python3 scripts/bench/train_e2e.py --groups headline --binary "$build/lrsa-train" --out "$out/train-e2e.jsonl"
part infer 30 "$build/lrsa-bench" infer
part ops 60 "$build/lrsa-bench" ops --tokens 32768
part profile 120 python3 scripts/bench/train_e2e.py --groups profile --binary "$build/lrsa-train" \
  --out "$out/train-e2e-profile.jsonl"
part wgmma 40 "$build/lrsa-bench" attention --shapes 14:2xd64 --tokens 16384 32768 131072 --backends cudnn wgmma \
  --repeats 3
part e2e-wgmma 12 python3 scripts/bench/train_e2e.py --groups headline --binary "$build/lrsa-train" \
  --out "$out/train-e2e-wgmma.jsonl" --set attention.backend=wgmma
part rounds 60 "$build/lrsa-bench" attention --tokens 32768 --backends cudnn wgmma --fused-qkv --warmup 2 \
  --repeats 10 --rounds 7 --skip-checks --cudnn-gather-gib 16
exit $status
