#!/usr/bin/env bash
# The README's test command: install, build, run every test (CPU always; CUDA tests run when a
# GPU is present and are reported as skipped with the reason otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh "$@"
# ctest runs test files in parallel, each with OpenMP threads: sleeping (not spinning) waiters
# keep oversubscribed cores doing work.
OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive} ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure -j "${JOBS:-$(nproc)}"
# Robustness, short versions (~3-4 minutes on 2 cores; docs/reliability.md has the long runs):
# each libFuzzer target for FUZZ_SECONDS, then SIGKILL during training KILL9_TRIALS times (one
# process) and 6 times (2 ranks under mpirun).
bash scripts/fuzz.sh "${FUZZ_SECONDS:-20}"
python3 scripts/reliability/kill9.py --trials "${KILL9_TRIALS:-20}" --bin "${BUILD_DIR:-build}/lrsa-train"
python3 scripts/reliability/kill9.py --trials 6 --ranks 2 --bin "${BUILD_DIR:-build}/lrsa-train"
