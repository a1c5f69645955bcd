"""What the swap knows of backbones: which outputs a backbone config gives, at which
stride, and Pale's own (channels per stage, strides)."""
from typing import List, NamedTuple, Optional, Union

from ..errors import PaleError

IMAGENET_RGB = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375])
# Stochastic depth where the old backbone has none: Swin's detection and segmentation values.
DEFAULT_DROP_PATH = {'tiny': 0.2, 'small': 0.3, 'base': 0.3}
PALE_STRIDES = (4, 8, 16, 32)


class SwapError(PaleError, ValueError):
    """A config the swap cannot rewrite safely; the message names the key to set by hand."""


class Swap(NamedTuple):
    overrides: dict  # merged over the config (``_base_`` semantics, ``_delete_`` included)
    changes: List[str]  # what changed and why, one line each
    custom_imports: dict  # the config's custom_imports with pale_mm added


# ---------------------------------------------------------------------------------------
# helpers
def type_name(t) -> str:
    """'FPN' for ``'FPN'``, ``'mmdet.FPN'``, the class FPN or a pure-Python config's lazy
    ``FPN``."""
    if isinstance(t, str):
        return t.split('.')[-1]
    for attr in ('__name__', '_imported'):
        name = getattr(t, attr, None)
        if isinstance(name, str):
            return name.split('.')[-1]
    return str(t).split('.')[-1]


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _plain(x):
    """A ConfigDict / tuple tree as plain dicts and lists (for comparing and writing)."""
    # not ConfigDict.to_dict: it keeps tuples, and a config's (1, 2) must equal an override's [1, 2]
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def pale_dims(arch: Union[str, dict]) -> List[int]:
    """Channels of Pale's four stages for ``arch``."""
    from ..models.pale_transformer import check_args
    return check_args(arch=arch)['dims']


# ---------------------------------------------------------------------------------------
# the old backbone's outputs: (level 0..3, stride) per output, in the order it returns them
def _resnet_like(bb: dict) -> list:
    num_stages = bb.get('num_stages', 4)
    strides = _as_list(bb.get('strides', (1, 2, 2, 2)))
    indices = _indices(bb, (0, 1, 2, 3), num_stages)
    stride, level_stride = 4, []  # the stem's stride, then each stage's
    for s in strides[:num_stages]:
        stride *= s
        level_stride.append(stride)
    if any(i >= len(level_stride) for i in indices):
        return None
    return [(i, level_stride[i]) for i in indices]


def _four_stage(default_indices=(0, 1, 2, 3)):
    def outputs(bb: dict) -> list:
        return [(i, PALE_STRIDES[i]) for i in _indices(bb, default_indices, 4)]
    return outputs


def _stem_plus_four(bb: dict) -> Optional[list]:
    """CSPNeXt / CSPDarknet: index 0 is the stride-2 stem (no Pale stage), 1..4 the stages."""
    indices = _indices(bb, (2, 3, 4), 5)
    return None if 0 in indices else [(i - 1, PALE_STRIDES[i - 1]) for i in indices]


def _indices(bb: dict, default, num) -> List[int]:
    indices = bb.get('out_indices', default)
    indices = [indices] if isinstance(indices, int) else list(indices)
    return sorted(i + num if i < 0 else i for i in indices)


def _mscan(bb: dict) -> list:
    return [(i, PALE_STRIDES[i]) for i in range(bb.get('num_stages', 4))]


BACKBONES = {
    **dict.fromkeys(['ResNet', 'ResNetV1c', 'ResNetV1d', 'ResNeXt', 'Res2Net', 'ResNeSt'],
                    _resnet_like),
    **dict.fromkeys(['SwinTransformer', 'MixVisionTransformer', 'PyramidVisionTransformer',
                     'PyramidVisionTransformerV2', 'PaleTransformer', 'TwinsPCPVT',
                     'SVT'], _four_stage()),
    'ConvNeXt': _four_stage((3, )),  # mmpretrain's, out_indices=-1 by default
    'MSCAN': _mscan,  # SegNeXt: returns all four stages
    **dict.fromkeys(['CSPNeXt', 'CSPDarknet'], _stem_plus_four),
}


def backbone_outputs(backbone: dict, key: str = 'model.backbone') -> list:
    """[(level, stride)] of each output of the old backbone, or SwapError."""
    name = type_name(backbone.get('type'))
    find = BACKBONES.get(name)
    outputs = find(backbone) if find else None
    if not outputs or any(not 0 <= level < 4 for level, _ in outputs):
        raise SwapError(
            f'{key}: cannot tell which resolutions the outputs of {name} '
            f"(out_indices {backbone.get('out_indices')}) are; give the Pale stages "
            '(0..3 for strides 4..32) that stand for them with --out-indices')
    return outputs
