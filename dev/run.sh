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
source dev/build_harness.sh
status=0
for name in "${names[@]}"; do
  log="$out/dev-$name.log"
  if ! build_harness . "$name" "build-gpu/$name" "$log"; then
    echo "$name: build FAILED (see $log)"; status=1; continue
  fi
  timeout 120 "build-gpu/$name" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  echo "$name: exit $rc"
  [ "$rc" -eq 0 ] || status=1
done
exit $status
