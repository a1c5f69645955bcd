#!/usr/bin/env bash
# Create .venv (Python 3.11) and install everything pale_mm needs, once.
#
# A stamp keyed on the requirement files and setup.py records a finished install: with nothing
# changed, a second run only checks the stamp and returns.
#   --check   install nothing; exit 0 if the environment is up to date, 1 if not
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
VENV="${VENV:-.venv}"
PY_BOOT="${PYTHON_BOOT:-python3.11}"
key="$(cat requirements/*.txt setup.py scripts/setup_env.sh scripts/build_mmcv.sh | sha256sum | cut -c1-16)"
stamp="$VENV/.pale_mm-installed-$key"
if [ -f "$stamp" ]; then
  exit 0
fi
if [ "${1:-}" = "--check" ]; then
  echo "setup_env.sh: $VENV is missing or out of date (no $stamp); run 'make env'" >&2
  exit 1
fi
command -v "$PY_BOOT" >/dev/null || { echo "setup_env.sh: $PY_BOOT not found; install Python 3.11 or set PYTHON_BOOT" >&2; exit 1; }
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup_env.sh: creating $VENV with $PY_BOOT"
  "$PY_BOOT" -m venv "$VENV"
fi
rm -f "$VENV"/.pale_mm-installed-*
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip 'setuptools<70' wheel
echo "setup_env.sh: installing torch"
"$PY" -m pip install -q -r requirements/torch.txt
echo "setup_env.sh: installing mmcv with ops"
PYTHON="$PY" bash scripts/build_mmcv.sh
echo "setup_env.sh: installing mmengine, mmdet, mmsegmentation, mmpretrain and test tools"
# The constraint keeps pip from replacing the torch that mmcv was compiled against.
cons="$(mktemp)"; trap 'rm -f "$cons"' EXIT
"$PY" -c 'import torch, torchvision, mmcv; print(f"torch=={torch.__version__}\ntorchvision=={torchvision.__version__}\nmmcv=={mmcv.__version__}\nsetuptools<70")' > "$cons"
"$PY" -m pip install -q -c "$cons" -r requirements/runtime.txt -r requirements/tests.txt
"$PY" -m pip install -q -c "$cons" --no-build-isolation --no-deps -e .
"$PY" -c 'import mmdet, mmseg, mmpretrain, mmcv.ops, pale_mm; print("setup_env.sh: environment ready")'
touch "$stamp"
