"""RankZeroLoggerHook: mmengine's LoggerHook whose test metrics json is written once."""
from mmengine.dist import get_rank
from mmengine.hooks import LoggerHook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class RankZeroLoggerHook(LoggerHook):
    """mmengine's ``LoggerHook`` (same arguments), whose ``after_test_epoch`` runs on rank 0
    only: mmengine's writes the test metrics json (``<work_dir>/<timestamp>/<timestamp>.json``)
    on every rank into the same file, which then holds one rank's text partly over another's.
    The other ranks' messages went nowhere anyway (mmengine logs there only errors).
    :class:`~pale_mm.engine.runner.HardenedRunner` puts it in place of a config's
    ``LoggerHook``."""

    def after_test_epoch(self, runner, metrics=None) -> None:
        if get_rank() == 0:
            super().after_test_epoch(runner, metrics)
