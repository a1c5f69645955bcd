"""What mmengine builds by type name during a run: hooks (:mod:`.hooks`), the layer-decay
optimizer constructor (:mod:`.optimizers`), the Runners and the resumable epoch loop
(:mod:`.runner`). Importing it registers them."""
from .hooks import (
    AtomicCheckpointHook,
    CheckpointFitHook,
    DataCheckHook,
    ExactResumeHook,
    PreemptionHook,
    RankZeroLoggerHook,
)
from .optimizers import PaleLayerDecayOptimizerConstructor
from .runner import CheckedDataRunner, HardenedRunner, ResumableEpochBasedTrainLoop

__all__ = ['AtomicCheckpointHook', 'CheckpointFitHook', 'DataCheckHook', 'ExactResumeHook',
           'PreemptionHook', 'RankZeroLoggerHook', 'PaleLayerDecayOptimizerConstructor',
           'CheckedDataRunner', 'HardenedRunner', 'ResumableEpochBasedTrainLoop']
