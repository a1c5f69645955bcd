"""Layer-wise learning-rate decay for models with a Pale backbone (mmdet, mmseg)."""
from .layer_decay_optim_constructor import (
    LayerDecayConfigError,
    PaleLayerDecayOptimizerConstructor,
    PaleLayerIds,
)

__all__ = ['LayerDecayConfigError', 'PaleLayerDecayOptimizerConstructor', 'PaleLayerIds']
