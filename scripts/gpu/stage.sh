#!/usr/bin/env bash
# Run on the development machine (no GPU needed). Fills the ignored folder .stage/ with what the
# GPU machine lacks, to be carried there with the working tree (device tool: carry [".stage"]):
#   .stage/include/catch2, .stage/lib/cmake/Catch2, .stage/lib/libCatch2WithMain.a
#       Catch2 v2 from Debian's catch2 package (the GPU machine only has the incompatible v3;
#       scripts/gpu/run.sh puts .stage first on CMAKE_PREFIX_PATH so find_package(Catch2 2) finds it)
#   .stage/cudnn_frontend/include
#       the header-only cuDNN frontend, from the nvidia-cudnn-frontend wheel on PyPI
set -euo pipefail
cd "$(dirname "$0")/../.."
stage=.stage
cudnn_frontend_version=${CUDNN_FRONTEND_VERSION:-1.32.0}

if [ ! -f /usr/include/catch2/catch.hpp ] || [ ! -f /usr/lib/cmake/Catch2/Catch2Config.cmake ]; then
  bash scripts/setup.sh
fi

rm -rf "$stage"
mkdir -p "$stage/include" "$stage/lib/cmake" "$stage/cudnn_frontend"
cp -r /usr/include/catch2 "$stage/include/"
cp -r /usr/lib/cmake/Catch2 "$stage/lib/cmake/"
cp /usr/lib/libCatch2WithMain.a "$stage/lib/"  # only referenced (Catch2Targets-none.cmake checks it exists)

wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$wheels" "nvidia-cudnn-frontend==$cudnn_frontend_version"
python3 - "$stage/cudnn_frontend" "$wheels"/*.whl <<'PY'
import sys, zipfile
dest, wheel = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    headers = [n for n in z.namelist() if n.startswith("include/") and not n.endswith("/")]
    if not headers:
        sys.exit(f"stage.sh: {wheel} has no include/ folder: the cuDNN frontend headers are not in this wheel")
    for name in headers:
        z.extract(name, dest)
print(f"stage.sh: {len(headers)} cuDNN frontend headers from {wheel.rsplit('/', 1)[-1]}")
PY
test -f "$stage/cudnn_frontend/include/cudnn_frontend.h"
echo "stage.sh: $stage holds $(du -sh "$stage" | cut -f1): Catch2 $(sed -n 's/.*PACKAGE_VERSION "\([0-9.]*\)".*/\1/p' "$stage/lib/cmake/Catch2/Catch2ConfigVersion.cmake"), cuDNN frontend $cudnn_frontend_version"
