#!/usr/bin/env bash
# Print the README's table of tested versions from the environments that exist:
# .venv (make env), .venv-oldest-torch and .venv-oldest-openmmlab (make test-oldest).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "| environment | Python | torch | numpy | mmcv | mmengine | mmdet | mmseg | mmpretrain |"
echo "|---|---|---|---|---|---|---|---|---|"
for venv in .venv .venv-oldest-torch .venv-oldest-openmmlab; do
  [ -x "$venv/bin/python" ] || continue
  "$venv/bin/python" - "$venv" <<'PY'
import platform
import sys
from importlib import metadata


def version(*names):
    for name in names:
        try:
            v = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        return f'{v} (lite)' if name.endswith('-lite') else v
    return '-'


print('| `' + sys.argv[1] + '` | ' + ' | '.join([
    platform.python_version(), version('torch').split('+')[0], version('numpy'),
    version('mmcv', 'mmcv-lite'), version('mmengine'), version('mmdet'),
    version('mmsegmentation'), version('mmpretrain')]) + ' |')
PY
done
