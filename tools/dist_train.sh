#!/usr/bin/env bash
# Usage: bash tools/dist_train.sh CONFIG N [train.py options]
# N processes on this machine (one per GPU; on a machine without GPUs, N CPU processes over
# gloo). For several machines set NNODES, NODE_RANK, MASTER_ADDR and PORT on each.
set -e
CONFIG=$1
NPROC=$2
if [ -z "$CONFIG" ] || [ -z "$NPROC" ]; then
  echo "usage: $0 CONFIG N [train.py options]" >&2; exit 2
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
  "$here/train.py" "$CONFIG" --launcher pytorch "${@:3}"
