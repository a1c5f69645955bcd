#!/usr/bin/env bash
# Usage: [GPUS=16] [GPUS_PER_NODE=8] bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py options]
#
# Preemption: SIGTERM or SIGUSR1 (sbatch --signal=USR1@120 sends it two minutes before the
# time limit) makes training save a checkpoint after its current iteration and stop with
# code 75. Inside a batch job (sbatch, so SLURM_JOB_ID is set) the script then requeues the
# job with `scontrol requeue`; the requeued job (SLURM_RESTART_COUNT > 0) runs this script
# again and continues with --resume. Outside a batch job it exits with 75.
set -x
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
PYTHON=${PYTHON:-python}
PREEMPTED_EXIT_CODE=75
here="$(cd "$(dirname "$0")" && pwd)"

RESUME=()
if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then
  RESUME=(--resume)  # a requeued job: continue from the newest checkpoint of WORK_DIR
fi
# the training processes write the checkpoint's path here when preempted (on every node)
export PALE_PREEMPTED_MARKER="$WORK_DIR/.preempted"
mkdir -p "$WORK_DIR" && rm -f "$PALE_PREEMPTED_MARKER"
# slurm signals this shell too: note it and wait for srun, which passes it to the tasks
trap 'echo "slurm_train.sh: signal received; waiting for training to save and stop" >&2' TERM USR1

PYTHONPATH="$here/..${PYTHONPATH:+:$PYTHONPATH}" \
srun -p "$PARTITION" --job-name="$JOB_NAME" --gres=gpu:"$GPUS_PER_NODE" \
  --ntasks="$GPUS" --ntasks-per-node="$GPUS_PER_NODE" --cpus-per-task="$CPUS_PER_TASK" \
  --kill-on-bad-exit=1 $SRUN_ARGS \
  "$PYTHON" -u "$here/train.py" "$CONFIG" --work-dir="$WORK_DIR" --launcher slurm "${@:5}" \
  "${RESUME[@]}"
status=$?

if [ $status -eq $PREEMPTED_EXIT_CODE ] || [ -s "$PALE_PREEMPTED_MARKER" ]; then
  rm -f "$PALE_PREEMPTED_MARKER"
  if [ -n "$SLURM_JOB_ID" ]; then
    scontrol requeue "$SLURM_JOB_ID"
  else
    echo "slurm_train.sh: preempted; run the same command again with --resume" >&2
  fi
  exit $PREEMPTED_EXIT_CODE
fi
exit $status
