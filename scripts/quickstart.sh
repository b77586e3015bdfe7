#!/usr/bin/env bash
# The README's main-job command: install, build, run the built-in default job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
"${BUILD_DIR:-build}"/lrsa-smoke
