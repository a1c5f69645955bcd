"""Safe checkpoint loading and pretrained-backbone loading.

torch >= 2.6 loads with ``weights_only=True`` by default, and mmengine 0.10.7 calls
``torch.load`` without saying so: mmengine's own checkpoints (which hold a message hub with
``HistoryBuffer`` objects and numpy scalars) are then refused. Turning safety off
(``weights_only=False``) would let any downloaded checkpoint run code on load. Instead,
:func:`safe_load` keeps ``weights_only`` loading and allows exactly the classes that
mmengine, mmdet, mmseg and mmpretrain checkpoints hold (:data:`ALLOWED_GLOBALS`).
:mod:`pale_mm.compat` makes mmengine's local-file loader (used for ``init_cfg`` Pretrained,
``load_from`` and ``--resume``) go through it where the installed versions need it.

Saving is made atomic (:func:`atomic_save`, used by :mod:`pale_mm.compat` for mmengine's saves): a checkpoint is written into a
temporary file beside its destination and renamed over it only once complete, so a process
killed while saving leaves the previous checkpoints as they were, never a truncated file
that ``--resume`` would pick up.
"""
import glob
import os
import os.path as osp
import pickle
import re
import uuid
import zipfile
from collections import OrderedDict
from typing import Dict, List, Tuple

import numpy as np
import torch
from mmengine.logging import print_log

from .errors import PaleError


class UnsafeCheckpointError(PaleError, pickle.UnpicklingError):
    """A checkpoint holds an object outside the allow-list; it was not loaded."""


class CheckpointMismatchError(PaleError, ValueError):
    """A pretrained checkpoint does not fit the backbone; the message lists the keys."""


def _numpy_globals() -> List:
    """numpy objects that pickled arrays, dtypes and scalars refer to."""
    found = [np.ndarray, np.dtype]
    try:  # numpy >= 2 pickles through numpy._core, numpy 1 through numpy.core
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    found += [_reconstruct, scalar]
    # dtype classes (numpy >= 1.25 pickles np.dtype('float64') as dtypes.Float64DType)
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        found += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith('DType')]
    return found


def _allowed_globals() -> List:
    from mmengine.logging.history_buffer import HistoryBuffer

    # HistoryBuffer pickles its statistics methods as ``getattr(HistoryBuffer, 'min')``.
    # Allowing ``getattr`` itself would let a pickle walk from any allowed object to
    # ``os.system``; this stand-in allows exactly those look-ups and nothing else.
    statistics = ('min', 'max', 'current', 'mean')

    def history_buffer_getattr(obj, name):
        if obj is HistoryBuffer and name in statistics:
            return getattr(obj, name)
        raise pickle.UnpicklingError(
            f'GLOBAL getattr({getattr(obj, "__name__", type(obj).__name__)}, {name!r}): only '
            f'HistoryBuffer.{{{", ".join(statistics)}}} may be looked up')

    return _numpy_globals() + [HistoryBuffer] + [
        (history_buffer_getattr, f'{module}.getattr') for module in ('builtins', '__builtin__')
    ]


ALLOWED_GLOBALS = _allowed_globals()


def _describe_allowed() -> str:
    return ('tensors, plain Python containers and numbers, numpy arrays, dtypes and scalars, '
            "and mmengine's HistoryBuffer")


def safe_load(filename: str, map_location='cpu'):
    """``torch.load`` with ``weights_only=True`` and pale_mm's allow-list.

    Raises:
        FileNotFoundError: the file does not exist.
        UnsafeCheckpointError: the pickle names a class or function outside the allow-list.
    """
    filename = osp.expanduser(str(filename))
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint file not found: {filename}')
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        names = re.findall(r'GLOBAL ([\w.]+)', str(e)) or re.findall(
            r'global ([\w.]+)', str(e))
        what = f' {names[0]}' if names else ' an object'
        raise UnsafeCheckpointError(
            f'refused to load checkpoint {filename}: it holds{what}, which is not on '
            f"pale_mm's allow-list ({_describe_allowed()}). Unpickling it could run "
            'arbitrary code. If you trust the file, re-save only its weights: '
            "torch.save({'state_dict': torch.load(path, weights_only=False)['state_dict']}, "
            'new_path).') from None


