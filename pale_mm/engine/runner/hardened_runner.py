"""HardenedRunner: the opt-in to pale_mm's run hardening (:mod:`pale_mm.hardening`)."""
import contextlib
import functools
import inspect
import sys

from mmengine.hooks import CheckpointHook, LoggerHook
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from ...checkpoint import is_url
from ...hardening import atomic_backend_args, enable_safe_loading
from ...launch.distributed import import_collectives_before_the_group
from ..hooks.atomic_checkpoint_hook import AtomicCheckpointHook
from ..hooks.rank_zero_logger_hook import RankZeroLoggerHook

# mmengine's hook -> the hardened subclass that takes its place (same arguments)
HARDENED_HOOKS = {CheckpointHook: AtomicCheckpointHook, LoggerHook: RankZeroLoggerHook}
_BY_NAME = {name: hardened for plain, hardened in HARDENED_HOOKS.items()
            for name in (plain.__name__, f'mmengine.{plain.__name__}')}


@RUNNERS.register_module()
class HardenedRunner(Runner):
    """mmengine's ``Runner`` (same arguments) for runs that must survive what long runs
    meet: ``runner_type = 'HardenedRunner'`` in a config (with ``custom_imports`` of
    ``pale_mm``) turns it on, in pale_mm's tools and in mmdet's, mmseg's and mmpretrain's
    own ``tools/train.py`` and ``tools/test.py`` alike.

    * checkpoints load through pale_mm's allow-list (:func:`pale_mm.hardening.
      enable_safe_loading`, from the runner's construction on, for the process);
    * local checkpoints are written atomically (``save_checkpoint`` passes the atomic file
      backend unless the caller names a backend);
    * the config's ``CheckpointHook`` and ``LoggerHook`` become
      :class:`~pale_mm.engine.hooks.AtomicCheckpointHook` and
      :class:`~pale_mm.engine.hooks.RankZeroLoggerHook` (a hook of another type is kept).
    """

    def __init__(self, *args, **kwargs):
        enable_safe_loading()
        import_collectives_before_the_group()  # Runner.__init__ may start the group
        super().__init__(*args, **kwargs)

    def register_hook(self, hook, priority=None) -> None:
        hardened = _hardened(hook.get('type')) if isinstance(hook, dict) else None
        if hardened is not None:
            hook = dict(hook, type=hardened)
        super().register_hook(hook, priority=priority)

    def save_checkpoint(self, out_dir, filename, file_client_args=None, *args,
                        backend_args=None, **kwargs):
        if file_client_args is None and backend_args is None and not is_url(str(out_dir)):
            backend_args = atomic_backend_args()
        with _backend_args_reach_the_save(backend_args):
            return super().save_checkpoint(out_dir, filename, file_client_args, *args,
                                           backend_args=backend_args, **kwargs)


@functools.lru_cache(maxsize=None)
def _runner_drops_backend_args() -> bool:
    """Whether mmengine's ``Runner.save_checkpoint`` writes with ``save_checkpoint(checkpoint,
    filepath)``, leaving out the ``backend_args`` it was given (mmengine 0.7; 0.10 passes
    them on). Read once from its source."""
    source = inspect.getsource(Runner.save_checkpoint)
    return 'backend_args=backend_args' not in source[source.rindex('save_checkpoint('):]


@contextlib.contextmanager
def _backend_args_reach_the_save(backend_args):
    """Where mmengine's Runner drops ``backend_args`` (:func:`_runner_drops_backend_args`),
    the name ``save_checkpoint`` in its module passes them on while this runner saves: no
    extension point reaches that call."""
    if backend_args is None or not _runner_drops_backend_args():
        yield
        return
    module = sys.modules[Runner.__module__]
    plain = module.save_checkpoint
    module.save_checkpoint = functools.partial(plain, backend_args=backend_args)
    try:
        yield
    finally:
        module.save_checkpoint = plain


def _hardened(hook_type):
    """The hardened class for a hook's ``type`` (a class, or its registered name with or
    without the ``mmengine.`` scope), or None for any other type."""
    if isinstance(hook_type, type):
        return HARDENED_HOOKS.get(hook_type)
    return _BY_NAME.get(str(hook_type))
