"""AtomicCheckpointHook: mmengine's CheckpointHook for runs that may be killed at any moment."""
import contextlib
import os.path as osp
import sys

from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

from ...fileio import atomic_text_file


class _RemovalsAfterSaving:
    """The hook's file backend, with ``remove`` and ``rmtree`` noted instead of done; the
    hook does them once the new checkpoint and ``last_checkpoint`` are written."""

    def __init__(self, backend):
        self._backend = backend
        self.pending = []

    def remove(self, path):
        self.pending.append(('remove', path))

    def rmtree(self, path):
        self.pending.append(('rmtree', path))

    def do_pending(self):
        pending, self.pending = self.pending, []
        for kind, path in pending:
            getattr(self._backend, kind)(path)

    def __getattr__(self, name):
        return getattr(self._backend, name)


def _open_last_checkpoint_atomically(file, mode='r', *args, **kwargs):
    if mode == 'w' and osp.basename(str(file)) == 'last_checkpoint':
        return atomic_text_file(file)
    return open(file, mode, *args, **kwargs)


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` (same arguments), where a kill or a full disk at any
    moment of a save leaves a run that ``--resume`` continues:

    * the checkpoint is written into a temporary file and renamed once complete (by the
      atomic file backend that :class:`~pale_mm.engine.runner.HardenedRunner` saves with);
    * older checkpoints (``max_keep_ckpts``) and the previous best one are removed only
      after the new one is written (mmengine removes them first: with
      ``max_keep_ckpts=1``, a save that fails leaves no checkpoint at all);
    * ``last_checkpoint`` is written atomically (mmengine truncates it, then writes).

    :class:`~pale_mm.engine.runner.HardenedRunner` puts it in place of a config's
    ``CheckpointHook``.
    """

    def before_train(self, runner) -> None:
        super().before_train(runner)
        self.file_backend = _RemovalsAfterSaving(self.file_backend)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        with self._saving():
            super().after_train_iter(runner, batch_idx, data_batch, outputs)

    def after_train_epoch(self, runner) -> None:
        with self._saving():
            super().after_train_epoch(runner)

    def after_val_epoch(self, runner, metrics=None) -> None:
        with self._saving():
            super().after_val_epoch(runner, metrics)

    def after_train(self, runner) -> None:
        with self._saving():
            super().after_train(runner)

    @contextlib.contextmanager
    def _saving(self):
        # mmengine writes last_checkpoint with the builtin open() inside its private save
        # method, through no backend or hook method: no extension point reaches it, so while
        # this hook saves (and only then) the name open in that module writes that file
        # atomically.
        module = sys.modules[CheckpointHook.__module__]
        module.open = _open_last_checkpoint_atomically
        try:
            yield
        except BaseException:
            if isinstance(self.file_backend, _RemovalsAfterSaving):
                self.file_backend.pending = []  # the save failed: keep the older files
            raise
        finally:
            del module.open
        if isinstance(self.file_backend, _RemovalsAfterSaving):
            self.file_backend.do_pending()

