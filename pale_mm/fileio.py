"""Files that a reader never sees half-written.

Every file pale_mm writes for a run or a tool is written under a temporary name beside its
destination (same file system, so the rename is atomic) and renamed over it only once
complete: a process killed while writing leaves the earlier file as it was, never a
truncated one (that ``--resume`` would pick up, or a half-written ONNX file or config).

* :func:`atomic_write` / :func:`atomic_save` / :func:`atomic_text_file`: write through a
  callback, ``torch.save``, a text buffer; fsync'd; an OS error (disk full) becomes
  :class:`CheckpointWriteError` naming the folder. mmengine's checkpoint saves go through
  them in a hardened run (:mod:`pale_mm.hardening`).
* :func:`written_atomically`: a temporary path for a writer that wants a file name
  (matplotlib, an exporter, mmengine's dump); renamed once the block completes.
* :func:`remove_stale_tmp_files`: the temporary files of killed processes.
"""
import contextlib
import errno
import glob
import io
import os
import os.path as osp
import re
import uuid
from typing import List, Optional

import torch

from .errors import PaleError


class CheckpointWriteError(PaleError):
    """A checkpoint (or another file of a run) could not be written (disk full, I/O error);
    the files that were there before are unchanged."""


TMP_SUFFIX = '.tmp'


def tmp_path_beside(filename: str) -> str:
    """``dir/.name.<pid>.<random>.tmp``: beside the destination (same file system, so the
    rename is atomic), hidden, and naming the process that writes it."""
    folder, base = osp.split(filename)
    return osp.join(folder, f'.{base}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}')


def atomic_write(filename: str, write) -> None:
    """Call ``write(file_object)`` on a temporary file, then rename it to ``filename``.

    On any failure (or a kill) ``filename`` keeps its previous content, if it had one, and
    the temporary file is removed (a kill leaves it for :func:`remove_stale_tmp_files`).

    Raises:
        CheckpointWriteError: writing failed with an OS error (disk full, I/O error, no
            permission); the message names the folder.
    """
    filename = osp.realpath(osp.expanduser(str(filename)))  # replace a link's target
    folder = osp.dirname(filename)
    tmp = tmp_path_beside(filename)
    try:
        os.makedirs(folder, exist_ok=True)
        with open(tmp, 'xb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filename)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        cause = _os_error_in(e) if isinstance(e, Exception) else None
        if cause is None:
            raise
        fix = (f'Free space in {folder}' if cause.errno in (errno.ENOSPC, errno.EDQUOT)
               else f'Check the disk and the permissions of {folder}')
        raise CheckpointWriteError(
            f'could not write {filename}: {cause.strerror or cause} '
            f'({errno.errorcode.get(cause.errno, cause.errno)}). {folder} holds what it held '
            'before this save (its unfinished temporary file was removed). '
            f'{fix} and continue the run with --resume.') from e
    try:  # make the rename itself durable
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - file systems without directory fsync
        pass


def _os_error_in(error: BaseException) -> Optional[OSError]:
    """The OS error behind ``error``: itself, or the one torch's writer met in ``f.write``
    (torch.save reports it as a RuntimeError raised while handling it)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno is not None:
            return error
        error = error.__cause__ or error.__context__
    return None


def atomic_save(obj, filename: str) -> None:
    """``torch.save(obj, filename)``, atomically (see :func:`atomic_write`)."""
    atomic_write(filename, lambda f: torch.save(obj, f))


@contextlib.contextmanager
def atomic_text_file(filename: str):
    """A text buffer for a ``with`` block, written to ``filename`` atomically once the
    block completes (mmengine's ``last_checkpoint``, see
    :class:`pale_mm.engine.hooks.AtomicCheckpointHook`)."""
    text = io.StringIO()
    yield text
    atomic_write(filename, lambda f: f.write(text.getvalue().encode()))


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


@contextlib.contextmanager
def written_atomically(filename: str, suffix: str = ''):
    """A temporary path beside ``filename`` (ending in ``suffix``, for writers that pick the
    format from it) for a ``with`` block; once the block completes, the file replaces
    ``filename``; if the block raises, it is removed and ``filename`` stays as it was."""
    filename = osp.abspath(osp.expanduser(str(filename)))
    os.makedirs(osp.dirname(filename), exist_ok=True)
    tmp = tmp_path_beside(filename) + suffix
    try:
        yield tmp
        os.replace(tmp, filename)
    finally:
        if osp.exists(tmp):
            os.unlink(tmp)
