"""Safe checkpoint loading and pretrained-backbone loading.

torch >= 2.6 loads with ``weights_only=True`` by default, and mmengine 0.10.7 calls
``torch.load`` without saying so: mmengine's own checkpoints (which hold a message hub with
``HistoryBuffer`` objects and numpy scalars) are then refused. Turning safety off
(``weights_only=False``) would let any downloaded checkpoint run code on load. Instead,
:func:`safe_load` keeps ``weights_only`` loading and allows exactly the classes that
mmengine, mmdet, mmseg and mmpretrain checkpoints hold (:data:`ALLOWED_GLOBALS`).
:mod:`pale_mm.compat` makes mmengine's local-file loader (used for ``init_cfg`` Pretrained,
``load_from`` and ``--resume``) go through it where the installed versions need it.

Saving is atomic (:func:`pale_mm.fileio.atomic_save`, used by :mod:`pale_mm.compat` for
mmengine's saves).

Every local checkpoint is checked whole before it is loaded (:func:`checkpoint_problem`:
cut short, damaged bytes by the CRC-32 of every record, no checkpoint at all), and
:class:`CheckpointFitHook` refuses one whose weights do not fit the model: each with a
one-line :class:`~pale_mm.errors.PaleError` naming the file and what is wrong.
"""
import codecs
import contextlib
import difflib
import functools
import hashlib
import os
import os.path as osp
import pickle
import re
import stat
import struct
import urllib.parse
import zipfile
import zlib
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

from .errors import PaleError
# atomic writing lives in pale_mm.fileio; its names stay importable from here
from .fileio import (TMP_SUFFIX, CheckpointWriteError, atomic_save,  # noqa: F401
                     atomic_text_file, atomic_write, remove_stale_tmp_files, tmp_path_beside)


class UnsafeCheckpointError(PaleError, pickle.UnpicklingError):
    """A checkpoint holds an object outside the allow-list; it was not loaded."""


class CheckpointMismatchError(PaleError, ValueError):
    """A checkpoint does not fit the model; the message lists the keys or shapes."""


class BrokenCheckpointError(PaleError):
    """A checkpoint file is cut short, damaged or no checkpoint at all; nothing of it was
    loaded."""


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
    """``torch.load`` with ``weights_only=True`` and pale_mm's allow-list, of a file that
    :func:`check_checkpoint_file` found whole.

    Raises:
        FileNotFoundError: the file does not exist.
        BrokenCheckpointError: the file is cut short, damaged or no torch checkpoint.
        UnsafeCheckpointError: the pickle names a class or function outside the allow-list.
    """
    filename = osp.expanduser(str(filename))
    if not osp.exists(filename):
        raise FileNotFoundError(f'checkpoint file not found: {filename}')
    check_checkpoint_file(filename)
    try:
        return _torch_load(filename, map_location)
    except _LOAD_ERRORS as e:
        raise _load_error(filename, e) from None


# torch >= 2.5 has ``torch.serialization.safe_globals``: its own weights_only unpickler,
# extended by an allow-list for one call. Older torch (2.1-2.4) loads through
# :class:`_AllowListUnpickler` instead: the same allow-list, enforced by find_class.
TORCH_HAS_SAFE_GLOBALS = hasattr(torch.serialization, 'safe_globals')


def _torch_load(filename: str, map_location, mmap: bool = False):
    if TORCH_HAS_SAFE_GLOBALS:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            return torch.load(filename, map_location=map_location, weights_only=True,
                              mmap=mmap)
    return torch.load(filename, map_location=map_location, weights_only=False, mmap=mmap,
                      pickle_module=_allow_list_pickle)


def _torch_rebuild_globals() -> Dict[str, object]:
    """What a pickled torch checkpoint itself refers to: tensor and parameter rebuilders,
    sizes, devices, dtypes and ``OrderedDict`` (storages are resolved by torch.load before
    the unpickler is asked)."""
    import torch._utils as tu
    found = {'collections.OrderedDict': OrderedDict, 'torch.Size': torch.Size,
             'torch.device': torch.device,
             # pickle protocol 2 (torch.save's) writes bytes as _codecs.encode(str, codec)
             '_codecs.encode': codecs.encode}
    for name in ('_rebuild_tensor', '_rebuild_tensor_v2', '_rebuild_tensor_v3',
                 '_rebuild_parameter', '_rebuild_parameter_with_state',
                 '_rebuild_sparse_tensor', '_rebuild_meta_tensor_no_storage',
                 '_rebuild_qtensor'):
        if hasattr(tu, name):
            found[f'torch._utils.{name}'] = getattr(tu, name)
    for name in dir(torch):
        if isinstance(getattr(torch, name, None), torch.dtype):
            found[f'torch.{name}'] = getattr(torch, name)
    return found


