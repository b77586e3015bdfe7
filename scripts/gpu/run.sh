#!/usr/bin/env bash
# Run ON the GPU machine, from the repository root:
#   bash scripts/gpu/run.sh [all | build | test | bench]...      (default: all = build test bench)
# Needs .stage/ (made by scripts/gpu/stage.sh on the development machine and carried along).
# Configures and builds with CUDA into build-gpu/ (kept between calls on a warm machine, so the
# phases may run in separate calls), runs every test (CUDA ones included), then every
# lrsa-bench subcommand. Writes to $OUT (default: out/), a few files only:
#   summary.txt  nvidia-smi, each phase's status and time, the bench summaries
#   build.log    configure + build output          ctest.log   ctest output
#   bench.log    the bench tables                  bench-<subcommand>.json   JSON lines per subcommand
# Environment: CUDA_ARCH (default 90a), BUILD_DIR (build-gpu), CTEST_JOBS (4), BENCH_ARGS (extra
# arguments for every subcommand), PHASE_TIMEOUT (seconds per phase, default 540: under the
# device tool's 10 minutes per call).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
export NCCL_NVLS_ENABLE=0

out=${OUT:-out}
build=${BUILD_DIR:-build-gpu}
arch=${CUDA_ARCH:-90a}
ctest_jobs=${CTEST_JOBS:-4}
phase_timeout=${PHASE_TIMEOUT:-540}
phases=("$@")
[ ${#phases[@]} -gt 0 ] && [ "${phases[0]}" != all ] || phases=(build test bench)
mkdir -p "$out"
summary="$out/summary.txt"
status=0

note() { echo "$*" | tee -a "$summary"; }

# Runs one phase under the timeout, output to its log; records status and time.
phase() {
  local name=$1 log=$2
  shift 2
  local start=$SECONDS rc
  # shellcheck disable=SC2016  # expanded by the child shell
  timeout "$phase_timeout" bash -c '"$@"' phase "$@" >>"$log" 2>&1
  rc=$?
  note "phase $name: $([ $rc -eq 0 ] && echo ok || echo "FAILED (exit $rc$([ $rc -eq 124 ] && echo ", timed out after ${phase_timeout}s"))") in $((SECONDS - start))s, log $log"
  [ $rc -eq 0 ] || status=1
  return $rc
}

nvidia-smi 2>&1 | tee -a "$summary"
if [ ! -f .stage/lib/cmake/Catch2/Catch2Config.cmake ]; then
  note "run.sh: .stage/ is missing: run scripts/gpu/stage.sh on the development machine and carry .stage"
  exit 2
fi

source scripts/gpu/cmake_build.sh
configure_and_build() { cmake_build . "$build" "$arch"; }

run_tests() {
  # Test files run in parallel; OpenMP threads are split between them.
  OMP_NUM_THREADS=$(($(nproc) / ctest_jobs > 0 ? $(nproc) / ctest_jobs : 1)) \
    ctest --test-dir "$build" --output-on-failure -j "$ctest_jobs"
}

export build arch ctest_jobs
export -f cmake_build configure_and_build run_tests

for p in "${phases[@]}"; do
  case $p in
    build) phase build "$out/build.log" configure_and_build ;;
    test)
      phase test "$out/ctest.log" run_tests
      grep -E "tests passed|tests failed|Skipped|Failed|\*\*\*" "$out/ctest.log" | tail -40 | tee -a "$summary"
      ;;
    bench)
      bench_bin="$build/lrsa-bench"
      if [ ! -x "$bench_bin" ]; then
        note "phase bench: $bench_bin is missing (run the build phase first)"
        status=1
        continue
      fi
      for sub in $("$bench_bin" --list); do
        echo "=== lrsa-bench $sub" >>"$out/bench.log"
        # shellcheck disable=SC2086  # BENCH_ARGS is a list of words
        phase "bench $sub" "$out/bench.log" "$bench_bin" "$sub" --json "$out/bench-$sub.json" ${BENCH_ARGS:-}
        sed -n "/^=== lrsa-bench $sub\$/,\$p" "$out/bench.log" |
          grep -E "^(device|ceilings|summary):|^lrsa-bench|below the required|FAIL|error" | tail -40 | tee -a "$summary"
      done
      ;;
    *)
      note "run.sh: unknown phase '$p' (expected all, build, test or bench)"
      exit 2
      ;;
  esac
done
note "run.sh: done, exit $status"
exit $status
