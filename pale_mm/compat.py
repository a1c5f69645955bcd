"""Fixes for problems of the installed mmengine, applied by ``import pale_mm``.

Each fix is applied only where the installed version has the problem (:data:`FIXES` says
which versions and why); nothing else in another library is changed at import. mmengine
0.10.7 is the newest release: each fix is gated to the versions up to it and is to be
checked again when a newer mmengine comes out.

============================  ==========================  ====================================
fix                           applies to                  upstream
============================  ==========================  ====================================
safe checkpoint loading       mmengine <= 0.10.7          open-mmlab/mmengine#1655 (local
                              (any torch)                 files); none filed (URLs)
atomic checkpoint saving      mmengine <= 0.10.7          none filed
removal after saving          mmengine <= 0.10.7          none filed
atomic last_checkpoint        mmengine <= 0.10.7          none filed
test metrics json on rank 0   mmengine <= 0.10.7          same kind as open-mmlab/mmengine#124,
                                                          which fixed it for training scalars
attention in FLOP counts      mmengine whose FlopAnalyzer none filed
                              has no handle for SDPA
============================  ==========================  ====================================
"""
import functools
import os
from typing import Callable, List, NamedTuple

import mmengine
from mmengine.utils import digit_version

from .checkpoint import is_url, safe_load
from .fileio import atomic_save, atomic_text_file

MMENGINE = digit_version(mmengine.__version__)
NEWEST_CHECKED = digit_version('0.10.7')


class Fix(NamedTuple):
    name: str
    needed: Callable[[], bool]
    apply: Callable[[], None]


# ---------------------------------------------------------------------------------------
# mmengine calls torch.load without weights_only. torch < 2.6 then unpickles anything: a
# downloaded checkpoint can run code as it loads. torch >= 2.6 loads weights_only and
# refuses mmengine's own checkpoints (open-mmlab/mmengine#1655). On every torch, local files
# are loaded by pale_mm.checkpoint.safe_load instead: restricted to an allow-list of what
# mmengine, mmdet, mmseg and mmpretrain checkpoints hold.
def _mmengine_loads_without_allow_list() -> bool:
    return MMENGINE <= NEWEST_CHECKED


def _load_local(filename, map_location):
    return safe_load(filename, map_location)


_load_local.__name__ = 'load_from_local'  # mmengine logs the loader's name from char 11 on


# mmengine's loaders of URLs (http(s)://, open-mmlab://, torchvision://: load_from, any
# backbone's init_cfg, the inferencers' weights) call torch.hub.load_state_dict_from_url,
# whose weights_only defaults to False: a downloaded checkpoint could run code on load.
# They now download into the same cache and load through safe_load.
URL_SCHEMES = ('http://', 'https://', 'open-mmlab://', 'openmmlab://', 'torchvision://')


def _load_url(filename, map_location):
    from .checkpoint import local_checkpoint
    with local_checkpoint(filename) as path:
        return safe_load(path, map_location)


_load_url.__name__ = 'load_from_url'


def _use_safe_loading() -> None:
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes='', loader=_load_local, force=True)
    CheckpointLoader.register_scheme(prefixes=URL_SCHEMES, loader=_load_url, force=True)


# ---------------------------------------------------------------------------------------
# mmengine writes a checkpoint in place: a job killed (or a disk filled) while saving leaves
# a truncated file where the previous checkpoint or nothing was. Local checkpoints are
# written into a temporary file and renamed once complete (pale_mm.checkpoint.atomic_save).
def _atomic(original):
    @functools.wraps(original)
    def save_checkpoint(checkpoint, filename, file_client_args=None, backend_args=None):
        local = isinstance(filename, str) and not is_url(filename)
        if local and file_client_args is None and backend_args is None:
            atomic_save(checkpoint, filename)
        else:
            original(checkpoint, filename, file_client_args=file_client_args,
                     backend_args=backend_args)

    save_checkpoint._pale_atomic = True
    return save_checkpoint


def _save_atomically() -> None:
    import mmengine.runner as runner_pkg
    import mmengine.runner.checkpoint as checkpoint_module
    import mmengine.runner.runner as runner_module
    if getattr(checkpoint_module.save_checkpoint, '_pale_atomic', False):
        return
    atomic = _atomic(checkpoint_module.save_checkpoint)
    for module in (checkpoint_module, runner_module, runner_pkg):
        if hasattr(module, 'save_checkpoint'):
            module.save_checkpoint = atomic


# ---------------------------------------------------------------------------------------
# mmengine's CheckpointHook deletes the oldest checkpoint (max_keep_ckpts) or the previous
# best one *before* writing the new one: a kill in between (with max_keep_ckpts=1, the only
# one) leaves nothing to resume from. The deletions now wait until the new checkpoint and
# last_checkpoint are written.
class _DeferredRemoval:
    """A file backend that notes ``remove``/``rmtree`` calls instead of doing them."""

    def __init__(self, backend):
        self._backend = backend
        self.removals = []

    def remove(self, path):
        self.removals.append(('remove', path))

    def rmtree(self, path):
        self.removals.append(('rmtree', path))

    def __getattr__(self, name):
        return getattr(self._backend, name)


