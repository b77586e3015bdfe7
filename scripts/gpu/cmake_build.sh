# shellcheck shell=bash
# Sourced by scripts/gpu/run.sh and dev/ab.sh, on the GPU machine, from the repository root: the
# CUDA build of a source tree against the dependencies staged in .stage/ (scripts/gpu/stage.sh).
#   cmake_build <source dir> <build dir> <CUDA arch> [target]...      (no target: all of them)
cmake_build() {
  local source=$1 build=$2 arch=$3 stage=$PWD/.stage
  shift 3
  local targets=()
  [ $# -eq 0 ] || targets=(--target "$@")
  cmake -S "$source" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$stage" \
    -DCMAKE_CUDA_ARCHITECTURES="$arch" -DCUDNN_FRONTEND_INCLUDE_DIR="$stage/cudnn_frontend/include" &&
    cmake --build "$build" -j "$(nproc)" "${targets[@]}"
}