@functools.lru_cache(maxsize=None)
def _allowed_by_name() -> Dict[str, object]:
    """:data:`ALLOWED_GLOBALS` with torch's own rebuilders, by ``module.name``."""
    found = _torch_rebuild_globals()
    for entry in ALLOWED_GLOBALS:
        obj, name = entry if isinstance(entry, tuple) else (
            entry, f'{entry.__module__}.{entry.__qualname__}')
        found[name] = obj
    # numpy 1 pickles its objects under numpy.core, numpy 2 under numpy._core: a checkpoint
    # written beside either loads beside either
    for name, obj in list(found.items()):
        for a, b in (('numpy._core.', 'numpy.core.'), ('numpy.core.', 'numpy._core.')):
            if name.startswith(a):
                found.setdefault(b + name[len(a):], obj)
    return found


class _AllowListUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of :func:`_allowed_by_name`: a pickle
    can then call nothing else (every callable a pickle runs is a global it names)."""

    def find_class(self, module: str, name: str):
        obj = _allowed_by_name().get(f'{module}.{name}')
        if obj is None:
            # worded like torch's weights_only refusal, which _load_problem reads
            raise pickle.UnpicklingError(f'Unsupported global: GLOBAL {module}.{name}')
        return obj


class _allow_list_pickle:  # noqa: N801  (stands in for the ``pickle`` module)
    """The ``pickle_module`` that torch.load uses on torch < 2.5."""
    Unpickler = _AllowListUnpickler
    UnpicklingError = pickle.UnpicklingError
    __name__ = 'pale_mm_allow_list_pickle'

    @staticmethod
    def load(f, **kwargs):  # torch's legacy (< 1.6) format reads its header with load
        return _AllowListUnpickler(f, **kwargs).load()


# what torch.load raises for a file it cannot load: the weights_only unpickler's refusals
# and parse errors, the zip reader's missing records, a legacy file cut short
_LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError)


def _load_error(filename: str, error: BaseException, what: str = 'checkpoint') -> PaleError:
    """The error to raise for torch.load's ``error`` on ``filename``."""
    problem, refused = _load_problem(error)
    if refused:
        return UnsafeCheckpointError(
            f'refused to load checkpoint {filename}: it {problem}. If you trust the file, '
            "re-save only its weights: torch.save({'state_dict': torch.load(path, "
            "weights_only=False)['state_dict']}, new_path).")
    return BrokenCheckpointError(f'{what} {filename} {problem}. {BROKEN_FIX}')


def _load_problem(error: BaseException) -> Tuple[str, bool]:
    """What torch.load's ``error`` says is wrong with a file, as the end of a sentence that
    begins with the file's name, and whether it is an object outside the allow-list."""
    text = str(error)
    names = re.findall(r'GLOBAL ([\w.]+)', text) or re.findall(r'global ([\w.]+)', text)
    if isinstance(error, pickle.UnpicklingError) and names:
        return (f"holds {names[0]}, which is not on pale_mm's allow-list "
                f'({_describe_allowed()}). Unpickling it could run arbitrary code', True)
    if isinstance(error, pickle.UnpicklingError):  # bytes the unpickler cannot parse
        return 'is damaged: its pickled data cannot be read', False
    missing = re.search(r'failed locating file (\S+): file not found', text)
    if missing:
        return f'is damaged: its archive has no record {missing.group(1)}', False
    for end in ('. This is an internal miniz error', '  (Could this error', '\n'):
        text = text.split(end)[0]
    text = re.sub(r'^\[enforce fail at [^\]]*\]\s*\.?\s*', '', text.strip())
    return f'cannot be loaded: {text or type(error).__name__}', False


