"""Preemption: a training run told to stop (SIGTERM, or SIGUSR1, which slurm's ``--signal``
sends before a job's time is up) finishes its iteration, writes a checkpoint and exits with
:data:`PREEMPTED_EXIT_CODE`, which tells the launcher "preempted, resume me".

* :class:`PreemptionHook` catches the signals, gets every process to stop after the same
  iteration, saves and raises :class:`TrainingPreempted` (a ``SystemExit`` with that code).
* :class:`ResumableEpochBasedTrainLoop` is mmengine's epoch-based loop that can continue in
  the middle of an epoch, where such a checkpoint is written.
* :func:`pale_mm.launch.run_config.enable_preemption` puts both into a training config
  (``tools/train.py`` does).

``tools/dist_train.sh`` and ``tools/slurm_train.sh`` pass the signals on to the training
processes and return the code; ``slurm_train.sh`` requeues the job with it, and the requeued
job continues with ``--resume``. See ``docs/cluster.md``.
"""
import logging
import os
import os.path as osp
import signal
import threading

import torch
from mmengine.dist import all_reduce, barrier, get_comm_device, get_world_size, is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS
from mmengine.runner import IterBasedTrainLoop

from ...fileio import atomic_write
from ..runner.resumable_epoch_loop import ResumableEpochBasedTrainLoop

# sysexits.h's EX_TEMPFAIL: a temporary failure, the same command will work later
PREEMPTED_EXIT_CODE = 75
# a file the launcher names: a preempted process writes the checkpoint's path into it
# (torchrun reports a worker's exit code as a plain failure, so dist_train.sh reads this)
PREEMPTED_MARKER_ENV = 'PALE_PREEMPTED_MARKER'


class TrainingPreempted(SystemExit):
    """Training stopped at a preemption signal after saving ``checkpoint``; the process
    exits with :data:`PREEMPTED_EXIT_CODE`."""

    def __init__(self, checkpoint: str):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.checkpoint = checkpoint


@HOOKS.register_module()
class PreemptionHook(Hook):
    """Stop training at SIGTERM or SIGUSR1 with a checkpoint to resume from.

    A handler only notes the signal; further signals (a second one during the save, or the
    same one passed on by the launcher) change nothing. Data loader workers ignore them
    (:func:`pale_mm.engine.runner.checked_data_runner.workers_leave_signals_to_training`).

    After every training iteration the processes agree (one all-reduce of a flag) whether
    any of them was signalled, so that all stop after the same iteration, then write
    ``iter_<n>.pth`` (rank 0 writes; every process's random state goes in through
    :class:`pale_mm.engine.hooks.ExactResumeHook`) and ``last_checkpoint``, wait for each other
    and exit with :data:`PREEMPTED_EXIT_CODE`. An epoch-based run stopped at its epoch's
    last iteration saves ``epoch_<n>.pth`` at the end of the epoch instead; so does any
    epoch-based loop that cannot continue mid-epoch (only
    :class:`ResumableEpochBasedTrainLoop` can). A signal at the last iteration of the whole
    run lets it finish. Validation due where the run stops is skipped (the resumed run
    continues after it), and a signal during validation is acted on after it.
    """

    priority = 'LOWEST'  # after CheckpointHook: training state as it saves it

    def __init__(self, signals=('SIGTERM', 'SIGUSR1')):
        self.received = None  # name of the first signal
        self._stop_at_epoch_end = False
        self._previous = {}
        if threading.current_thread() is not threading.main_thread():
            print_log('PreemptionHook: not in the main thread, signals cannot be caught; '
                      'a preempted run will lose what it trained since its last checkpoint',
                      logger='current', level=logging.WARNING)
            return
        for name in signals:
            number = getattr(signal, name)
            self._previous[number] = signal.signal(number, self._note_signal)

    def _note_signal(self, signum, frame) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name

    def after_train(self, runner) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def _anyone_signalled(self) -> bool:
        if get_world_size() == 1:
            return self.received is not None
        flag = torch.tensor([int(self.received is not None)], device=get_comm_device())
        all_reduce(flag, op='max')
        return bool(flag.item())

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self._stop_at_epoch_end or not self._anyone_signalled():
            return
        loop = runner.train_loop
        if isinstance(loop, IterBasedTrainLoop):
            if runner.iter + 1 < runner.max_iters:
                self._save_and_exit(runner, by_epoch=False)
        elif (isinstance(loop, ResumableEpochBasedTrainLoop)
              and batch_idx + 1 < len(loop.dataloader)):
            self._save_and_exit(runner, by_epoch=False)
        else:
            self._stop_at_epoch_end = True

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        loop = getattr(runner, '_train_loop', None)
        if isinstance(loop, ResumableEpochBasedTrainLoop) and loop.batches_into_epoch:
            checkpoint.setdefault('meta', {})['batches_into_epoch'] = loop.batches_into_epoch

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        loop = getattr(runner, '_train_loop', None)
        if isinstance(loop, ResumableEpochBasedTrainLoop):
            loop.batches_into_epoch = int(
                checkpoint.get('meta', {}).get('batches_into_epoch', 0))

    def after_train_epoch(self, runner) -> None:
        if self._stop_at_epoch_end and runner.epoch + 1 < runner.max_epochs:
            self._save_and_exit(runner, by_epoch=True)

    def _save_and_exit(self, runner, by_epoch: bool) -> None:
        name = f'epoch_{runner.epoch + 1}.pth' if by_epoch else f'iter_{runner.iter + 1}.pth'
        out_dir = next((h.out_dir for h in runner.hooks if isinstance(h, CheckpointHook)),
                       runner.work_dir)
        path = osp.join(out_dir, name)
        cause = self.received or 'a signal to another process'
        print_log(f'{cause}: preempted after iteration {runner.iter + 1}; saving {path}',
                  logger='current', level=logging.WARNING)
        runner.save_checkpoint(out_dir, name, by_epoch=by_epoch)  # every rank; rank 0 writes
        if is_main_process():
            atomic_write(osp.join(runner.work_dir, 'last_checkpoint'),
                         lambda f: f.write(path.encode()))
        barrier()  # no process exits (and gets its launcher to kill the others) before that
        marker = os.environ.get(PREEMPTED_MARKER_ENV)  # each machine's launcher has its own
        if marker:
            atomic_write(marker, lambda f: f.write(path.encode()))
        print_log(f'saved {path}; exiting with code {PREEMPTED_EXIT_CODE} (preempted: run '
                  'again with --resume)', logger='current', level=logging.WARNING)
        raise TrainingPreempted(path)
