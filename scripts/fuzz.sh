#!/usr/bin/env bash
# Builds the libFuzzer targets in tests/fuzz with clang (-fsanitize=fuzzer,address,undefined)
# outside the normal build, and runs each on its seed corpus (tests/fuzz/corpus/<target>/) for a
# time and/or a number of executions. Fails on any crash, leak, timeout or sanitizer report.
#
#   scripts/fuzz.sh [seconds-per-target] [runs-per-target]
#     seconds: 20 by default; runs: 0 (unlimited) by default. With both, whichever ends first.
#   Environment: FUZZ_BUILD_DIR (default build-fuzz/ in this checkout: a build directory shared by
#   two checkouts would keep the other's dependency paths), FUZZ_TARGETS (default: all),
#                FUZZ_JOBS (parallel compiles, default nproc).
# New inputs found during a run go to $FUZZ_BUILD_DIR/corpus/<target> (never into the repo);
# a crashing input is written to $FUZZ_BUILD_DIR/crash-<target>-* and named in the log.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
seconds=${1:-20}
runs=${2:-0}
build=${FUZZ_BUILD_DIR:-$root/build-fuzz}
targets=${FUZZ_TARGETS:-"config safetensors jsonl"}
mkdir -p "$build"

cxx=${CXX_FUZZ:-clang++}
command -v "$cxx" >/dev/null || { echo "fuzz: $cxx not found (scripts/setup.sh installs clang and libclang-rt-dev)" >&2; exit 1; }

# Library sources each target links (compiled with the sanitizers; OpenMP pragmas are ignored,
# so parsing runs on one thread, which the fuzzer wants anyway).
common="src/core/error.cpp src/core/dtype.cpp src/core/device.cpp src/core/allocator.cpp src/core/tensor.cpp"
sources_config="$common src/attn/params.cpp src/train/config.cpp"
sources_safetensors="$common src/model/safetensors.cpp src/model/file_io.cpp"
sources_jsonl="$common src/data/dataset.cpp src/data/tokenizer.cpp src/data/chat.cpp src/data/unicode.cpp
  src/data/unicode_tables.cpp src/data/pretokenize.cpp"

# One generated Makefile: objects are rebuilt only when a source or header they include changed.
flags="-std=c++20 -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined
  -fno-sanitize-recover=undefined -Wno-unknown-pragmas -I$root/include -I$root/src"
{
  echo "CXXFLAGS := $(echo $flags)"
  echo "LDFLAGS := -fsanitize=fuzzer,address,undefined"
  echo "LIBS := -lfmt -lspdlog"
  echo "all: $(for t in $targets; do printf 'fuzz_%s ' "$t"; done)"
  echo "obj/%.o: $root/%.cpp"
  printf '\t@mkdir -p $(dir $@)\n\t$(CXX) $(CXXFLAGS) -MMD -MP -c $< -o $@\n'
  for t in $targets; do
    var="sources_$t"
    [ -n "${!var:-}" ] || { echo "fuzz: unknown target '$t'" >&2; exit 1; }
    objs="obj/tests/fuzz/fuzz_$t.o"
    for s in ${!var}; do objs+=" obj/${s%.cpp}.o"; done
    echo "fuzz_$t: $objs"
    printf '\t$(CXX) $(LDFLAGS) $^ $(LIBS) -o $@\n'
  done
  echo "-include \$(shell find obj -name '*.d' 2>/dev/null)"
} >"$build/Makefile"
echo "fuzz: building $targets in $build"
make -C "$build" -s -j "${FUZZ_JOBS:-$(nproc)}" CXX="$cxx" all

status=0
for t in $targets; do
  corpus=$build/corpus/$t
  mkdir -p "$corpus"
  log=$build/fuzz_$t.log
  echo "fuzz: $t for ${seconds}s$([ "$runs" -gt 0 ] && echo " or $runs runs")"
  # -timeout: one input taking over 10 s is a hang; -rss_limit_mb: a memory blow-up is a bug.
  # -entropic=0: libFuzzer 14's entropic schedule spent over half the time in its own
  # bookkeeping on these targets (5x fewer executions per second).
  if "$build/fuzz_$t" -max_total_time="$seconds" -runs="$([ "$runs" -gt 0 ] && echo "$runs" || echo -1)" \
      -entropic=0 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$build/crash-$t-" "$corpus" "tests/fuzz/corpus/$t" >"$log" 2>&1; then
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    echo "fuzz: $t ok: ${execs:-?} executions (${rate:-?}/s), corpus $(ls "$corpus" | wc -l) files"
  else
    echo "fuzz: $t FAILED (log $log):" >&2
    grep -E "ERROR|SUMMARY|runtime error|Test unit written|deadly signal|==[0-9]+==" "$log" | head -20 >&2 || tail -30 "$log" >&2
    status=1
  fi
done
exit $status
