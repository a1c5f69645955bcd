"""Checkpoints named by URL: mmengine's model-zoo schemes resolved, downloads into the
cache, checked whole before use."""
import contextlib
import difflib
import hashlib
import os
import os.path as osp
import urllib.parse
import zipfile

import torch

from ..errors import PaleError

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
