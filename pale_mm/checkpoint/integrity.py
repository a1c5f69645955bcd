"""A checkpoint file checked whole before it is loaded: cut short, damaged bytes (the CRC-32
of every record), or no checkpoint at all."""
import os
import os.path as osp
import stat
import struct
import zipfile
import zlib
from typing import Dict, Optional

from .safe_load import (
    _LOAD_ERRORS,
    BROKEN_FIX,
    BrokenCheckpointError,
    _load_error,
    _load_problem,
    _torch_load,
)

# ---------------------------------------------------------------------------------------
# integrity: is a checkpoint file whole?
#
# torch >= 1.6 writes a zip archive (stored, not compressed) that ends with the archive's
# directory and keeps a CRC-32 of every record. A file cut short has no directory; a changed
# byte anywhere, tensor data included, changes its record's CRC-32, which torch.load itself
# never checks. Reading every record once for it costs about what torch.load's own read does
# (docs/checkpoints.md); a file that passed is not read again until it changes.
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
