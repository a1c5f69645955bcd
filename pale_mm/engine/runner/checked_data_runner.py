"""The Runner of pale_mm's tools: hardened (:class:`HardenedRunner`), and its data loaders
read their samples through :class:`pale_mm.data.checks.CheckedPipeline`, so a broken file or
label names itself."""
import functools
import os

from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from ..hooks.data_check_hook import wrap_dataset_pipelines
from .hardened_runner import HardenedRunner


@RUNNERS.register_module()
class CheckedDataRunner(HardenedRunner):
    """A :class:`HardenedRunner` whose data loaders' pipelines are wrapped as each loader is
    built (before an iteration-based loop starts its worker processes)."""

    @staticmethod
    def build_dataloader(dataloader, seed=None, diff_rank_seed=False):
        loader = Runner.build_dataloader(dataloader, seed=seed, diff_rank_seed=diff_rank_seed)
        wrap_dataset_pipelines(loader.dataset)
        workers_leave_signals_to_training(loader)  # preemption signals reach the whole group
        return loader


def build_runner(cfg) -> Runner:
    """:class:`CheckedDataRunner`, unless the config's ``runner_type`` names a runner other
    than :class:`HardenedRunner` (then that one: the config's choice)."""
    vis = cfg.get('visualizer')
    if isinstance(vis, dict) and vis.get('name'):
        # mmdet/mmseg configs name the visualizer 'visualizer'; mmengine then hands a second
        # run in the same process (tools' main(argv) called twice) the first run's
        # visualizer, which writes the scalars into the first run's work dir. Unnamed, it
        # takes the run's own experiment name.
        vis.pop('name')
    if cfg.get('runner_type', 'HardenedRunner') not in ('HardenedRunner', HardenedRunner):
        return RUNNERS.build(cfg)
    return CheckedDataRunner.from_cfg(cfg)


def workers_leave_signals_to_training(loader) -> None:
    """Data loader workers run in a process group of their own: torchrun sends SIGTERM to a
    training process's whole group, and a worker killed by it fails the training process at
    once ("DataLoader worker is killed by signal") instead of letting it save. The training
    process still stops its workers itself. (Ignoring the signal in the workers instead would
    hang the exit: Python's multiprocessing ends daemon workers with SIGTERM and waits.)"""
    if loader.num_workers > 0:
        loader.worker_init_fn = functools.partial(_own_process_group_then,
                                                  loader.worker_init_fn)


def _own_process_group_then(worker_init_fn, worker_id: int) -> None:
    os.setpgid(0, 0)
    if worker_init_fn is not None:
        worker_init_fn(worker_id)
