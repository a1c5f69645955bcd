"""mmengine hooks that ``tools/train.py`` and ``tools/test.py`` add to every run.

* :class:`ExactResumeHook` -- a run resumed from a checkpoint continues with the random
  state the interrupted run had there, so that it ends with the same weights.
* :class:`DataCheckHook` -- every sample is read through
  :class:`pale_mm.data.checks.CheckedPipeline`: a broken file or an out-of-range label names
  itself instead of failing deep inside torch.

Both are registered in mmengine's root ``HOOKS`` registry (every scope finds them) and can be
put into any config's ``custom_hooks`` as well.
"""
import random

import numpy as np
import torch
from mmengine.dist import get_world_size
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

from .data.checks import CheckedPipeline, DataError


def _rng_state() -> dict:
    state = dict(torch=torch.get_rng_state(), numpy=np.random.get_state(),
                 python=random.getstate())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict, full: bool) -> None:
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])
    if full:
        np.random.set_state(state['numpy'])
        random.setstate(state['python'])


@HOOKS.register_module()
class ExactResumeHook(Hook):
    """Save the random state with each checkpoint and continue from it, in the running
    process as in a process resumed from that checkpoint.

    mmengine's ``--resume`` restores weights, optimizer, schedulers and the seed, but every
    random draw after the checkpoint (stochastic depth, the RPN's and RoI heads' samplers,
    the data pipeline's crops and flips) then starts again from the seed, so a resumed run
    drifts from the one that was interrupted. This hook stores the random state of torch,
    numpy and Python in the checkpoint (``checkpoint['rng_state']``) and sets it again where
    training continues -- at the start of the next epoch for checkpoints written at the end
    of an epoch, at the next iteration (torch only: the batch is already read, and the
    data loader's skip replays the pipeline's draws) for iteration checkpoints. The running
    process does the same, which only rewinds the draws validation made in between, so that
    an interrupted-and-resumed run and an uninterrupted one are identical.

    Exact for one process with the data read in the main process (``num_workers=0``) or by
    workers that are not persistent. With several processes the checkpoint holds the random
    state of rank 0 only: the ranks then continue from their seeds, as without this hook.
    """

    priority = 'VERY_LOW'

    def __init__(self):
        self._pending = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if get_world_size() > 1:
            return
        at_iter = int(checkpoint.get('meta', {}).get('iter', runner.iter))
        snapshot = dict(at_iter=at_iter, epoch_end=at_iter == runner.iter, **_rng_state())
        checkpoint['rng_state'] = snapshot
        self._pending = snapshot

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        snapshot = checkpoint.get('rng_state')
        if isinstance(snapshot, dict) and get_world_size() == 1:
            self._pending = snapshot

    def _apply_if_due(self, runner, epoch_end: bool) -> None:
        snapshot = self._pending
        if not snapshot or snapshot['epoch_end'] != epoch_end:
            return
        if runner.iter == snapshot['at_iter']:
            _set_rng_state(snapshot, full=epoch_end)
        if runner.iter >= snapshot['at_iter']:
            self._pending = None  # a load_from checkpoint of another run never matches

    def before_train_epoch(self, runner) -> None:
        self._apply_if_due(runner, epoch_end=True)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._apply_if_due(runner, epoch_end=False)


def _leaf_datasets(dataset):
    """The datasets under mmengine's wrappers (ConcatDataset, RepeatDataset, ...)."""
    if hasattr(dataset, 'datasets'):
        for d in dataset.datasets:
            yield from _leaf_datasets(d)
    elif hasattr(dataset, 'dataset') and not hasattr(dataset, 'pipeline'):
        yield from _leaf_datasets(dataset.dataset)
    else:
        yield dataset


def _seg_classes(dataset):
    """(num_classes, ignore_index) of an mmseg dataset, else (None, 255)."""
    try:
        from mmseg.datasets import BaseSegDataset
    except ImportError:  # pragma: no cover
        return None, 255
    if isinstance(dataset, BaseSegDataset):
        return len(dataset.metainfo.get('classes') or ()), getattr(dataset, 'ignore_index', 255)
    return None, 255


def wrap_dataset_pipelines(dataset) -> None:
    """Read the samples of ``dataset`` (and of the datasets it wraps) through
    :class:`CheckedPipeline`; label maps of mmseg datasets are held to their classes."""
    for leaf in _leaf_datasets(dataset):
        pipeline = getattr(leaf, 'pipeline', None)
        if pipeline is None or isinstance(pipeline, CheckedPipeline):
            continue
        num_classes, ignore_index = _seg_classes(leaf)
        leaf.pipeline = CheckedPipeline(pipeline, num_classes, ignore_index)


@HOOKS.register_module()
class DataCheckHook(Hook):
    """Read every sample through :class:`CheckedPipeline` (train, val and test), and check
    that a segmentor's heads have as many classes as its training data.

    ``tools/train.py`` and ``tools/test.py`` wrap the pipelines as each data loader is built
    (:func:`pale_mm.launch.build_runner`), before any worker process starts. In a config run
    by other tools this hook wraps them when training, validation or testing begins, which
    is too late for worker processes an iteration-based loop has already started.
    """

    priority = 'VERY_HIGH'

    def before_train(self, runner) -> None:
        wrap_dataset_pipelines(runner.train_dataloader.dataset)
        self._check_heads(runner)

    def before_val(self, runner) -> None:
        wrap_dataset_pipelines(runner.val_dataloader.dataset)

    def before_test(self, runner) -> None:
        wrap_dataset_pipelines(runner.test_dataloader.dataset)

    @staticmethod
    def _check_heads(runner) -> None:
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        for dataset in _leaf_datasets(runner.train_dataloader.dataset):
            num_classes, _ = _seg_classes(dataset)
            if not num_classes:
                continue
            for name in ('decode_head', 'auxiliary_head'):
                heads = getattr(model, name, None)
                for i, head in enumerate(heads if isinstance(heads, torch.nn.ModuleList)
                                         else [heads]):
                    n = getattr(head, 'num_classes', None)
                    if n is not None and n != num_classes:
                        key = f'model.{name}' + (f'.{i}' if isinstance(
                            heads, torch.nn.ModuleList) else '')
                        raise DataError(
                            f'the training data has {num_classes} classes '
                            f'(train_dataloader.dataset.metainfo.classes) but {key}.num_classes '
                            f'is {n}; set {key}.num_classes={num_classes} (or the classes of '
                            'the dataset) so that they agree')
            return


def add_run_hooks(cfg, train: bool) -> None:
    """Put :class:`DataCheckHook` (and for training :class:`ExactResumeHook`) into
    ``cfg.custom_hooks`` unless the config has them already."""
    hooks = list(cfg.get('custom_hooks') or [])
    have = {h.get('type') for h in hooks if isinstance(h, dict)}
    wanted = ['DataCheckHook'] + (['ExactResumeHook'] if train else [])
    for name in wanted:
        if name not in have and f'pale_mm.{name}' not in have:
            hooks.append(dict(type=name))
    cfg.custom_hooks = hooks
    print_log(f'pale_mm hooks: {", ".join(wanted)}', logger='current', level=10)
