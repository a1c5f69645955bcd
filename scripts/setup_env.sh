#!/usr/bin/env bash
# Create a virtual environment (Python 3.11) for one tested stack and install pale_mm into
# it, once.
#   scripts/setup_env.sh [--check] [STACK]
#
# STACK names a file of requirements/stacks/ (default: newest, into .venv; any other into
# .venv-STACK; VENV overrides). Every pip call keeps to that file's versions (PIP_CONSTRAINT),
# so pip's resolver can move nothing the stack fixes (torch, numpy, mmcv, ...).
# A stamp keyed on the requirement files and these scripts records a finished install: with
# nothing changed, a second run only checks the stamp and returns.
#   --check   install nothing; exit 0 if the environment is up to date, 1 if not
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
check=0
if [ "${1:-}" = "--check" ]; then check=1; shift; fi
STACK="${1:-newest}"
stack_file="requirements/stacks/$STACK.txt"
if [ ! -f "$stack_file" ]; then
  echo "setup_env.sh: no stack '$STACK' (choose one of: $(ls requirements/stacks | sed 's/\.txt$//' | tr '\n' ' '))" >&2
  exit 2
fi
if [ "$STACK" = newest ]; then VENV="${VENV:-.venv}"; else VENV="${VENV:-.venv-$STACK}"; fi
PY_BOOT="${PYTHON_BOOT:-python3.11}"
key="$(cat requirements/*.txt "$stack_file" setup.py scripts/setup_env.sh scripts/build_mmcv.sh | sha256sum | cut -c1-16)"
stamp="$VENV/.pale_mm-installed-$key"
if [ -f "$stamp" ]; then
  exit 0
fi
if [ "$check" = 1 ]; then
  echo "setup_env.sh: $VENV is missing or out of date (no $stamp); run 'make env'" >&2
  exit 1
fi
command -v "$PY_BOOT" >/dev/null || { echo "setup_env.sh: $PY_BOOT not found; install Python 3.11 or set PYTHON_BOOT" >&2; exit 1; }
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup_env.sh: creating $VENV with $PY_BOOT (stack $STACK)"
  "$PY_BOOT" -m venv "$VENV"
fi
rm -f "$VENV"/.pale_mm-installed-*
PY="$VENV/bin/python"
pinned() {  # the stack's line for package $1, if it has one
  grep -E "^$1([=<>!~ ]|$)" "$stack_file" || true
}
export PIP_CONSTRAINT="$root/$stack_file"
"$PY" -m pip install -q --upgrade pip wheel
echo "setup_env.sh: installing $(pinned torch) $(pinned torchvision) $(pinned numpy)"
# shellcheck disable=SC2046
"$PY" -m pip install -q $(pinned torch) $(pinned torchvision) $(pinned numpy)
mmcv="$(pinned mmcv)"
if [ -n "$mmcv" ]; then
  echo "setup_env.sh: installing $mmcv with its compiled ops"
  PYTHON="$PY" bash scripts/build_mmcv.sh "${mmcv#mmcv==}"
else
  echo "setup_env.sh: installing $(pinned mmcv-lite) (no compiled ops)"
  "$PY" -m pip install -q "$(pinned mmcv-lite)"
fi
echo "setup_env.sh: installing mmengine, mmdet, mmsegmentation$(pinned mmpretrain | sed 's/.*/, mmpretrain/'), onnx, onnxruntime and test tools"
# torch again: its own requirements are resolved with pale_mm's (the setuptools that mmcv's
# build needed is older than torch 2.14 asks for; runtime.txt caps it where pkg_resources is)
# shellcheck disable=SC2046
"$PY" -m pip install -q -r requirements/runtime.txt -r requirements/tests.txt -r requirements/deploy.txt \
  $(pinned torch) $(pinned mmpretrain)
# the editable install goes through setup.py's PEP 660 hook (pyproject.toml exists), which
# setuptools has from 64 on; mmcv's build left an older one where torch asks for none newer
"$PY" -m pip install -q 'setuptools>=64,<81'
"$PY" -m pip install -q --no-build-isolation --no-deps -e .
echo "setup_env.sh: installing mmdeploy beside the environment ($VENV/mmdeploy-packages)"
"$PY" -m pip install -q --no-deps --upgrade --target "$VENV/mmdeploy-packages" \
  -r requirements/mmdeploy.txt
"$PY" -c 'import mmdet, mmseg, mmcv, pale_mm; print("setup_env.sh: environment ready:", "mmcv", mmcv.__version__)'
echo "$STACK" > "$VENV/.pale_mm-stack"
touch "$stamp"
