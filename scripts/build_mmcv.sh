#!/usr/bin/env bash
# Build (once) and install mmcv 2.1.0 with its compiled ops into the active Python.
#
# The built wheel is kept in a cache keyed by the torch version and the Python tag, because
# pip's own wheel cache does not know which torch an extension was compiled against.
#   PALE_WHEEL_CACHE  where the wheels are kept (default: ~/.cache/pale_mm/wheels)
set -euo pipefail
PY="${PYTHON:-python}"
here="$(cd "$(dirname "$0")" && pwd)"
version="$(sed -n 's/^mmcv==\([0-9.]*\).*/\1/p' "$here/../requirements/mmcv.txt")"
torch_ver="$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')" || {
  echo "build_mmcv.sh: torch must be installed before mmcv is built" >&2; exit 1; }
py_tag="$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
cache="${PALE_WHEEL_CACHE:-$HOME/.cache/pale_mm/wheels}/torch-${torch_ver}-${py_tag}"
mkdir -p "$cache"
wheel="$(ls "$cache"/mmcv-"$version"-*.whl 2>/dev/null | head -n1 || true)"
if [ -z "$wheel" ]; then
  echo "build_mmcv.sh: building mmcv $version with ops against torch $torch_ver (about 15 min on 2 cores)"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  "$PY" -m pip install -q 'setuptools<70' wheel ninja
  MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    CC="$here/cxx_std20.sh" CXX="$here/cxx_std20.sh" \
    "$PY" -m pip wheel --no-deps --no-build-isolation --no-binary mmcv \
      -w "$tmp" "mmcv==$version"
  # Move into the cache only once the build is complete: never a half-written wheel there.
  built="$(ls "$tmp"/mmcv-*.whl)"
  mv "$built" "$cache/"
  wheel="$cache/$(basename "$built")"
fi
"$PY" -m pip install -q "$wheel"
"$PY" -c 'import mmcv.ops, mmcv; print("mmcv", mmcv.__version__, "with ops")'