def _removing_after(method):
    @functools.wraps(method)
    def wrapper(self, runner, *args, **kwargs):
        backend = self.file_backend
        deferred = _DeferredRemoval(backend)
        self.file_backend = deferred
        try:
            result = method(self, runner, *args, **kwargs)
        finally:
            self.file_backend = backend
        for kind, path in deferred.removals:
            getattr(backend, kind)(path)
        return result

    wrapper._pale_deferred = True
    return wrapper


def _remove_after_saving() -> None:
    from mmengine.hooks import CheckpointHook

    # the method that saves and removes: _save_checkpoint_with_step in newer mmengine (0.10.7,
    # where _save_checkpoint calls it), _save_checkpoint itself in older ones (0.7.1)
    saving = ('_save_checkpoint_with_step' if hasattr(CheckpointHook,
                                                      '_save_checkpoint_with_step')
              else '_save_checkpoint')
    for name in (saving, '_save_best_checkpoint'):
        method = getattr(CheckpointHook, name)
        if not getattr(method, '_pale_deferred', False):
            setattr(CheckpointHook, name, _removing_after(method))


# ---------------------------------------------------------------------------------------
# mmengine's CheckpointHook writes last_checkpoint with open(path, 'w') after each save: a
# kill or a full disk in between leaves it empty, and --resume then starts from nothing.
# That open call, the only one in mmengine.hooks.checkpoint_hook, now writes atomically.
def _open_last_checkpoint_atomically(file, mode='r', *args, **kwargs):
    if mode == 'w' and os.path.basename(str(file)) == 'last_checkpoint':
        return atomic_text_file(file)
    return open(file, mode, *args, **kwargs)


def _atomic_last_checkpoint() -> None:
    import mmengine.hooks.checkpoint_hook as checkpoint_hook
    checkpoint_hook.open = _open_last_checkpoint_atomically


# ---------------------------------------------------------------------------------------
# mmengine's LoggerHook.after_test_epoch dumps the test metrics to
# <work_dir>/<timestamp>/<timestamp>.json on every rank, all into the same file, which then
# holds one rank's text partly over another's (invalid json). Ranks other than 0 skip it;
# their log messages go nowhere anyway (mmengine logs errors only there).
def _test_json_on_rank0_only() -> None:
    from mmengine.dist import get_rank
    from mmengine.hooks import LoggerHook
    original = LoggerHook.after_test_epoch
    if getattr(original, '_pale_rank0', False):
        return

    @functools.wraps(original)
    def after_test_epoch(self, runner, metrics=None):
        if get_rank() == 0:
            original(self, runner, metrics)

    after_test_epoch._pale_rank0 = True
    LoggerHook.after_test_epoch = after_test_epoch


# ---------------------------------------------------------------------------------------
# mmengine's FlopAnalyzer (fvcore's jit-trace counter) has no handle for
# aten::scaled_dot_product_attention and silently leaves the attention products out of every
# count, mmdet's and mmseg's get_flops scripts included.
def _flop_analyzer_skips_sdpa() -> bool:
    from mmengine.analysis import complexity_analysis

    from .flops import SDPA_OP
    return SDPA_OP not in complexity_analysis._DEFAULT_SUPPORTED_FLOP_OPS


def _count_sdpa_flops() -> None:
    from mmengine.analysis import complexity_analysis

    from .flops import SDPA_OP, sdpa_flop_jit
    complexity_analysis._DEFAULT_SUPPORTED_FLOP_OPS[SDPA_OP] = sdpa_flop_jit


FIXES: List[Fix] = [
    Fix('safe checkpoint loading', _mmengine_loads_without_allow_list,
        _use_safe_loading),
    Fix('atomic checkpoint saving', lambda: MMENGINE <= NEWEST_CHECKED, _save_atomically),
    Fix('removal after saving', lambda: MMENGINE <= NEWEST_CHECKED, _remove_after_saving),
    Fix('atomic last_checkpoint', lambda: MMENGINE <= NEWEST_CHECKED, _atomic_last_checkpoint),
    Fix('test metrics json on rank 0', lambda: MMENGINE <= NEWEST_CHECKED,
        _test_json_on_rank0_only),
    Fix('attention in FLOP counts', _flop_analyzer_skips_sdpa, _count_sdpa_flops),
]
applied: List[str] = []


def apply_fixes() -> List[str]:
    """Apply the fixes the installed mmengine needs (once); returns their names."""
    for fix in FIXES:
        if fix.name not in applied and fix.needed():
            fix.apply()
            applied.append(fix.name)
    return list(applied)
