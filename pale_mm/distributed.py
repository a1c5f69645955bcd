"""Distributed set-up that also works on machines without GPUs (gloo, CPU DDP)."""
import os
import warnings

import torch

from .errors import LaunchError


def is_main_process() -> bool:
    """Rank 0 (or no distributed run), from the launcher's environment."""
    return int(os.environ.get('RANK', '0')) == 0


def setup_distributed(cfg, launcher: str) -> None:
    """Set ``cfg.launcher``; on a machine without GPUs use gloo and CPU DDP.

    mmengine's own distributed set-up calls ``torch.cuda.set_device`` and wraps the model
    with ``device_ids=[LOCAL_RANK]``, neither of which works without a GPU, so the process
    group is started here and DDP is told to keep the model on the CPU.
    """
    cfg.launcher = launcher
    if launcher == 'none' or torch.cuda.is_available():
        return
    import torch.distributed as dist
    cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
    if launcher == 'slurm':
        raise LaunchError('--launcher slurm needs GPUs; on a CPU machine use '
                          'tools/dist_train.sh (torchrun, gloo)')
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    # torch's SyncBatchNorm is GPU-only (DDP refuses to wrap it on the CPU); mmseg's heads
    # use it, so on CPU each process keeps its own BatchNorm statistics instead
    if sync_bn_to_bn(cfg.get('model')) and is_main_process():
        warnings.warn('no GPU: SyncBN layers of the model become BN (per-process batch '
                      'statistics when training; testing is unaffected)')
    cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None,
                                 broadcast_buffers=False,
                                 find_unused_parameters=cfg.get('find_unused_parameters',
                                                                False))


def sync_bn_to_bn(node) -> int:
    """Replace ``type='SyncBN'`` by ``'BN'`` in a config tree; returns how many."""
    count = 0
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
            count += 1
        for v in node.values():
            count += sync_bn_to_bn(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            count += sync_bn_to_bn(v)
    return count
