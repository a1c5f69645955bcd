"""Distributed set-up that also works on machines without GPUs (gloo, CPU DDP), and the
teardown at the end of a run."""
import contextlib
import gc
import importlib
import os
import warnings

import torch

from ..errors import LaunchError


def import_collectives_before_the_group() -> None:
    """Import ``torch.distributed.nn`` while no process group exists.

    Its ten collectives take ``group=group.WORLD`` as a default argument, evaluated when
    the module is first imported. On torch 2.14 constructing DDP imports it (through
    torch.distributed._shard), after the group exists: the ten defaults then hold the
    group, so destroy_process_group leaves it (and its gloo threads) alive until the
    interpreter finalizes, where tearing it down aborted the process ("terminate called
    without an active exception"). Imported before any group exists, the defaults are
    None: the group of the call. :func:`setup_distributed` calls it before it starts a
    group, :class:`~pale_mm.engine.runner.HardenedRunner` before mmengine does.
    docs/cluster.md, "Ending a distributed run"."""
    if torch.distributed.is_available():
        importlib.import_module('torch.distributed.nn')


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
    import_collectives_before_the_group()  # before this function or mmengine starts one
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


class BuiltOnTheGroup:
    """What a tool built on the process group: its Runner, whose model mmengine wrapped in
    DDP. The wrapper (its ``process_group`` and its C++ reducer) holds the group: while it
    lives, ``destroy_process_group`` only unregisters the group, and gloo's threads run on."""

    def __init__(self):
        self.runner = None

    def release(self) -> None:
        """Take the model out of its DDP wrapper and free the wrapper now.

        The Runner sits in reference cycles (its hooks refer to it), so without this the
        wrapper, and with it the group and gloo's threads, lived until the interpreter
        finalized: the abort at exit (docs/cluster.md, "Ending a distributed run"). The
        runner keeps its model, unwrapped (a wrapper cannot run once its group is gone)."""
        from mmengine.model import is_model_wrapper
        runner = self.runner
        if runner is None or not is_model_wrapper(getattr(runner, 'model', None)):
            return  # nothing holds the group (a run without a launcher, or no runner yet)
        runner.model = runner.model.module
        gc.collect()  # the wrapper's own cycles (its hooks refer to it)


@contextlib.contextmanager
def process_group_ends_with_the_run():
    """Destroy the default process group when the body ends, before the interpreter exits.

    The body records its Runner on the :class:`BuiltOnTheGroup` it is given; what that
    Runner built on the group (the DDP wrapper) is freed first, so that the group ends at
    its teardown, while the interpreter is whole. A process that reached the interpreter's
    finalization with its gloo group alive aborted at random (``terminate called without
    an active exception``, SIGABRT) after training or testing had finished; the launcher
    then reported the whole run as failed. mmengine's Runner never destroys the group, so
    the tools do it here, on success, on an error and on preemption.

    Where all processes end together (the body returned, or the preemption exit) the group
    is destroyed on every backend. After an error only one process may be failing while
    the others wait in a collective: there the group is destroyed only when that is local
    to this process (gloo: it joins this process's own threads and waits on no other
    process, so it cannot hang when a rank has gone); NCCL's abort of its communicators
    must be collective and is left to the process's exit.
    """
    from ..engine.hooks import PREEMPTED_EXIT_CODE
    built = BuiltOnTheGroup()
    try:
        yield built
    except BaseException as e:
        together = isinstance(e, SystemExit) and e.code == PREEMPTED_EXIT_CODE
        built.release()
        destroy_process_group(only_if_local=not together)
        raise
    built.release()
    destroy_process_group(only_if_local=False)


def destroy_process_group(only_if_local: bool) -> None:
    """Destroy the default process group if one is initialised (``only_if_local``: only
    if its backend is gloo, whose teardown waits on no other process)."""
    import torch.distributed as dist
    backend = _default_backend()
    if backend is not None and (backend == 'gloo' or not only_if_local):
        dist.destroy_process_group()


def _default_backend():
    """The default process group's backend, or None where there is none."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return None
    return dist.get_backend()
