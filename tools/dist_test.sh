#!/usr/bin/env bash
# Usage: bash tools/dist_test.sh CONFIG CHECKPOINT N [test.py options]
# N processes on this machine (GPUs, or CPU processes over gloo where there are none); the
# metrics equal those of one process. For several machines set NNODES, NODE_RANK,
# MASTER_ADDR and PORT on each.
set -e
CONFIG=$1
CHECKPOINT=$2
NPROC=$3
if [ -z "$CONFIG" ] || [ -z "$CHECKPOINT" ] || [ -z "$NPROC" ]; then
  echo "usage: $0 CONFIG CHECKPOINT N [test.py options]" >&2; exit 2
fi
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
PYTHON=${PYTHON:-python}
here="$(cd "$(dirname "$0")" && pwd)"
PYTHONPATH="$here/..${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" -m torch.distributed.run \
  --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" \
  --nproc_per_node="$NPROC" --master_port="$PORT" \
  "$here/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "${@:4}"
