#!/usr/bin/env bash
# Pale on a GPU, on a bare CUDA machine that has Python with torch, timm and triton but no
# mmcv build, mmdet, mmseg or mmpretrain: runs the model tests on the GPU, then prints Pale-T
# against Swin-T in bfloat16 (images/s, peak memory, the attention kernel that ran) at 224,
# 512 and 800x1333, batch 2, as a table to paste into docs/gpu.md. About 8 minutes at most.
#
#   bash tools/gpu_check.sh --fetch-wheels .whl   # where pip reaches PyPI: the wheels to carry
#   bash tools/gpu_check.sh --wheels .whl         # on the GPU machine
#   bash tools/gpu_check.sh --device cpu          # the same steps on the CPU: tiny, float32
#
# The model needs mmengine and mmcv.cnn, both pure Python: mmengine and mmcv-lite (mmcv 2.1.0
# without its compiled ops) are installed from the carried wheels with --no-deps into a
# folder of their own (nothing in the machine's Python changes), with the few pure-Python
# packages they import that such a machine lacks. timm travels too, so that Swin-T is the
# version measured here. Options:
#   --device cuda|cpu     (default cuda)
#   --wheels DIR          install DIR/*.whl first (default: none, use the installed packages)
#   --out DIR             where the log and benchmark.json go (default work_dirs/gpu_check)
#   --tests "ARGS"        what pytest runs (default: the model test files below)
# Folders are relative to the repository root, where the script runs.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# The tests of the model itself (those present run); the ones that take the `device`
# fixture (tests/conftest.py) run on the GPU.
MODEL_TESTS="tests/test_backbone.py tests/test_attention.py tests/test_memory_paths.py
tests/test_precision.py tests/test_reference_model.py"
WHEELS_TO_CARRY="mmengine==0.10.7 mmcv-lite==2.1.0 addict==2.4.0 termcolor==3.3.0
yapf==0.43.0 platformdirs==4.14.8 timm==1.0.31"

device=cuda wheels= out=work_dirs/gpu_check tests= fetch=
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=${2:?--device needs cuda or cpu}; shift 2 ;;
    --wheels) wheels=${2:?--wheels needs a folder}; shift 2 ;;
    --out) out=${2:?--out needs a folder}; shift 2 ;;
    --tests) tests=${2:?--tests needs pytest arguments}; shift 2 ;;
    --fetch-wheels) fetch=${2:?--fetch-wheels needs a folder}; shift 2 ;;
    *) echo "gpu_check.sh: unknown option '$1' (see the top of tools/gpu_check.sh)" >&2; exit 2 ;;
  esac
done

if [ -n "$fetch" ]; then
  # Pure-Python wheels only (py3-none-any): the GPU machine's Python is 3.12.
  # shellcheck disable=SC2086
  exec "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp -d "$fetch" $WHEELS_TO_CARRY
fi

case "$device" in
  cuda) sizes="224 512 800x1333" repeats=10 warmup=3 rounds=3 threads=0 dtype=bfloat16
        limit_tests=240 limit_bench=210 ;;
  # a check of the script, not a measurement: one thread is not held up by other processes;
  # float32, since torch's CPU depthwise convolution in bfloat16 runs once per channel, and
  # the profiled step's 1.4 million events take longer to read back than the step to run
  cpu) sizes="64x96" repeats=1 warmup=0 rounds=1 threads=1 dtype=float32 limit_tests=1800
       limit_bench=600 ;;
  *) echo "gpu_check.sh: --device must be cuda or cpu, not '$device'" >&2; exit 2 ;;
esac

if [ -n "$wheels" ]; then
  if ! ls "$wheels"/*.whl >/dev/null 2>&1; then
    echo "gpu_check.sh: no wheels in '$wheels' (make them with --fetch-wheels $wheels)" >&2
    exit 2
  fi
  site=$(mktemp -d /tmp/pale_gpu_site.XXXXXX)
  trap 'rm -rf "$site"' EXIT
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target "$site" "$wheels"/*.whl || exit 2
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi

echo "== environment"
"$PYTHON" - "$device" <<'EOF' || exit 2
import importlib, importlib.util, sys
import torch
print(f'python {sys.version.split()[0]}; torch {torch.__version__}; cuda available: '
      f'{torch.cuda.is_available()}' + (f' ({torch.cuda.get_device_name()})'
                                        if torch.cuda.is_available() else ''))
for name in ('mmengine', 'mmcv', 'timm', 'triton', 'mmdet'):
    found = importlib.util.find_spec(name) is not None
    version = getattr(importlib.import_module(name), '__version__', '?') if found else None
    print(f'{name}: {version or "not installed"}')
if sys.argv[1] == 'cuda' and not torch.cuda.is_available():
    sys.exit('gpu_check.sh: --device cuda, but torch sees no CUDA device; use --device cpu')
try:
    import pale_mm  # noqa: F401
except ImportError as e:
    sys.exit(f'gpu_check.sh: import pale_mm failed ({e}); carry the wheels: '
             'bash tools/gpu_check.sh --fetch-wheels .whl')
EOF

echo "== model tests on $device"
if [ -z "$tests" ]; then
  for f in $MODEL_TESTS; do [ -f "$f" ] && tests="$tests $f"; done
fi
# shellcheck disable=SC2086
PALE_TEST_DEVICE=$device timeout "$limit_tests" "$PYTHON" -m pytest -q -p no:cacheprovider $tests
tests_rc=$?

echo "== Pale-T against Swin-T on $device, $dtype, batch 2"
mkdir -p "$out" || exit 2
# shellcheck disable=SC2206
bench=(tools/benchmark.py --device "$device" --dtype "$dtype" --sizes $sizes --batch 2
       --repeats "$repeats" --warmup "$warmup" --rounds "$rounds" --json "$out/benchmark.json")
[ "$threads" = 0 ] || bench+=(--threads "$threads")
# KINETO_LOG_LEVEL=5 keeps the profiler's start/stop lines out of the tables
KINETO_LOG_LEVEL=${KINETO_LOG_LEVEL:-5} timeout "$limit_bench" "$PYTHON" "${bench[@]}" 2>&1 |
  tee "$out/benchmark.txt"
bench_rc=$?

echo "== summary"
verdict() {  # name, exit status, time limit
  case "$2" in
    0) echo "$1: passed" ;;
    124) echo "$1: FAILED (stopped at its $3 s limit)" ;;
    *) echo "$1: FAILED (exit $2)" ;;
  esac
}
verdict "model tests" $tests_rc "$limit_tests"
verdict "benchmark ($out/benchmark.json)" $bench_rc "$limit_bench"
[ $tests_rc = 0 ] && [ $bench_rc = 0 ]
