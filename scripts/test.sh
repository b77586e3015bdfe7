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
