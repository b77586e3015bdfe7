#!/usr/bin/env bash
# Run on the development machine (no GPU needed). Fills the ignored folder .stage/ with what the
# GPU machine lacks, to be carried there with the working tree (device tool: carry [".stage"]):
#   .stage/include/catch2, .stage/lib/cmake/Catch2, .stage/lib/libCatch2WithMain.a
#       Catch2 v2 from Debian's catch2 package (the GPU machine only has the incompatible v3;
#       scripts/gpu/run.sh puts .stage first on CMAKE_PREFIX_PATH so find_package(Catch2 2) finds it)
#   .stage/cudnn_frontend/include
#       the header-only cuDNN frontend (scripts/fetch_cudnn_frontend.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
stage=.stage

if [ ! -f /usr/include/catch2/catch.hpp ] || [ ! -f /usr/lib/cmake/Catch2/Catch2Config.cmake ]; then
  bash scripts/setup.sh
fi

rm -rf "$stage/include" "$stage/lib"  # the frontend (.stage/cudnn_frontend) is kept when its version matches
mkdir -p "$stage/include" "$stage/lib/cmake"
cp -r /usr/include/catch2 "$stage/include/"
cp -r /usr/lib/cmake/Catch2 "$stage/lib/cmake/"
cp /usr/lib/libCatch2WithMain.a "$stage/lib/"  # only referenced (Catch2Targets-none.cmake checks it exists)

bash scripts/fetch_cudnn_frontend.sh
echo "stage.sh: $stage holds $(du -sh "$stage" | cut -f1): Catch2 $(sed -n 's/.*PACKAGE_VERSION "\([0-9.]*\)".*/\1/p' "$stage/lib/cmake/Catch2/Catch2ConfigVersion.cmake"), cuDNN frontend $(cat "$stage/cudnn_frontend/VERSION")"
