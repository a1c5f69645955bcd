"""Put a Pale backbone into an mmdet or mmseg config (``tools/swap_backbone.py``).

:func:`swap_backbone` reads a config (a file or an mmengine ``Config``, old-style or
pure-Python) and returns the overrides that put ``PaleTransformer`` in place of its backbone
with everything that follows from the change, each with a line saying what and why:

* the backbone's outputs are mapped to Pale's stages by resolution (the original's stage at
  stride 4, 8, 16, 32 -> Pale stage 0..3) and ``out_indices`` keeps only those the neck or
  heads read (an output nobody reads leaves its norm without gradients: DDP stops with
  "unused parameters");
* every consumer of the backbone's outputs gets Pale's channels and the indices of the
  trimmed outputs (:data:`CONSUMERS`): mmdet necks, mmseg decode and auxiliary heads, heads
  nested in others (K-Net), Mask2Former/MaskFormer heads;
* RGB ImageNet mean/std in the data preprocessor (Caffe/BGR statistics are for the old
  backbone's weights), no segmentor-level ``pretrained`` (mmseg would hand it to Pale);
* ``paramwise_cfg.custom_keys`` that name the old backbone's parameters (Swin's norms and
  position tables) become keys for Pale's norms and position encodings (``cpe``), so the
  same parameters as before go without weight decay; mmdet's/mmseg's
  ``LearningRateDecayOptimizerConstructor`` becomes ``PaleLayerDecayOptimizerConstructor``.

Anything it cannot map (an unknown neck or head, a backbone whose outputs it cannot place,
custom keys for other backbone parameters) raises :class:`SwapError` naming the config key
to set by hand: never a config that builds and trains wrongly.

In Python::

    from mmengine.config import Config
    from pale_mm.swap import apply_swap
    cfg = Config.fromfile('mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py')
    for line in apply_swap(cfg, arch='tiny').changes:
        print(line)
"""
from .consumers import CONSUMERS, consumer  # noqa: F401
from .custom_keys import rewrite_custom_keys  # noqa: F401
from .outputs import (  # noqa: F401
    BACKBONES,
    DEFAULT_DROP_PATH,
    IMAGENET_RGB,
    PALE_STRIDES,
    Swap,
    SwapError,
    _plain,
    backbone_outputs,
    pale_dims,
    type_name,
)
from .render import base_reference, render_config  # noqa: F401
from .swap_backbone import apply_swap, pale_depths, resolve_config, swap_backbone  # noqa: F401
