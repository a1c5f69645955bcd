"""Safe checkpoint loading: ``torch.load`` with ``weights_only`` and an allow-list of exactly
the classes mmengine, mmdet, mmseg and mmpretrain checkpoints hold."""
import codecs
import collections
import functools
import os.path as osp
import pickle
import re
import types
from collections import OrderedDict
from typing import Dict, List, Tuple

import numpy as np
import torch

from ..errors import PaleError


class UnsafeCheckpointError(PaleError, pickle.UnpicklingError):
    """A checkpoint holds an object outside the allow-list; it was not loaded."""


class CheckpointMismatchError(PaleError, ValueError):
    """A checkpoint does not fit the model; the message lists the keys or shapes."""


BROKEN_FIX = ('Use another checkpoint (tools/train.py --resume without a path skips broken '
              'ones in the work dir) or copy or download this one again.')


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


class _FunctionsOf:
    """What a class name in a checkpoint resolves to where the pickle only looks functions
    up on the class (``getattr(cls, name)``): the class is never called."""

    def __init__(self, cls, names):
        self.cls, self.names = cls, names
        self.__name__ = cls.__name__  # as refusals name it


def _allowed_globals() -> List:
    from mmengine.logging.history_buffer import HistoryBuffer
    from mmengine.optim.scheduler.param_scheduler import OneCycleParamScheduler

    # Functions kept in checkpoints pickle as ``getattr(cls, name)``: HistoryBuffer's
    # statistics, and the annealing function (a static method) that OneCycleParamScheduler
    # keeps in its state. Allowing ``getattr`` itself would let a pickle walk from any
    # allowed object to ``os.system``; this stand-in allows exactly these look-ups.
    one_cycle = _FunctionsOf(OneCycleParamScheduler, ('_annealing_cos', '_annealing_linear'))
    lookups = {HistoryBuffer: ('min', 'max', 'current', 'mean'),
               one_cycle: one_cycle.names}

    def allowed_getattr(obj, name):
        if name in lookups.get(obj, ()):
            return getattr(obj.cls if obj is one_cycle else obj, name)
        raise pickle.UnpicklingError(
            f'GLOBAL getattr({getattr(obj, "__name__", type(obj).__name__)}, {name!r}): only '
            + ', '.join(f'{getattr(c, "__name__", c)}.{{{", ".join(n)}}}'
                        for c, n in lookups.items()) + ' may be looked up')

    # collections.Counter: mmengine's MultiStepParamScheduler keeps its milestones in one
    # (the 1x and 3x detection schedules); torch's own weights-only list has it too
    return _numpy_globals() + [HistoryBuffer, collections.Counter] + [
        (one_cycle, f'{OneCycleParamScheduler.__module__}.OneCycleParamScheduler')] + [
        (allowed_getattr, f'{module}.getattr') for module in ('builtins', '__builtin__')
    ]


ALLOWED_GLOBALS = _allowed_globals()


def _describe_allowed() -> str:
    return ('tensors, plain Python containers and numbers, numpy arrays, dtypes and scalars, '
            "collections.Counter, mmengine's HistoryBuffer and OneCycle's annealing functions")


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
    from .integrity import check_checkpoint_file  # it loads through this module
    check_checkpoint_file(filename)
    try:
        return _torch_load(filename, map_location)
    except _LOAD_ERRORS as e:
        raise _load_error(filename, e, map_location=map_location) from None


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


def _pickle_module(unpickler: type, name: str) -> types.SimpleNamespace:
    """A stand-in for the ``pickle`` module, as ``torch.load(pickle_module=...)`` takes it,
    whose unpickler is ``unpickler`` (torch's legacy < 1.6 format reads its header with
    ``load``)."""
    return types.SimpleNamespace(
        Unpickler=unpickler, UnpicklingError=pickle.UnpicklingError, __name__=name,
        load=lambda f, **kwargs: unpickler(f, **kwargs).load())


# the ``pickle_module`` that torch.load uses on torch < 2.5
_allow_list_pickle = _pickle_module(_AllowListUnpickler, 'pale_mm_allow_list_pickle')


