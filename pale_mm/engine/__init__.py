"""What mmengine builds by type name during a run: hooks (:mod:`.hooks`), the layer-decay
optimizer constructor (:mod:`.optimizers`), the Runner and the resumable epoch loop
(:mod:`.runner`). Importing it registers them."""
from .hooks import CheckpointFitHook, DataCheckHook, ExactResumeHook, PreemptionHook
from .optimizers import PaleLayerDecayOptimizerConstructor
from .runner import CheckedDataRunner, ResumableEpochBasedTrainLoop

__all__ = ['CheckpointFitHook', 'DataCheckHook', 'ExactResumeHook', 'PreemptionHook',
           'PaleLayerDecayOptimizerConstructor', 'CheckedDataRunner',
           'ResumableEpochBasedTrainLoop']
