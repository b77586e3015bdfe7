#!/usr/bin/env bash
# Builds and runs the dev harnesses on the GPU machine (sm_90a) with nvcc alone, in seconds (the
# CMake build makes the same programs as build-gpu/dev-<name>); logs under $OUT (default out/).
#   bash dev/run.sh [name ...]        (default: every dev/*.cu)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
out=${OUT:-out}
mkdir -p "$out" build-gpu
names=("$@")
[ ${#names[@]} -gt 0 ] || names=($(cd dev && ls *.cu | sed 's/\.cu$//'))
nvcc=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
status=0
for name in "${names[@]}"; do
  log="$out/dev-$name.log"
  if ! "$nvcc" -std=c++20 -O3 -gencode arch=compute_90a,code=sm_90a -Xptxas -v "dev/$name.cu" -o "build-gpu/$name" \
      >"$log" 2>&1; then
    echo "$name: build FAILED (see $log)"; status=1; continue
  fi
  timeout 120 "build-gpu/$name" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  echo "$name: exit $rc"
  [ "$rc" -eq 0 ] || status=1
done
exit $status
