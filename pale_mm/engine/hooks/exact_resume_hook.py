"""ExactResumeHook: a run resumed from a checkpoint continues with the random state the
interrupted run had there, on every process, so that it ends with the same weights."""
import functools
import logging
import random

import numpy as np
import torch
from mmengine.dist import all_gather_object, get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS
from mmengine.runner import IterBasedTrainLoop


def _rng_state(full: bool) -> dict:
    """This process's random state: torch (and CUDA) always, numpy and Python if ``full``."""
    state = dict(torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state()
    if full:
        state.update(numpy=np.random.get_state(), python=random.getstate())
    return state


def _set_rng_state(state: dict) -> None:
    # a resumed checkpoint is mapped to the GPU on GPU machines; the generators take CPU bytes
    torch.set_rng_state(state['torch'].cpu())
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'].cpu())
    if 'numpy' in state:
        np.random.set_state(state['numpy'])
        random.setstate(state['python'])


@HOOKS.register_module()
class ExactResumeHook(Hook):
    """A run resumed from a checkpoint draws the random numbers the interrupted run would
    have drawn, on every process, so that it ends with the same weights.

    mmengine's ``--resume`` restores weights, optimizer, schedulers and the seed, but every
    random draw after the checkpoint (stochastic depth, the RPN's and RoI heads' samplers,
    the data pipeline's crops and flips) starts again from the seed. Two rules, applied in
    every run, make the random state where training continues a function of the training
    alone, and the checkpoint carries it:

    * an epoch starts from the torch, numpy and Python state the previous epoch ended with
      (this rewinds what validation drew in between);
    * an iteration after the first of its epoch starts from the torch state the previous
      iteration ended with (this rewinds validation, and the torch draws of data read
      again when a resumed run skips the batches already trained).

    Each checkpoint holds both states of every rank (``checkpoint['rng_state']``; gathered
    to rank 0, which writes the file) and each rank of the resumed run takes its own.
    The numpy and Python state inside an epoch needs nothing: the pipeline is their only
    user, and the resumed run reads the skipped batches again with the same draws. Data
    loader workers need nothing either where mmengine starts them for each epoch
    (``persistent_workers=False``, seeded from seed + rank and worker id) or once for the
    whole run (iteration-based, ``InfiniteSampler``: the skipped batches replay their
    draws). Persistent workers of an epoch-based loop carry their random state from epoch
    to epoch inside the worker processes, where no checkpoint can reach it: resuming such
    a run after its first epoch is reported as not exact.

    A checkpoint written by another number of processes is resumed with a warning that
    the run will not be exact: each process then reads other samples.
    """

    priority = 'LOW'  # capture the state before CheckpointHook (VERY_LOW) saves it

    def __init__(self):
        self._epoch_start = None  # full state the current epoch started from
        self._iter_end = None     # torch state the last iteration ended with
        self._loaded = None       # rng_state and meta of the last loaded checkpoint
        self._gathered = None     # every rank's snapshot, for the checkpoint being saved

    # the two rules, in every run
    def before_train_epoch(self, runner) -> None:
        if self._epoch_start is not None:
            _set_rng_state(self._epoch_start)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self._iter_end is not None:
            _set_rng_state(self._iter_end)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._iter_end = _rng_state(full=False)

    def after_train_epoch(self, runner) -> None:
        self._epoch_start = _rng_state(full=True)
        self._iter_end = None

    # saving: every rank's state into rank 0's checkpoint
    def before_run(self, runner) -> None:
        """``Runner.save_checkpoint`` runs on every rank but writes on rank 0 only, and
        ``before_save_checkpoint`` is called there only: the ranks' states are gathered
        as the save begins, which every rank takes part in."""
        save = runner.save_checkpoint

        @functools.wraps(save)
        def save_checkpoint_with_every_rank_rng(*args, **kwargs):
            snapshot = dict(epoch_start=self._epoch_start, iter_end=self._iter_end)
            self._gathered = (all_gather_object(snapshot) if get_world_size() > 1
                              else [snapshot])
            try:
                return save(*args, **kwargs)
            finally:
                self._gathered = None

        runner.save_checkpoint = save_checkpoint_with_every_rank_rng

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self._gathered is not None:
            checkpoint['rng_state'] = dict(world_size=len(self._gathered),
                                           ranks=self._gathered)

    # resuming: each rank takes its own state
    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._loaded = dict(rng_state=checkpoint.get('rng_state'),
                            iter=checkpoint.get('meta', {}).get('iter'))

    def before_train(self, runner) -> None:
        loaded, self._loaded = self._loaded, None
        if not loaded or not runner.iter or loaded['iter'] != runner.iter:
            return  # a fresh run, or load_from (weights only): start from the seed
        saved = loaded['rng_state']
        where = f'resumed at iteration {runner.iter}'
        if not isinstance(saved, dict) or 'ranks' not in saved:
            return _not_exact(f'{where}: the checkpoint holds no random state of its '
                              'processes (written without pale_mm.ExactResumeHook)')
        if saved['world_size'] != get_world_size():
            return _not_exact(
                f"{where}: the checkpoint was written by {saved['world_size']} processes, "
                f'this run has {get_world_size()}, so each process reads other samples. '
                f"Resume with {saved['world_size']} processes for an exact continuation")
        mine = saved['ranks'][get_rank()]
        self._epoch_start, self._iter_end = mine['epoch_start'], mine['iter_end']
        loader = runner.train_dataloader
        if (runner.epoch > 0 and not isinstance(runner.train_loop, IterBasedTrainLoop)
                and getattr(loader, 'persistent_workers', False) and loader.num_workers > 0):
            _not_exact(f'{where}: persistent data loader workers of an epoch-based loop keep '
                       'their random state in their own processes, out of reach of the '
                       'checkpoint; set train_dataloader.persistent_workers=False for '
                       'exact resumes')


def _not_exact(reason: str) -> None:
    print_log(f'ExactResumeHook: {reason}. Training continues, but not with the random '
              'draws of the interrupted run.', logger='current', level=logging.WARNING)
