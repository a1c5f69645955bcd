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
import contextlib
import difflib
import glob
import hashlib
import os
import os.path as osp
import pickle
import re
import urllib.parse
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


# ---------------------------------------------------------------------------------------
# checkpoints named by URL
ZOO_SCHEMES = ('open-mmlab', 'openmmlab', 'mmcls', 'torchvision', 'modelzoo')


class CheckpointDownloadError(PaleError, OSError):
    """A checkpoint URL that names nothing known or could not be downloaded."""


def is_url(filename) -> bool:
    return '://' in str(filename)


def _fix_hint() -> str:
    return ('Check the address and the network, or download the file yourself and give its '
            'local path (model.backbone.init_cfg.checkpoint)')


def resolve_checkpoint_url(url: str) -> str:
    """The address behind one of mmengine's model-zoo names (``open-mmlab://``,
    ``openmmlab://``, ``mmcls://``, ``torchvision://``), read from mmengine's tables (and
    ``$MMENGINE_HOME/open_mmlab.json``): an http(s) URL or a file under mmengine's home.
    Other URLs come back unchanged; a scheme no mmengine loader reads is refused.

    Raises:
        CheckpointDownloadError: the scheme or the model-zoo name is unknown.
    """
    from mmengine.fileio.backends.registry_utils import prefix_to_backends
    from mmengine.runner import checkpoint as zoo
    scheme, name = url.split('://', 1)
    if scheme in ('http', 'https'):
        return url
    if scheme not in ZOO_SCHEMES:
        if scheme.split(':')[-1] in prefix_to_backends:  # s3://, petrel://, cluster:s3://
            return url
        raise CheckpointDownloadError(
            f'checkpoint {url}: no loader reads {scheme}:// addresses (known: http://, '
            f'https://, {", ".join(s + "://" for s in ZOO_SCHEMES)} and mmengine\'s file '
            f'backends\' {", ".join(p + "://" for p in sorted(prefix_to_backends))}). '
            + _fix_hint())
    if scheme in ('open-mmlab', 'openmmlab'):
        table = zoo.get_external_models()
        name = zoo.get_deprecated_model_names().get(name, name)
    elif scheme == 'mmcls':
        table = zoo.get_mmcls_models()
    else:
        table = zoo.get_torchvision_models()
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=1)
        raise CheckpointDownloadError(
            f"checkpoint {url}: mmengine's {scheme}:// table has no {name!r}"
            + (f' (did you mean {scheme}://{close[0]}?)' if close else '') + '. '
            + _fix_hint())
    target = table[name]
    return target if is_url(target) else osp.join(zoo._get_mmengine_home(), target)


def _is_torch_file(path: str) -> bool:
    """A zip archive (torch >= 1.6) or a pickle (the legacy format), not an HTML page."""
    with open(path, 'rb') as f:
        return zipfile.is_zipfile(f) or f.read(1) == b'\x80'


def _download(url: str, path: str) -> None:
    """``url`` into ``path`` through a temporary file beside it: a broken download leaves
    nothing behind, and an answer that is no torch file is removed again."""
    try:
        torch.hub.download_url_to_file(url, path, progress=False)
    except (OSError, ValueError) as e:  # urllib's HTTPError and URLError are OSErrors
        raise CheckpointDownloadError(
            f'could not download checkpoint {url}: {e}. ' + _fix_hint()) from None
    if not _is_torch_file(path):
        with open(path, 'rb') as f:
            head = f.read(32)
        os.unlink(path)
        raise CheckpointDownloadError(
            f'{url} did not answer with a torch checkpoint (it starts with {head!r}). '
            + _fix_hint())


def _cached_download(url: str) -> str:
    """The local copy of an http(s) checkpoint, downloaded once into torch's hub cache
    (``$TORCH_HOME/hub/checkpoints``, as mmengine does; the name carries a hash of the URL,
    so two files of the same name from different places stay apart). With several
    processes rank 0 downloads first and the others read its copy (or, on other machines,
    download their own)."""
    from mmengine.dist import barrier, get_dist_info
    base = osp.basename(urllib.parse.urlparse(url).path) or 'checkpoint.pth'
    path = osp.join(torch.hub.get_dir(), 'checkpoints',
                    f'{hashlib.sha256(url.encode()).hexdigest()[:10]}-{base}')
    os.makedirs(osp.dirname(path), exist_ok=True)
    rank, world_size = get_dist_info()
    failure = None
    if rank == 0 and not osp.isfile(path):
        try:
            _download(url, path)
        except CheckpointDownloadError as e:
            failure = e  # raised after the barrier, which the other ranks wait at
    if world_size > 1:
        barrier()
        if rank > 0 and not osp.isfile(path):
            _download(url, path)
    if failure is not None:
        raise failure
    return path


@contextlib.contextmanager
def local_checkpoint(filename: str):
    """A local file that holds the checkpoint ``filename`` names: a path as it is, an
    http(s) or model-zoo URL as a cached download, an address of another mmengine file
    backend (``s3://``...) as a temporary copy for the time of the ``with`` block."""
    if not is_url(filename):
        yield filename
        return
    target = resolve_checkpoint_url(filename)
    if not is_url(target):  # an open-mmlab:// name of a file under mmengine's home
        if not osp.isfile(target):
            raise CheckpointDownloadError(
                f'checkpoint {filename} names {target}, which does not exist. '
                + _fix_hint())
        yield target
    elif target.startswith(('http://', 'https://')):
        yield _cached_download(target)
    else:
        from mmengine.fileio import get_local_path
        with contextlib.ExitStack() as stack:
            try:
                path = stack.enter_context(get_local_path(target))
            except Exception as e:  # the backend's own error: a missing client, no such key
                raise CheckpointDownloadError(
                    f'could not read checkpoint {target}: {type(e).__name__}: {e}. '
                    + _fix_hint()) from None
            yield path


def load_pretrained_backbone(model: torch.nn.Module, filename: str,
                             map_location='cpu', min_fraction: float = 0.5) -> Dict:
    """Load a pretrained checkpoint into a backbone, reporting what did not fit.

    ``filename`` is a local path or a URL mmengine reads (``https://``, ``open-mmlab://``,
    ...; see :func:`local_checkpoint`). Accepts classification checkpoints (``backbone.``
    prefix plus a head), mmdet/mmseg checkpoints and plain backbone state dicts. Refuses, listing keys, when fewer than
    ``min_fraction`` of the model's entries are found in the checkpoint.

    Returns:
        dict with ``missing``, ``unexpected`` and ``mismatched`` key lists.
    """
    name = type(model).__name__
    filename = str(filename)
    if not is_url(filename) and not osp.isfile(osp.expanduser(filename)):
        raise FileNotFoundError(
            f'{name}: pretrained checkpoint not found at {osp.abspath(filename)} (from '
            "the backbone's init_cfg). Put the ImageNet checkpoint there, point "
            'model.backbone.init_cfg.checkpoint at it, or train from scratch with '
            '--cfg-options model.backbone.init_cfg=None')
    with local_checkpoint(filename) as path:  # URLs: a download, through safe_load as well
        state_dict = backbone_state_dict(extract_state_dict(safe_load(path, map_location)))
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