# what torch.load raises for a file it cannot load: the weights_only unpickler's refusals
# and parse errors, the zip reader's missing records, a legacy file cut short
_LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError)


def _load_error(filename: str, error: BaseException, what: str = 'checkpoint',
                map_location='cpu') -> PaleError:
    """The error to raise for torch.load's ``error`` on ``filename``."""
    problem, refused = _load_problem(error)
    if refused:
        names = _refused_globals(str(error))
        where = where_global_is(filename, names[0], map_location)
        if where:
            problem = problem.replace(names[0], f'{names[0]} (at {where})', 1)
        return UnsafeCheckpointError(
            f'refused to load checkpoint {filename}: it {problem}. If you trust the file, '
            "re-save only its weights: torch.save({'state_dict': torch.load(path, "
            "weights_only=False)['state_dict']}, new_path). If pale_mm's or OpenMMLab's "
            'own tools wrote it, the allow-list misses a class they save: please report '
            'this line.')
    return BrokenCheckpointError(f'{what} {filename} {problem}. {BROKEN_FIX}')


def _refused_globals(text: str) -> List[str]:
    """The globals an unpickler refused, as torch's and pale_mm's refusals name them (a
    refused look-up as ``getattr(Class, 'name')``)."""
    return (re.findall(r'GLOBAL (getattr\([^)]*\))', text)
            or re.findall(r'GLOBAL ([\w.]+)', text) or re.findall(r'global ([\w.]+)', text))


def _load_problem(error: BaseException) -> Tuple[str, bool]:
    """What torch.load's ``error`` says is wrong with a file, as the end of a sentence that
    begins with the file's name, and whether it is an object outside the allow-list."""
    text = str(error)
    names = _refused_globals(text)
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
# Where a refused class is in a checkpoint: read once more with every global outside the
# allow-list replaced by a stand-in class that runs nothing, then look for the stand-in.
class _StandIn:
    """Stands for an object of a class (or a call of a function) outside the allow-list:
    creating, filling and updating it runs nothing."""
    global_name = ''

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):  # dict subclasses are filled item by item
        pass

    def append(self, value):  # list subclasses too
        pass

    def extend(self, values):
        pass


class _StandInUnpickler(pickle.Unpickler):

    def find_class(self, module: str, name: str):
        obj = _allowed_by_name().get(f'{module}.{name}')
        if obj is not None and name == 'getattr':
            return functools.partial(_stand_in_getattr, obj)
        if obj is not None:
            return obj
        return type('StandIn', (_StandIn, ), dict(global_name=f'{module}.{name}'))


def _stand_in_getattr(allowed_getattr, target, attr):
    """An attribute of a stand-in is the stand-in; a refused look-up becomes one."""
    if isinstance(target, _StandIn):
        return target
    try:
        return allowed_getattr(target, attr)
    except pickle.UnpicklingError:
        stand_in = _StandIn()
        stand_in.global_name = f'getattr({getattr(target, "__name__", target)}, {attr!r})'
        return stand_in


_stand_in_pickle = _pickle_module(_StandInUnpickler, 'pale_mm_stand_in_pickle')


def where_global_is(filename: str, global_name: str, map_location='cpu') -> str:
    """The key path (``param_schedulers[1].milestones``) of the first object of
    ``global_name`` in the checkpoint, or '' where it cannot be told."""
    try:
        obj = torch.load(filename, map_location=map_location, weights_only=False,
                         pickle_module=_stand_in_pickle)
    except Exception:  # a stand-in where an allowed rebuilder wanted a real object
        return ''
    queue = collections.deque([('', obj)])
    seen = set()
    while queue:
        path, node = queue.popleft()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, _StandIn):
            if node.global_name == global_name:
                return path or '(the whole file)'
            continue
        if isinstance(node, dict):
            for key, value in node.items():
                step = (f'.{key}' if path else key) if (isinstance(key, str)
                                                       and key.isidentifier()) else f'[{key!r}]'
                queue.append((path + step, value))
        elif isinstance(node, (list, tuple)):
            queue.extend((f'{path}[{i}]', value) for i, value in enumerate(node))
    return ''