# ---------------------------------------------------------------------------------------
# atomic saving
TMP_SUFFIX = '.tmp'


def tmp_path_beside(filename: str) -> str:
    """``dir/.name.<pid>.<random>.tmp``: beside the destination (same file system, so the
    rename is atomic), hidden, and naming the process that writes it."""
    folder, base = osp.split(filename)
    return osp.join(folder, f'.{base}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}')


def atomic_write(filename: str, write) -> None:
    """Call ``write(file_object)`` on a temporary file, then rename it to ``filename``.

    On any failure (or a kill) ``filename`` keeps its previous content, if it had one.
    """
    filename = osp.realpath(osp.expanduser(str(filename)))  # replace a link's target
    folder = osp.dirname(filename)
    os.makedirs(folder, exist_ok=True)
    tmp = tmp_path_beside(filename)
    try:
        with open(tmp, 'xb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filename)
    except BaseException:
        if osp.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - file systems without directory fsync
        pass


def atomic_save(obj, filename: str) -> None:
    """``torch.save(obj, filename)``, atomically (see :func:`atomic_write`)."""
    atomic_write(filename, lambda f: torch.save(obj, f))


def remove_stale_tmp_files(folder: str) -> List[str]:
    """Delete temporary files that killed processes left in ``folder``; returns them."""
    removed = []
    for path in glob.glob(osp.join(folder, f'.*{TMP_SUFFIX}')):
        m = re.match(r'\.(.+)\.(\d+)\.[0-9a-f]{8}' + re.escape(TMP_SUFFIX) + '$',
                     osp.basename(path))
        if not m:
            continue
        pid = int(m.group(2))
        try:
            os.kill(pid, 0)
            alive = pid != os.getpid()
        except ProcessLookupError:
            alive = False
        except PermissionError:  # another user's live process
            alive = True
        if not alive:
            try:
                os.unlink(path)
            except FileNotFoundError:  # another process of the run removed it first
                continue
            removed.append(path)
    return removed


def is_complete_checkpoint(path: str) -> bool:
    """Whether ``path`` is a whole torch checkpoint (a zip archive with its directory at
    the end; a truncated file has none)."""
    try:
        with zipfile.ZipFile(path) as z:
            return len(z.namelist()) > 0
    except (OSError, zipfile.BadZipFile):
        return False


# ---------------------------------------------------------------------------------------
# pretrained backbones
def extract_state_dict(checkpoint) -> Dict[str, torch.Tensor]:
    """The weights of a checkpoint: ``state_dict`` / ``model`` entry or the dict itself."""
    if not isinstance(checkpoint, dict):
        raise ValueError(f'checkpoint holds a {type(checkpoint).__name__}, not a dict of '
                         'weights')
    for key in ('state_dict', 'model'):
        if key in checkpoint and isinstance(checkpoint[key], dict):
            checkpoint = checkpoint[key]
            break
    return OrderedDict((k, v) for k, v in checkpoint.items() if isinstance(v, torch.Tensor))


def backbone_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Strip ``module.`` (DDP); keep and strip ``backbone.`` keys where there are any
    (classifier, detector and segmentor checkpoints), else take the dict as is."""
    state_dict = OrderedDict(
        (k[len('module.'):] if k.startswith('module.') else k, v)
        for k, v in state_dict.items())
    if any(k.startswith('backbone.') for k in state_dict):
        state_dict = OrderedDict((k[len('backbone.'):], v) for k, v in state_dict.items()
                                 if k.startswith('backbone.'))
    return state_dict


def match_state_dict(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor]
                     ) -> Tuple[Dict, List[str], List[str], List[str]]:
    """Split ``state_dict`` against ``model``: (matched, missing, unexpected, mismatched)."""
    own = model.state_dict()
    matched = OrderedDict()
    mismatched = []
    for k, v in state_dict.items():
        if k in own:
            if own[k].shape == v.shape:
                matched[k] = v
            else:
                mismatched.append(f'{k}: checkpoint {tuple(v.shape)}, model '
                                  f'{tuple(own[k].shape)}')
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    return matched, missing, unexpected, mismatched


def _prefix_hint(unexpected: List[str], own_keys) -> str:
    """If the unexpected keys are the model's keys behind a common prefix, name it."""
    own_keys = set(own_keys)
    prefixes = {}
    for k in unexpected:
        parts = k.split('.')
        for i in range(1, len(parts)):
            if '.'.join(parts[i:]) in own_keys:
                p = '.'.join(parts[:i]) + '.'
                prefixes[p] = prefixes.get(p, 0) + 1
                break
    if not prefixes:
        return ''
    best = max(prefixes, key=prefixes.get)
    return (f" The checkpoint's keys carry the prefix {best!r}; strip it (for example "
            f"{{k.removeprefix({best!r}): v for k, v in state_dict.items()}}) and save again.")


def _preview(keys: List[str], n: int = 8) -> str:
    shown = ', '.join(keys[:n])
    return f'{shown}, ... ({len(keys)} in all)' if len(keys) > n else shown


def load_pretrained_backbone(model: torch.nn.Module, filename: str,
                             map_location='cpu', min_fraction: float = 0.5) -> Dict:
    """Load a pretrained checkpoint into a backbone, reporting what did not fit.

    Accepts classification checkpoints (``backbone.`` prefix plus a head), mmdet/mmseg
    checkpoints and plain backbone state dicts. Refuses, listing keys, when fewer than
    ``min_fraction`` of the model's entries are found in the checkpoint.

    Returns:
        dict with ``missing``, ``unexpected`` and ``mismatched`` key lists.
    """
    name = type(model).__name__
    if not osp.isfile(osp.expanduser(str(filename))):
        raise FileNotFoundError(
            f'{name}: pretrained checkpoint not found at {osp.abspath(filename)} (from '
            "the backbone's init_cfg). Put the ImageNet checkpoint there, point "
            'model.backbone.init_cfg.checkpoint at it, or train from scratch with '
            '--cfg-options model.backbone.init_cfg=None')
    state_dict = backbone_state_dict(extract_state_dict(safe_load(filename, map_location)))
    matched, missing, unexpected, mismatched = match_state_dict(model, state_dict)
    own = model.state_dict()
    if len(matched) < min_fraction * len(own):
        raise CheckpointMismatchError(
            f'{name}: checkpoint {filename} does not fit this backbone: only '
            f'{len(matched)} of its {len(own)} entries were found. Missing: '
            f'{_preview(missing)}. Unexpected: {_preview(unexpected) or "none"}.'
            + (f' Shape mismatches: {_preview(mismatched)}.' if mismatched else '')
            + _prefix_hint(unexpected, own)
            + ' Is it a checkpoint of the same arch (tiny/small/base)?')
    model.load_state_dict(matched, strict=False)
    report = dict(missing=missing, unexpected=unexpected, mismatched=mismatched)
    msg = f'{name}: loaded {len(matched)}/{len(own)} entries from {filename}'
    for kind, keys in report.items():
        if keys:
            msg += f'\n  {kind} keys: {_preview(keys)}'
    if missing and all(re.match(r'norm\d+\.', k) for k in missing):
        msg += ('\n  (only output norms are missing: the checkpoint comes from a model that '
                'did not output those stages, such as an ImageNet classifier that pools the '
                'last one; they start at weight 1, bias 0)')
    print_log(msg, logger='current')
    return report

