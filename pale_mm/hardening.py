"""The run hardening: what pale_mm's tools add to mmengine, and what any run can opt into.

``import pale_mm`` only registers modules. The hardening is switched on by one config line,

    runner_type = 'HardenedRunner'

(pale_mm's configs and tools have it; mmdet's and mmseg's own tools build it from the config),
or, in a script without a Runner (an inferencer, a notebook), by
:func:`enable_safe_loading`. Each fix uses the extension point mmengine gives for it:

==============================  ===============================  ===========================
problem in mmengine             fix, and the extension point     upstream
==============================  ===============================  ===========================
``torch.load`` without          checkpoints load through         open-mmlab/mmengine#1655
``weights_only``: torch < 2.6   :func:`pale_mm.checkpoint.
unpickles anything, torch >=    safe_load` (an allow-list):
2.6 refuses mmengine's own      ``CheckpointLoader.
checkpoints                     register_scheme``, for the
                                process (init_cfg, load_from,
                                resume, inferencers)
checkpoints written in place:   ``AtomicLocalBackend`` (a        none filed
a kill leaves a truncated file  registered file backend) passed
                                as ``backend_args`` by
                                ``HardenedRunner.save_checkpoint``
old checkpoints removed before  ``AtomicCheckpointHook``         none filed
the new one is written;         (a ``CheckpointHook`` subclass,
``last_checkpoint`` written     put in place of the config's
in place                        ``CheckpointHook``)
test metrics json written by    ``RankZeroLoggerHook`` (a        same kind as
every rank into one file        ``LoggerHook`` subclass)         open-mmlab/mmengine#124
==============================  ===============================  ===========================

The fixes do not depend on the mmengine version: each keeps its behaviour where mmengine
already behaves (a weights-only load of an allowed file, an atomic write). An mmengine newer
than the newest one checked (:data:`NEWEST_CHECKED`) keeps them, and the log says so once.
"""
import logging

import mmengine
from mmengine.fileio import LocalBackend
from mmengine.logging import print_log
from mmengine.utils import digit_version

from .checkpoint import local_checkpoint, safe_load
from .fileio import atomic_write

NEWEST_CHECKED = '0.10.7'
ATOMIC_BACKEND = 'pale_atomic_local'
# what mmengine's own loaders take: local paths (prefix '') and these URL schemes
URL_SCHEMES = ('http://', 'https://', 'open-mmlab://', 'openmmlab://', 'torchvision://')


def _load_local(filename, map_location):
    return safe_load(filename, map_location)


def _load_url(filename, map_location):
    # the same download cache as mmengine's own URL loaders, then the same allow-list
    with local_checkpoint(filename) as path:
        return safe_load(path, map_location)


_load_local.__name__ = 'load_from_local'  # mmengine logs a loader's name from char 11 on
_load_url.__name__ = 'load_from_url'


def enable_safe_loading() -> None:
    """From now on in this process, every checkpoint that mmengine loads (``init_cfg``
    Pretrained of any model, ``load_from``, ``--resume``, the inferencers' weights), local
    or by URL, goes through :func:`pale_mm.checkpoint.safe_load`: ``weights_only`` loading
    with an allow-list of what OpenMMLab checkpoints hold. A file outside it is refused
    with a message naming what it holds and where."""
    from mmengine.runner.checkpoint import CheckpointLoader
    if CheckpointLoader._schemes.get('') is _load_local:  # the one private read: idempotence
        return
    CheckpointLoader.register_scheme(prefixes='', loader=_load_local, force=True)
    CheckpointLoader.register_scheme(prefixes=URL_SCHEMES, loader=_load_url, force=True)
    _note_newer_mmengine()


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend whose ``put`` and ``put_text`` write into a temporary
    file beside the destination and rename it once complete (:func:`pale_mm.fileio.
    atomic_write`): a process killed while saving leaves the previous file, and a full disk
    a one-line error naming the folder."""

    def put(self, obj: bytes, filepath) -> None:
        atomic_write(str(filepath), lambda f: f.write(obj))

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        atomic_write(str(filepath), lambda f: f.write(obj.encode(encoding)))


def atomic_backend_args() -> dict:
    """``backend_args`` that make mmengine's savers write local files atomically (the
    backend is registered under :data:`ATOMIC_BACKEND` on first use)."""
    from mmengine.fileio.backends import backends, register_backend
    if backends.get(ATOMIC_BACKEND) is not AtomicLocalBackend:
        register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)
    return dict(backend=ATOMIC_BACKEND)


_noted = []


def _note_newer_mmengine() -> None:
    if _noted or digit_version(mmengine.__version__) <= digit_version(NEWEST_CHECKED):
        return
    _noted.append(True)
    print_log(f'pale_mm: mmengine {mmengine.__version__} is newer than {NEWEST_CHECKED}, the '
              "newest that pale_mm's run hardening was checked against; it stays on "
              '(pale_mm/hardening.py lists what it does)', logger='current',
              level=logging.WARNING)