# ---------------------------------------------------------------------------------------
# integrity: is a checkpoint file whole?
#
# torch >= 1.6 writes a zip archive (stored, not compressed) that ends with the archive's
# directory and keeps a CRC-32 of every record. A file cut short has no directory; a changed
# byte anywhere, tensor data included, changes its record's CRC-32, which torch.load itself
# never checks. Reading every record once for it costs about what torch.load's own read does
# (docs/checkpoints.md); a file that passed is not read again until it changes.
BROKEN_FIX = ('Use another checkpoint (tools/train.py --resume without a path skips broken '
              'ones in the work dir) or copy or download this one again.')
_ZIP_MAGIC = b'PK\x03\x04'
_LOCAL_HEADER = struct.Struct('<4s22xHH')  # signature ... file name length, extra length
_CRC_CHUNK = 16 << 20
_whole_files: Dict[str, tuple] = {}  # real path -> (device, inode, size, mtime) checked whole


def checkpoint_problem(path: str, trial_load: bool = False) -> Optional[str]:
    """What is wrong with the checkpoint file ``path``, as the end of a sentence that
    begins with its name, or None when it is whole: a torch zip archive with a ``data.pkl``
    whose every record matches its CRC-32, or a legacy (torch < 1.6) pickle file, which has
    no checksums and is checked by torch as it loads.

    ``trial_load`` also loads it with its tensors mapped from the file, not read: that finds
    records ``data.pkl`` refers to but the archive lacks, and objects outside the allow-list.
    """
    problem = _file_problem(path)
    if problem is None and trial_load:
        try:
            _torch_load(path, 'cpu', mmap=_mappable(path))
        except _LOAD_ERRORS as e:
            problem = _load_problem(e)[0]
    return problem


