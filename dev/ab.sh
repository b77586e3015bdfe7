#!/usr/bin/env bash
# A/B of the working tree against a baseline commit, built and run on the same GPU machine
# (machines differ by a few percent, so only runs of one call compare).
#   bash dev/ab.sh save <commit>          on the development machine: that commit's tree into
#                                         .ab-baseline/ (ignored; carry it to the GPU)
#   bash dev/ab.sh run <name> [rounds] [flag]
#                                         on the GPU machine: builds dev/<name>.cu from both with
#                                         nvcc at once, then runs baseline and tree alternately,
#                                         `rounds` times each (default 1), with the harness's
#                                         flag if given (e.g. --lrsa); logs under $OUT
#                                         (default out/), the timing lines printed side by side
#   bash dev/ab.sh bench <pairs> <lrsa-bench attention arguments>...
#                                         on the GPU machine, with .stage carried too: builds
#                                         lrsa-bench from both (build-ab-baseline/, build-gpu/),
#                                         runs `lrsa-bench attention` baseline, tree, baseline,
#                                         tree ... (`pairs` of each), then every row's times side
#                                         by side (scripts/bench/ab_rows.py); e.g. issue 5's
#                                         ratio: bench 2 --tokens 32768 --backends cudnn wgmma
#                                         --fused-qkv --warmup 2 --repeats 10 --rounds 7
#                                         --skip-checks --cudnn-gather-gib 16
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
baseline=.ab-baseline
# Waits for the background builds of both sides, exiting with their logs' names ($1) if one failed;
# then names both sides: the baseline's commit, and the tree's with a note of changes under the
# paths after $1 (the tree is what was copied here, which may differ from the commit its .git names).
builds_done() {
  local logs=$1 failed=0 job tree
  shift
  for job in $(jobs -p); do wait "$job" || failed=1; done
  if [ $failed -ne 0 ]; then
    echo "dev/ab.sh: a build failed (see $logs)" >&2
    exit 1
  fi
  tree=$(git rev-parse --short HEAD 2>/dev/null) || tree="(no git here)"
  git diff --quiet HEAD -- "$@" 2>/dev/null || tree="$tree + changes in $*"
  echo "dev/ab.sh: baseline $(cat "$baseline/COMMIT"), tree $tree"
}
usage() {
  echo "usage: bash dev/ab.sh save <commit> | run <name> [rounds] [flag] | bench <pairs> <lrsa-bench attention args>..." >&2
  exit 2
}

case "${1:-}" in
  save)
    [ $# -eq 2 ] || usage
    commit=$(git rev-parse --verify "$2^{commit}") || exit 2
    rm -rf "$baseline" && mkdir -p "$baseline"
    git archive "$commit" | tar -x -C "$baseline" || exit 1
    echo "$commit" >"$baseline/COMMIT"
    echo "dev/ab.sh: $baseline holds the tree of $commit"
    ;;
  run)
    { [ $# -ge 2 ] && [ $# -le 4 ]; } || usage
    name=$2 rounds=${3:-1} flag=(${4:+"$4"})
    [ -f "$baseline/COMMIT" ] || { echo "dev/ab.sh: no $baseline: run 'bash dev/ab.sh save <commit>' and carry it" >&2; exit 2; }
    [ -f "dev/$name.cu" ] || { echo "dev/ab.sh: no dev/$name.cu" >&2; exit 2; }
    out=${OUT:-out}
    mkdir -p "$out" build-gpu
    source dev/build_harness.sh
    build_harness "$baseline" "$name" "build-gpu/ab-$name-baseline" "$out/ab-$name-baseline.build.log" &
    build_harness . "$name" "build-gpu/ab-$name-tree" "$out/ab-$name-tree.build.log" &
    builds_done "$out/ab-$name-*.build.log" kernels dev
    status=0
    for round in $(seq "$rounds"); do
      for side in baseline tree; do
        log="$out/ab-$name-$side-$round.log"
        timeout "${AB_TIMEOUT:-300}" "build-gpu/ab-$name-$side" "${flag[@]}" >"$log" 2>&1
        rc=$?
        echo "$side round $round: exit $rc, $(grep -c ': PASS' "$log") checks passed, $(grep -c 'FAIL' "$log") failed"
        [ $rc -eq 0 ] || status=1
      done
    done
    # Each timing line of the first round's logs, baseline above tree.
    paste -d '\n' <(grep -hE '(^| )time ' "$out/ab-$name-baseline-1.log" | sed 's/^/baseline  /') \
      <(grep -hE '(^| )time ' "$out/ab-$name-tree-1.log" | sed 's/^/tree      /')
    exit $status
    ;;
  bench)
    if [ $# -lt 2 ] || ! [ "$2" -gt 0 ] 2>/dev/null; then usage; fi
    pairs=$2
    shift 2
    [ -f "$baseline/CMakeLists.txt" ] || { echo "dev/ab.sh: $baseline holds no source tree: save it again" >&2; exit 2; }
    out=${OUT:-out}
    mkdir -p "$out"
    source scripts/gpu/cmake_build.sh
    cmake_build "$baseline" build-ab-baseline "${CUDA_ARCH:-90a}" lrsa-bench >"$out/ab-bench-baseline.build.log" 2>&1 &
    cmake_build . build-gpu "${CUDA_ARCH:-90a}" lrsa-bench >"$out/ab-bench-tree.build.log" 2>&1 &
    builds_done "$out/ab-bench-*.build.log" .
    status=0
    for pair in $(seq "$pairs"); do
      for side in baseline tree; do
        bin="build-gpu/lrsa-bench"
        [ $side = tree ] || bin="build-ab-baseline/lrsa-bench"
        timeout "${AB_TIMEOUT:-300}" "$bin" attention "$@" --json "$out/ab-bench-$side-$pair.jsonl" \
          >"$out/ab-bench-$side-$pair.log" 2>&1
        rc=$?
        echo "$side run $pair: exit $rc"
        [ $rc -eq 0 ] || status=1
      done
    done
    python3 scripts/bench/ab_rows.py --baseline "$out"/ab-bench-baseline-*.jsonl --tree "$out"/ab-bench-tree-*.jsonl
    exit $status
    ;;
  *) usage ;;
esac
