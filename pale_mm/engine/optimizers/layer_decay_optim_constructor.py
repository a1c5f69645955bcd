"""Layer-wise learning-rate decay for models with a Pale backbone.

mmdet's and mmseg's ``LearningRateDecayOptimizerConstructor`` know ConvNeXt, BEiT and MAE
only (any other backbone raises ``NotImplementedError``). This constructor takes the same
options and gives every parameter of a :class:`~pale_mm.models.PaleTransformer` the layer id
of the model's own map (:meth:`~pale_mm.models.PaleTransformer.layer_ids`, built from its
modules; mmpretrain's ``LearningRateDecayOptimWrapperConstructor`` reads the same map through
``PaleTransformer.get_layer_depth``):

======================  ==========================  ====================================
parameter               ``layer_wise``              ``stage_wise``
======================  ==========================  ====================================
stem                    0                           0
stage i downsampling    the id of its first block   i + 1
block k (1..B, depth    ceil(k * num_layers / B)    i + 1 (its stage)
order)
output norms ``normI``  num_layers + 1              num_layers + 1
neck, heads             num_layers + 1              num_layers + 1
======================  ==========================  ====================================

and scales its learning rate by ``decay_rate ** (num_layers + 1 - layer_id)``: the neck and
heads train at the base lr, the last block at ``decay_rate`` times it and the stem at
``decay_rate ** (num_layers + 1)`` times it, as in mmdet's and mmseg's constructor. The output
norms go with the heads: an ImageNet checkpoint holds none of them but the last, so they
start from scratch. ``num_layers`` defaults to the number of blocks (``layer_wise``: one id
per block) or of stages (``stage_wise``); a smaller ``num_layers`` (say, one tuned for
another backbone) spreads the blocks evenly over that many ids.

Norm weights, biases (every 1-D parameter) and the conditional position encodings
(``cpe``) get no weight decay, as in pale_mm's own configs.

Example::

    optim_wrapper = dict(
        type='OptimWrapper',
        constructor='PaleLayerDecayOptimizerConstructor',
        optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
        paramwise_cfg=dict(decay_rate=0.9, decay_type='layer_wise'))
"""
from typing import Dict, List, Optional

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor

from ...errors import PaleError

DECAY_TYPES = ('layer_wise', 'stage_wise')
OPTIONS = ('decay_rate', 'decay_type', 'num_layers')


class LayerDecayConfigError(PaleError, ValueError):
    """paramwise_cfg of PaleLayerDecayOptimizerConstructor that cannot work."""


def _pale_backbone(model: nn.Module):
    """(backbone, prefix of its parameter names) of ``model``: its ``backbone`` attribute,
    or the model itself when it is a PaleTransformer."""
    from ...models import PaleTransformer
    if isinstance(model, PaleTransformer):
        return model, ''
    backbone = getattr(model, 'backbone', None)
    if isinstance(backbone, PaleTransformer):
        return backbone, 'backbone.'
    raise LayerDecayConfigError(
        f'PaleLayerDecayOptimizerConstructor: the model ({type(model).__name__}) has no '
        f'PaleTransformer backbone (model.backbone is {type(backbone).__name__}); use '
        "constructor='LearningRateDecayOptimizerConstructor' of mmdet/mmseg for ConvNeXt, "
        "BEiT or MAE, or the default constructor")


class PaleLayerIds:
    """Layer ids of one Pale backbone's parameters (see the module docstring)."""

    def __init__(self, backbone, decay_type: str = 'layer_wise',
                 num_layers: Optional[int] = None):
        self.decay_type = decay_type
        self.depths = [len(stage.blocks) for stage in backbone.stages]
        self.num_blocks = sum(self.depths)
        natural = self.num_blocks if decay_type == 'layer_wise' else len(self.depths)
        self.num_layers = natural if num_layers is None else num_layers
        if decay_type == 'stage_wise' and self.num_layers < len(self.depths):
            raise LayerDecayConfigError(
                f'PaleLayerDecayOptimizerConstructor: stage_wise decay gives the '
                f'{len(self.depths)} stages ids 1..{len(self.depths)}; num_layers='
                f'{self.num_layers} must be at least that (or leave it out)')
        if decay_type == 'layer_wise' and self.num_layers > self.num_blocks:
            raise LayerDecayConfigError(
                f'PaleLayerDecayOptimizerConstructor: num_layers={self.num_layers} is more '
                f'than the {self.num_blocks} blocks of this backbone; use at most '
                f'{self.num_blocks} (or leave it out: one layer id per block)')
        self.top = self.num_layers + 1
        self.ids = backbone.layer_ids(decay_type, self.num_layers)  # the model's own map

    def __call__(self, name: str) -> int:
        """Layer id of the backbone parameter ``name`` (without ``backbone.``)."""
        if name not in self.ids:
            raise LayerDecayConfigError(
                f'PaleLayerDecayOptimizerConstructor: no layer id for the backbone parameter '
                f'{name!r}; the backbone\'s layer map (PaleTransformer.layer_ids) does not '
                'hold it')
        return self.ids[name]

    def lr_scale(self, layer_id: int, decay_rate: float) -> float:
        return decay_rate ** (self.top - layer_id)


class PaleLayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Layer-wise (or stage-wise) lr decay over a Pale backbone; see the module docstring.

    ``paramwise_cfg`` takes ``decay_rate`` (required, in (0, 1]), ``decay_type``
    (``'layer_wise'``, default, or ``'stage_wise'``) and ``num_layers`` (optional).
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None):
        paramwise_cfg = dict(paramwise_cfg or {})
        unknown = sorted(set(paramwise_cfg) - set(OPTIONS))
        if unknown:
            raise LayerDecayConfigError(
                f'PaleLayerDecayOptimizerConstructor: paramwise_cfg takes {", ".join(OPTIONS)}'
                f'; {", ".join(unknown)} would be ignored (it sets no weight decay on norms, '
                'biases and cpe itself): remove them, e.g. paramwise_cfg=dict(_delete_=True, '
                'decay_rate=0.9)')
        rate = paramwise_cfg.get('decay_rate')
        if not isinstance(rate, (int, float)) or not 0 < rate <= 1:
            raise LayerDecayConfigError(
                f'PaleLayerDecayOptimizerConstructor: paramwise_cfg.decay_rate must be a number '
                f'in (0, 1], got {rate!r}')
        decay_type = paramwise_cfg.setdefault('decay_type', 'layer_wise')
        if decay_type not in DECAY_TYPES:
            raise LayerDecayConfigError(
                f'PaleLayerDecayOptimizerConstructor: paramwise_cfg.decay_type must be one of '
                f'{DECAY_TYPES}, got {decay_type!r}')
        num_layers = paramwise_cfg.get('num_layers')
        if num_layers is not None and (not isinstance(num_layers, int) or num_layers < 1):
            raise LayerDecayConfigError(
                f'PaleLayerDecayOptimizerConstructor: paramwise_cfg.num_layers must be a '
                f'positive int, got {num_layers!r}')
        if optim_wrapper_cfg.get('optimizer', {}).get('lr') is None:
            raise LayerDecayConfigError(
                'PaleLayerDecayOptimizerConstructor: optim_wrapper.optimizer.lr must be set')
        super().__init__(optim_wrapper_cfg, paramwise_cfg)

    def add_params(self, params: List[dict], module: nn.Module, **kwargs) -> None:
        """Append one param group per (layer id, with/without weight decay) to ``params``."""
        cfg = self.paramwise_cfg
        backbone, prefix = _pale_backbone(module)
        layer_ids = PaleLayerIds(backbone, cfg['decay_type'], cfg.get('num_layers'))
        kinds = backbone.parameter_kinds()
        base_wd = self.base_wd or 0.
        groups: Dict[tuple, dict] = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue  # frozen stages
            in_backbone = name.startswith(prefix)
            local = name[len(prefix):]
            layer_id = layer_ids(local) if in_backbone else layer_ids.top
            no_decay = (param.ndim <= 1 or name.endswith('.bias')
                        or (in_backbone and kinds.get(local) == 'position'))
            key = (layer_id, no_decay)
            if key not in groups:
                groups[key] = dict(
                    params=[], lr=self.base_lr * layer_ids.lr_scale(layer_id, cfg['decay_rate']),
                    weight_decay=0. if no_decay else base_wd)
            groups[key]['params'].append(param)
        params.extend(groups[k] for k in sorted(groups))
        rate, top = cfg['decay_rate'], layer_ids.top
        last = max(i for i in layer_ids.ids.values() if i < top)
        print_log(
            f'PaleLayerDecayOptimizerConstructor: {cfg["decay_type"]}, decay_rate {rate}, '
            f'num_layers {layer_ids.num_layers}: lr x{rate}^{top} at the stem, '
            f'x{rate}^{top - last} at the last block, x1 for the output norms, neck and heads; '
            'no weight decay on norms, biases and cpe', logger='current')
