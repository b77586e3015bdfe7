# shellcheck shell=bash
# Sourced by dev/run.sh and dev/ab.sh: a dev harness built with nvcc alone for sm_90a (seconds,
# where the CMake build takes minutes).
#   build_harness <source root> <name> <program> <log>    builds <root>/dev/<name>.cu
build_harness() {
  local nvcc=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
  "$nvcc" -std=c++20 -O3 -gencode arch=compute_90a,code=sm_90a -Xptxas -v "$1/dev/$2.cu" -o "$3" >"$4" 2>&1
}
