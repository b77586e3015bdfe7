#!/usr/bin/env bash
# Installs what the build needs from Debian packages. Idempotent: installs only what is missing.
# The CUDA toolkit is used from /usr/local/cuda when present (CMake finds nvcc there).
set -euo pipefail

packages=(cmake g++ ninja-build make pkg-config nlohmann-json3-dev libspdlog-dev libfmt-dev libcli11-dev
          catch2 libopenmpi-dev openmpi-bin python3 python3-pip
          clang libclang-rt-dev)  # libFuzzer and the sanitizer runtimes for scripts/fuzz.sh
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ -x /usr/local/cuda/bin/nvcc ]; then
  echo "setup: CUDA toolkit $(/usr/local/cuda/bin/nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p') at /usr/local/cuda"
  # cuDNN attention backend: the header-only frontend (cuDNN itself comes with the toolkit or
  # the system); without it CMake builds the native attention kernels only.
  bash "$(dirname "$0")/fetch_cudnn_frontend.sh" ||
    echo "setup: could not fetch the cuDNN frontend headers: the cuDNN attention backend will be OFF"
else
  echo "setup: no CUDA toolkit at /usr/local/cuda: building the CPU backend only"
fi
