"""pale_mm's hooks, registered in mmengine's root ``HOOKS`` registry (every scope finds them).
``tools/train.py`` and ``tools/test.py`` add the first four to every run
(:func:`pale_mm.launch.run_config.add_run_hooks`), and any config can put them into its
``custom_hooks``; :class:`~pale_mm.engine.runner.HardenedRunner` puts the last two in place
of mmengine's ``CheckpointHook`` and ``LoggerHook``."""
from .atomic_checkpoint_hook import AtomicCheckpointHook
from .checkpoint_fit_hook import CheckpointFitHook
from .data_check_hook import DataCheckHook, wrap_dataset_pipelines
from .exact_resume_hook import ExactResumeHook
from .preemption_hook import (
    PREEMPTED_EXIT_CODE,
    PREEMPTED_MARKER_ENV,
    PreemptionHook,
    TrainingPreempted,
)
from .rank_zero_logger_hook import RankZeroLoggerHook

__all__ = ['AtomicCheckpointHook', 'CheckpointFitHook', 'DataCheckHook', 'ExactResumeHook',
           'PreemptionHook', 'RankZeroLoggerHook', 'TrainingPreempted', 'PREEMPTED_EXIT_CODE',
           'PREEMPTED_MARKER_ENV', 'wrap_dataset_pipelines']
