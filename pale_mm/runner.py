"""mmengine's Runner for pale_mm's tools: data loaders read their samples through
:class:`pale_mm.data.checks.CheckedPipeline`, so a broken file or label names itself."""
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from .hooks import wrap_dataset_pipelines
from .preemption import workers_leave_signals_to_training


class CheckedDataRunner(Runner):
    """A Runner whose data loaders' pipelines are wrapped as each loader is built (before an
    iteration-based loop starts its worker processes)."""

    @staticmethod
    def build_dataloader(dataloader, seed=None, diff_rank_seed=False):
        loader = Runner.build_dataloader(dataloader, seed=seed, diff_rank_seed=diff_rank_seed)
        wrap_dataset_pipelines(loader.dataset)
        workers_leave_signals_to_training(loader)  # preemption signals reach the whole group
        return loader


def build_runner(cfg) -> Runner:
    """The config's own ``runner_type`` if it names one, else :class:`CheckedDataRunner`."""
    vis = cfg.get('visualizer')
    if isinstance(vis, dict) and vis.get('name'):
        # mmdet/mmseg configs name the visualizer 'visualizer'; mmengine then hands a second
        # run in the same process (tools' main(argv) called twice) the first run's
        # visualizer, which writes the scalars into the first run's work dir. Unnamed, it
        # takes the run's own experiment name.
        vis.pop('name')
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return CheckedDataRunner.from_cfg(cfg)