def _mappable(path: str) -> bool:
    """Whether torch.load can map the tensors of ``path`` from the file (``mmap=True``): a
    zip archive of stored records, as torch writes them."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return all(r.compress_type == zipfile.ZIP_STORED for r in archive.infolist())


def _file_problem(path: str) -> Optional[str]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return 'does not exist'
    if stat.S_ISDIR(st.st_mode):
        return 'is a directory, not a checkpoint file'
    if not stat.S_ISREG(st.st_mode):
        return 'is not a regular file'
    if st.st_size == 0:
        return 'is empty (0 bytes)'
    real, key = osp.realpath(path), (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if _whole_files.get(real) == key:
        return None
    try:
        with open(path, 'rb') as f:
            head = f.read(4)
            if head != _ZIP_MAGIC:
                if head[:1] == b'\x80':  # a pickle: torch's legacy format
                    return None
                return (f'is not a torch checkpoint: it starts with bytes {head.hex(" ")}, '
                        'neither a zip archive (torch >= 1.6) nor a pickle (older torch)')
            try:
                archive = zipfile.ZipFile(f)
            except zipfile.BadZipFile:
                return (f'is cut short: it begins as a torch checkpoint (a zip archive) but '
                        f"the archive's directory that ends a whole one is missing "
                        f'({st.st_size} bytes; a save or copy that did not finish)')
            problem = _damaged_record(f, archive, st.st_size)
    except OSError as e:  # no permission, an I/O error of the disk
        return f'cannot be read: {e.strerror or e}'
    if problem is None:
        _whole_files[real] = key
    return problem


def _damaged_record(f, archive: zipfile.ZipFile, size: int) -> Optional[str]:
    """The first record of ``archive`` that is missing, out of the file or whose bytes do
    not match their CRC-32, described; None when there is none."""
    records = archive.infolist()
    if not any(r.filename.endswith('data.pkl') for r in records):
        return 'is a zip archive without a data.pkl record, not a torch checkpoint'
    buffer = memoryview(bytearray(_CRC_CHUNK))
    for record in records:
        f.seek(record.header_offset)
        header = f.read(_LOCAL_HEADER.size)
        if len(header) < _LOCAL_HEADER.size or header[:4] != _ZIP_MAGIC:
            return f'is damaged: the header of its record {record.filename} is not there'
        _, name_length, extra_length = _LOCAL_HEADER.unpack(header)
        start = record.header_offset + _LOCAL_HEADER.size + name_length + extra_length
        if start + record.compress_size > size:
            return f'is cut short: its record {record.filename} runs past the end of the file'
        if record.compress_type != zipfile.ZIP_STORED:  # repacked by another program
            try:
                with archive.open(record) as data:  # zipfile checks the CRC-32 at the end
                    while data.read(_CRC_CHUNK):
                        pass
            except (zipfile.BadZipFile, zlib.error, EOFError):
                return f'is damaged: its compressed record {record.filename} does not unpack'
            continue
        if record.CRC == 0:  # written with torch.serialization.set_crc32_options(False)
            continue
        f.seek(start)
        crc, left = 0, record.file_size
        while left:
            n = f.readinto(buffer[:min(left, _CRC_CHUNK)])
            if not n:
                return f'is cut short inside its record {record.filename}'
            crc, left = zlib.crc32(buffer[:n], crc), left - n
        if crc != record.CRC:
            return (f'is damaged: the bytes of its record {record.filename} do not match the '
                    'CRC-32 stored with them (changed on disk or in a copy)')
    return None


def check_checkpoint_file(path: str, what: str = 'checkpoint', trial_load: bool = False
                          ) -> None:
    """Raise :class:`BrokenCheckpointError` (or, for an object outside the allow-list,
    :class:`UnsafeCheckpointError`) naming ``path`` and what is wrong with it, unless it is a
    whole checkpoint file (:func:`checkpoint_problem`)."""
    problem = _file_problem(path)
    if problem is not None:
        raise BrokenCheckpointError(f'{what} {path} {problem}. {BROKEN_FIX}')
    if trial_load:
        try:
            _torch_load(path, 'cpu', mmap=_mappable(path))
        except _LOAD_ERRORS as e:
            raise _load_error(path, e, what) from None


# ---------------------------------------------------------------------------------------
# does a checkpoint fit the model?
def check_checkpoint_fits(model: torch.nn.Module, checkpoint, filename: str,
                          exact: bool) -> None:
    """Refuse ``checkpoint`` for ``model`` when fewer than half of the model's entries are in
    it at their shapes, or, with ``exact`` (resuming, testing), when any entry has another
    shape. Without ``exact`` (``load_from`` for fine-tuning) heads of other shapes are
    allowed: mmengine reports them and leaves them as initialised.

    Raises:
        CheckpointMismatchError: naming the file and the first entries that do not fit.
    """
    weights = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else {}
    # mmengine strips DDP's prefix as it loads
    weights = strip_ddp_prefix({k: v for k, v in weights.items() if isinstance(v, torch.Tensor)})
    matched, missing, _, mismatched = match_state_dict(model, weights)
    total = len(model.state_dict())
    if len(matched) >= total / 2 and not (exact and mismatched):
        return
    found = f'only {len(matched)} of the model\'s {total} entries are in it at their shapes'
    if mismatched:
        found += f'; {len(mismatched)} have other shapes ({_preview(mismatched, 2)})'
    elif missing:
        found += f'; missing: {_preview(missing, 3)}'
    raise CheckpointMismatchError(
        f'checkpoint {filename} does not fit the model: {found}. It was written for '
        'another model (another arch, width or number of classes): use the config it was '
        'trained with, or a checkpoint of this model.')


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP and test-time-augmentation wrappers."""
    from mmengine.model import BaseTTAModel, is_model_wrapper
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


@HOOKS.register_module()
class CheckpointFitHook(Hook):
    """Refuse a checkpoint that does not fit the model (:func:`check_checkpoint_fits`)
    before its weights are loaded: mmengine alone warns and goes on with the weights that
    fit. Exact when resuming and testing; fine-tuning (``load_from`` in training) may bring
    heads of other shapes."""

    priority = 'VERY_HIGH'

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        from mmengine.runner import BaseLoop

        # Runner.train() builds its loop before it loads a checkpoint, Runner.test() does not
        training = isinstance(getattr(runner, '_train_loop', None), BaseLoop)
        fine_tuning = training and not runner.cfg.get('resume')
        check_checkpoint_fits(_unwrapped(runner.model), checkpoint,
                              runner.cfg.get('load_from') or 'being loaded',
                              exact=not fine_tuning)


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


def strip_ddp_prefix(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The keys without DDP's ``module.`` prefix, where they have it."""
    return OrderedDict((k[len('module.'):] if k.startswith('module.') else k, v)
                       for k, v in state_dict.items())


def backbone_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Strip ``module.`` (DDP); keep and strip ``backbone.`` keys where there are any
    (classifier, detector and segmentor checkpoints), else take the dict as is."""
    state_dict = strip_ddp_prefix(state_dict)
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
    """Whether ``filename`` names a URL or a file of a remote backend (``scheme://...``)
    rather than a local path: the one test pale_mm uses for that."""
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
