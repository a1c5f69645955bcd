#!/usr/bin/env bash
# Usage: bash tools/dist_train.sh CONFIG N [train.py options]
# N processes on this machine (one per GPU; on a machine without GPUs, N CPU processes over
# gloo). For several machines set NNODES, NODE_RANK, MASTER_ADDR and PORT on each.
#
# SIGTERM or SIGUSR1 to this script (or to the whole process group) makes training save a
# checkpoint after its current iteration and stop; the script then exits with 75
# ("preempted, resume me": run it again with --resume). Training processes get
# SHUTDOWN_TIMEOUT seconds (default 300) for that before torchrun kills them, where torchrun
# has --shutdown_timeout; an older torchrun (torch 2.1) gives them its own 30 seconds.
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
SHUTDOWN_TIMEOUT=${SHUTDOWN_TIMEOUT:-300}
PREEMPTED_EXIT_CODE=75
here="$(cd "$(dirname "$0")" && pwd)"

# rank 0 writes the checkpoint's path here when preempted (torchrun reports any worker's
# exit code as a plain failure)
export PALE_PREEMPTED_MARKER="$(mktemp "${TMPDIR:-/tmp}/pale_preempted.XXXXXX")"
trap 'rm -f "$PALE_PREEMPTED_MARKER"' EXIT

# torchrun passes SIGUSR1 on and waits SHUTDOWN_TIMEOUT where it has these options; an older
# one (torch 2.1) passes on only SIGTERM, SIGINT, SIGHUP and SIGQUIT (SIGUSR1 would end it
# without a word to the training processes), so SIGUSR1 reaches it as SIGTERM, which
# training handles alike
if "$PYTHON" -m torch.distributed.run --help 2>/dev/null | grep -q -- '--signals_to_handle'; then
  signal_options=(--signals_to_handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1
                  --shutdown_timeout="$SHUTDOWN_TIMEOUT")
  usr1_to_torchrun=USR1
else
  signal_options=()
  usr1_to_torchrun=TERM
fi

PYTHONPATH="$here/..${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m torch.distributed.run \
  --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" \
  --nproc_per_node="$NPROC" --master_port="$PORT" "${signal_options[@]}" \
  "$here/train.py" "$CONFIG" --launcher pytorch "${@:3}" &
torchrun=$!
# pass a signal to this script on to torchrun, which passes it on to the training processes
trap 'kill -TERM $torchrun 2>/dev/null' TERM
trap 'kill -$usr1_to_torchrun $torchrun 2>/dev/null' USR1
trap 'kill -INT $torchrun 2>/dev/null' INT
# wait returns early when a trapped signal arrives: wait again until torchrun has exited
while true; do
  wait $torchrun
  status=$?
  kill -0 $torchrun 2>/dev/null || break
done
if [ -s "$PALE_PREEMPTED_MARKER" ]; then
  echo "dist_train.sh: preempted; checkpoint $(cat "$PALE_PREEMPTED_MARKER"); run again" \
    "with --resume to continue" >&2
  exit $PREEMPTED_EXIT_CODE
fi
exit $status
