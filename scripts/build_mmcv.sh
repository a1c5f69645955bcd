#!/usr/bin/env bash
# Build (once per torch) and install mmcv VERSION with its compiled ops into the active Python.
#   PYTHON=... bash scripts/build_mmcv.sh VERSION
#
# mmcv's ops are compiled against one torch: a wheel built for another fails to import
# (undefined symbols). The built wheel is therefore kept in a cache keyed by the torch version
# and the Python tag, and pip's own caches are bypassed (pip's wheel cache keys mmcv by its
# version alone and would hand back a wheel built against another torch).
#   PALE_WHEEL_CACHE  where the wheels are kept (default: ~/.cache/pale_mm/wheels)
# Installs keep to PIP_CONSTRAINT, as set by scripts/setup_env.sh (numpy for that torch).
set -euo pipefail
PY="${PYTHON:-python}"
here="$(cd "$(dirname "$0")" && pwd)"
version="${1:?usage: build_mmcv.sh VERSION}"
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
  # mmcv 2.1.0's setup.py builds with the setuptools of its time (and no build isolation:
  # it imports the installed torch); setup_env.sh installs the runtime's afterwards
  "$PY" -m pip install -q 'setuptools<70' wheel ninja
  MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    CC="$here/cxx_std20.sh" CXX="$here/cxx_std20.sh" \
    "$PY" -m pip wheel --no-cache-dir --no-deps --no-build-isolation --no-binary mmcv \
      -w "$tmp" "mmcv==$version"
  # Move into the cache only once the build is complete: never a half-written wheel there.
  built="$(ls "$tmp"/mmcv-*.whl)"
  mv "$built" "$cache/"
  wheel="$cache/$(basename "$built")"
fi
# this torch's build replaces any mmcv of the same version already installed
"$PY" -m pip install -q --no-cache-dir --force-reinstall --no-deps "$wheel"
"$PY" -m pip install -q "$wheel"  # mmcv's own requirements, within PIP_CONSTRAINT
"$PY" -c 'import mmcv.ops, mmcv; print("mmcv", mmcv.__version__, "with ops")'
