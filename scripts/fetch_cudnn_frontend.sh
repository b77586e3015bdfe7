#!/usr/bin/env bash
# Puts the header-only cuDNN frontend into .stage/cudnn_frontend/include (git-ignored), where
# CMake looks for it (CUDNN_FRONTEND_INCLUDE_DIR). The headers come from the
# nvidia-cudnn-frontend wheel on PyPI (its include/ folder); nothing is compiled. Skips the
# download when the requested version is already there. Run by scripts/setup.sh (CUDA builds)
# and scripts/gpu/stage.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${CUDNN_FRONTEND_VERSION:-1.32.0}
dest=.stage/cudnn_frontend

if [ -f "$dest/include/cudnn_frontend.h" ] && [ "$(cat "$dest/VERSION" 2>/dev/null)" = "$version" ]; then
  echo "fetch_cudnn_frontend: cuDNN frontend $version already in $dest"
  exit 0
fi
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$wheels" "nvidia-cudnn-frontend==$version"
python3 - "$wheels/extracted" "$wheels"/*.whl <<'PY'
import sys, zipfile
dest, wheel = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    headers = [n for n in z.namelist() if n.startswith("include/") and not n.endswith("/")]
    if not headers:
        sys.exit(f"fetch_cudnn_frontend: {wheel} has no include/ folder: the cuDNN frontend headers are not in this wheel")
    for name in headers:
        z.extract(name, dest)
print(f"fetch_cudnn_frontend: {len(headers)} cuDNN frontend headers from {wheel.rsplit('/', 1)[-1]}")
PY
test -f "$wheels/extracted/include/cudnn_frontend.h"
echo "$version" > "$wheels/extracted/VERSION"
# Replace the old headers only once the new ones are complete.
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
mv "$wheels/extracted" "$dest"
