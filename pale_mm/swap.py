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
import copy
import importlib.util
import keyword
import os
import os.path as osp
import textwrap
from typing import Dict, List, NamedTuple, Optional, Sequence, Union

from .errors import PaleError

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
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def pale_dims(arch: Union[str, dict]) -> List[int]:
    """Channels of Pale's four stages for ``arch``."""
    from .models.pale_transformer import check_args
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


# ---------------------------------------------------------------------------------------
# consumers of the backbone's outputs
class Consumer:
    """A neck or head config that reads the backbone's outputs.

    ``reads`` lists the output positions it reads; :meth:`rewrite` returns the overrides for
    the new positions (``position[old] = new``) and channels (``channels[old]``)."""

    def __init__(self, key: str, cfg: dict, num_inputs: int, scope: str):
        self.key, self.cfg, self.num_inputs = key, cfg, num_inputs
        self.name = type_name(cfg.get('type'))
        t = cfg.get('type')  # 'mmdet.FPN' names its library; else the config's default scope
        self.scope = t.split('.')[0] if isinstance(t, str) and '.' in t else scope

    reads: List[int]

    def rewrite(self, position: Dict[int, int], channels: Dict[int, int],
                strides: Dict[int, tuple]) -> dict:
        raise NotImplementedError


class FPNLike(Consumer):
    """Reads inputs start_level .. end_level (mmdet's and mmseg's FPN, PAFPN, NAS-FPN...;
    mmdet's end_level is the last input read, mmseg's the one after it). The unread ones
    are dropped: start_level becomes 0, end_level -1."""

    @property
    def start_level(self) -> int:
        return self.cfg.get('start_level', 1 if self.name == 'NASFCOS_FPN' else 0)

    @property
    def reads(self):
        n = len(self.cfg['in_channels'])
        end = self.cfg.get('end_level', -1)
        stop = n if end == -1 else end if self.scope == 'mmseg' else end + 1
        return list(range(self.start_level, stop))

    def rewrite(self, position, channels, strides):
        new = dict(in_channels=[channels[p] for p in self.reads])
        if self.start_level != 0:
            new['start_level'] = 0
        if self.cfg.get('end_level', -1) != -1:
            new['end_level'] = -1
        return new


class ReadsAll(Consumer):
    """Reads every input, one ``in_channels`` entry each (ChannelMapper, CSPNeXtPAFPN, the
    Mask2Former/MaskFormer heads and their pixel decoders, ...)."""

    @property
    def reads(self):
        n = len(self.cfg['in_channels'])
        if n != self.num_inputs:
            raise SwapError(
                f'{self.key}.in_channels has {n} entries but the backbone gives '
                f'{self.num_inputs} outputs; set {self.key}.in_channels by hand')
        return list(range(n))

    def rewrite(self, position, channels, strides):
        return dict(in_channels=[channels[p] for p in self.reads])


class ReadsLast(Consumer):
    """Reads the last input only, ``in_channels`` an int (YOLOF's DilatedEncoder,
    CenterNet's neck)."""

    @property
    def reads(self):
        return [self.num_inputs - 1]

    def rewrite(self, position, channels, strides):
        return dict(in_channels=channels[self.reads[0]])


class DecodeHead(Consumer):
    """mmseg's BaseDecodeHead: reads ``in_index`` (an int, or a list with
    ``input_transform`` 'multiple_select' / 'resize_concat')."""

    @property
    def reads(self):
        index = self.cfg.get('in_index', -1)
        reads = [i + self.num_inputs if i < 0 else i for i in _as_list(index)]
        if any(not 0 <= i < self.num_inputs for i in reads):
            raise SwapError(f'{self.key}.in_index={index} is out of range for the '
                            f'{self.num_inputs} outputs of the backbone; set it by hand')
        return reads

    def rewrite(self, position, channels, strides):
        index = self.cfg.get('in_index', -1)
        if isinstance(index, (list, tuple)):
            return dict(in_index=[position[p] for p in self.reads],
                        in_channels=[channels[p] for p in self.reads])
        return dict(in_index=position[self.reads[0]], in_channels=channels[self.reads[0]])


class ASPPHead(DecodeHead):
    """DeepLabV3: the dilations of the atrous convolutions are in units of the map's stride;
    on a coarser map (Pale's 32 against a dilated ResNet's 8) they shrink by the ratio, so
    each branch sees as far in pixels as before."""

    def rewrite(self, position, channels, strides):
        new = super().rewrite(position, channels, strides)
        old, pale = strides[self.reads[0]]
        dilations = self.cfg.get('dilations', (1, 6, 12, 18))
        if old != pale:
            scaled = [max(1, round(d * old / pale)) if d > 1 else d for d in dilations]
            new['dilations'] = tuple(scaled)
        return new


class SepASPPHead(ASPPHead):
    """DeepLabV3+: ASPP on ``in_index`` and a skip from input 0 (``c1_in_channels``)."""

    @property
    def reads(self):
        reads = super().reads
        return reads + [0] if self.cfg.get('c1_in_channels', 0) and 0 not in reads else reads

    def rewrite(self, position, channels, strides):
        new = super().rewrite(position, channels, strides)
        if self.cfg.get('c1_in_channels', 0):
            if position[0] != 0:
                raise SwapError(f'{self.key}: reads input 0 ({self.key}.c1_in_channels), which '
                                'is not the first Pale output; set the head by hand')
            new['c1_in_channels'] = channels[0]
        return new


class IterativeHead(Consumer):
    """K-Net: the kernel generator (``kernel_generate_head``) reads the backbone."""

    def __init__(self, key, cfg, num_inputs, scope):
        super().__init__(key, cfg, num_inputs, scope)
        self.inner = consumer(f'{key}.kernel_generate_head', cfg['kernel_generate_head'],
                              num_inputs, scope)

    @property
    def reads(self):
        return self.inner.reads

    def rewrite(self, position, channels, strides):
        return dict(kernel_generate_head=self.inner.rewrite(position, channels, strides))


CONSUMERS = {
    **dict.fromkeys(['FPN', 'PAFPN', 'NASFPN', 'NASFCOS_FPN', 'FPN_CARAFE', 'FPG'], FPNLike),
    **dict.fromkeys(['ChannelMapper', 'CSPNeXtPAFPN', 'YOLOXPAFPN', 'HRFPN', 'SSH',
                     'MultiLevelNeck', 'Mask2FormerHead', 'MaskFormerHead'], ReadsAll),
    **dict.fromkeys(['DilatedEncoder', 'CTResNetNeck'], ReadsLast),
    # mmseg decode heads that read their inputs through in_index only
    **dict.fromkeys(['FCNHead', 'UPerHead', 'PSPHead', 'SegformerHead', 'LightHamHead',
                     'FPNHead', 'DAHead', 'DNLHead', 'NLHead', 'CCHead', 'EMAHead', 'GCHead',
                     'ANNHead', 'APCHead', 'DMHead', 'EncHead', 'OCRHead', 'PSAHead',
                     'ISAHead', 'SepFCNHead', 'LRASPPHead', 'PointHead', 'STDCHead',
                     'SegmenterMaskTransformerHead'], DecodeHead),
    'ASPPHead': ASPPHead,
    'DepthwiseSeparableASPPHead': SepASPPHead,
    'IterativeDecodeHead': IterativeHead,
}


def consumer(key: str, cfg: dict, num_inputs: int, scope: str) -> Consumer:
    name = type_name(cfg.get('type'))
    if name not in CONSUMERS:
        raise SwapError(
            f'{key}: does not know which backbone outputs {name} reads; set its in_channels '
            "(Pale's stage widths C, 2C, 4C, 8C) and in_index by hand, and the backbone's "
            'out_indices to the stages it reads')
    return CONSUMERS[name](key, cfg, num_inputs, scope)


def _consumers(model: dict, num_inputs: int, scope: str) -> List[tuple]:
    """[(key path, Consumer, list index or None)] of what reads the backbone's outputs."""
    found = []
    if model.get('neck'):
        neck = model['neck']
        if isinstance(neck, (list, tuple)):  # sequential necks: the first one reads
            found.append((('neck', 0), consumer('model.neck.0', neck[0], num_inputs, scope)))
        else:
            found.append((('neck', ), consumer('model.neck', neck, num_inputs, scope)))
        return found
    for name in ('decode_head', 'auxiliary_head'):  # mmseg
        heads = model.get(name)
        if isinstance(heads, (list, tuple)):
            found += [((name, i), consumer(f'model.{name}.{i}', h, num_inputs, scope))
                      for i, h in enumerate(heads)]
        elif heads:
            found.append(((name, ), consumer(f'model.{name}', heads, num_inputs, scope)))
    if model.get('panoptic_head'):  # mmdet's MaskFormer / Mask2Former
        found.append((('panoptic_head', ), consumer('model.panoptic_head',
                                                    model['panoptic_head'], num_inputs, scope)))
    if not found:
        raise SwapError(f"model ({type_name(model.get('type'))}) has no neck and no head "
                        'that swap_backbone knows to read the backbone; set model.neck (or the '
                        "head's) in_channels by hand")
    return found


# ---------------------------------------------------------------------------------------
# parameter-wise settings (custom_keys)
_FOREIGN_POSITION_KEYS = ('absolute_pos_embed', 'relative_position_bias_table', 'pos_embed',
                          'pos_block', 'cls_token')


def _setting(v: dict) -> tuple:
    v = dict(v)
    v.setdefault('lr_mult', 1.)
    v.setdefault('decay_mult', 1.)
    return tuple(sorted((k, float(x) if isinstance(x, (int, float)) else x)
                        for k, x in v.items()))


def _match(keys: dict, name: str) -> Optional[tuple]:
    """mmengine's rule: the longest key (then the alphabetically first) contained in the
    parameter's name decides."""
    for key in sorted(sorted(keys), key=len, reverse=True):
        if key in name:
            return _setting(keys[key])
    return None


def _pale_parameters(arch) -> Dict[str, str]:
    """{'backbone.<name>': 'norm' | 'position' | 'other'} for Pale's parameters."""
    from torch import nn
    from torch.nn.modules.batchnorm import _BatchNorm

    from .models import PaleTransformer
    model = PaleTransformer(arch=arch, drop_path_rate=0.)
    kinds = {}
    for module_name, module in model.named_modules():
        for p, _ in module.named_parameters(recurse=False):
            name = f'backbone.{module_name}.{p}'
            if isinstance(module, (nn.LayerNorm, _BatchNorm, nn.GroupNorm)):
                kinds[name] = 'norm'
            elif '.cpe' in f'.{module_name}':
                kinds[name] = 'position'
            else:
                kinds[name] = 'other'
    return kinds


def _candidate_keys(name: str) -> List[str]:
    """Shorter to longer keys that name ``name``'s module: each dotted prefix, and before
    it the prefix with its last part's digits dropped (``...blocks.0.norm`` for norm1 and
    norm2)."""
    parts = name.split('.')[:-1]  # the module path
    keys = []
    for i in range(2, len(parts) + 1):
        stripped = '.'.join(parts[:i - 1] + [parts[i - 1].rstrip('0123456789')])
        keys += [stripped, '.'.join(parts[:i])] if stripped != '.'.join(parts[:i]) else \
            ['.'.join(parts[:i])]
    return keys


def rewrite_custom_keys(custom_keys: dict, arch) -> tuple:
    """(new custom_keys, changes) with the old backbone's keys replaced by Pale's.

    Keys with a ``backbone.`` prefix and the bare names of Swin/ViT position tables name the
    old backbone's parameters and are dropped. What they set for norms (keys containing
    'norm') and for position embeddings goes to Pale's norms (LayerNorms and the Q/K/V
    BatchNorms) and conditional position encodings (``cpe``); bare keys such as 'norm'
    still apply to the heads and count for Pale's norms too.
    """
    kept = {k: v for k, v in custom_keys.items()
            if k == 'backbone' or not (k.startswith('backbone.') or k in _FOREIGN_POSITION_KEYS)}
    dropped = [k for k in custom_keys if k not in kept]
    # the old backbone's norms: its own keys, else bare ones ('norm') unless a longer
    # 'backbone' key decided for them (mmengine: the longest key in the name decides)
    norm_keys = [k for k in custom_keys if 'norm' in k and k.startswith('backbone.')] or \
        [k for k in kept if 'norm' in k and k != 'backbone'
         and ('backbone' not in kept or len(k) > len('backbone'))]
    position_keys = [k for k in dropped if any(p in k for p in _FOREIGN_POSITION_KEYS)]
    other = [k for k in dropped if k not in norm_keys and k not in position_keys]
    if other:
        raise SwapError(
            f'optim_wrapper.paramwise_cfg.custom_keys {other} name parameters of the old '
            "backbone that Pale has no counterpart for; write Pale's keys by hand (its "
            'parameters: backbone.stem.*, backbone.stages.<i>.downsample.*, '
            'backbone.stages.<i>.blocks.<j>.{cpe,norm1,attn,norm2,mlp}.*, backbone.norm<i>.*)')
    source = {_setting(v): dict(v) for v in custom_keys.values()}
    target = {}
    for kind, keys in (('norm', norm_keys), ('position', position_keys)):
        settings = {_setting(custom_keys[k]) for k in keys}
        if len(settings) > 1:
            raise SwapError(
                f'optim_wrapper.paramwise_cfg.custom_keys {keys} give the old backbone\'s '
                f'{kind} parameters different settings; write Pale\'s keys by hand')
        if settings:
            target[kind] = settings.pop()
    kinds = _pale_parameters(arch)
    wanted = {n: target.get(kind, _match(kept, n)) for n, kind in kinds.items()}
    new = dict(kept)
    for name in kinds:
        if _match(new, name) == wanted[name]:
            continue
        for key in _candidate_keys(name):  # the shortest key that moves nothing else
            if any(wanted[n] != wanted[name] for n in kinds if key in n):
                continue
            new[key] = source[wanted[name]]
            if _match(new, name) == wanted[name]:
                break
            del new[key]  # a longer key still decides for this parameter
    wrong = [n for n in kinds if _match(new, n) != wanted[n]]
    if wrong:
        raise SwapError(f'optim_wrapper.paramwise_cfg.custom_keys: could not give Pale\'s '
                        f'{wrong[:3]} the settings of the old backbone\'s; set them by hand')
    changes = []
    if dropped or len(new) != len(kept):
        added = [k for k in new if k not in kept]
        for_kinds = {kinds[next(n for n in kinds if k in n)] for k in added}
        what = "Pale's " + ' and '.join(w for kind, w in (
            ('norm', 'norms'), ('position', 'position encodings (cpe)')) if kind in for_kinds)
        changes.append(
            f'optim_wrapper.paramwise_cfg.custom_keys: dropped {len(dropped)} key(s) of the old '
            f'backbone ({", ".join(dropped[:4])}{", ..." if len(dropped) > 4 else ""})'
            + (f'; {len(added)} keys give {what} the settings the old backbone\'s had'
               if added else ''))
    return new, changes


# ---------------------------------------------------------------------------------------
# the swap
def _set(tree: dict, path: tuple, value: dict) -> None:
    node = tree
    for k in path[:-1]:
        node = node.setdefault(k, {})
    node.setdefault(path[-1], {}).update(value)


def resolve_config(config: str) -> str:
    """The file of ``config``: a path, or ``mmdet::path`` / ``mmseg::path`` for a config that
    the library installed (under its ``.mim/configs``)."""
    if '::' in config:
        scope, rel = config.split('::', 1)
        spec = importlib.util.find_spec(scope)
        if spec is None or spec.origin is None:
            raise SwapError(f'{config}: {scope} is not installed')
        path = osp.join(osp.dirname(spec.origin), '.mim', 'configs', rel)
    else:
        path = config
    if not osp.isfile(path):
        raise SwapError(f'config not found: {path}')
    return path


def swap_backbone(cfg, arch: Union[str, dict] = 'tiny', pretrained: Optional[str] = None,
                  out_indices: Optional[Sequence[int]] = None) -> Swap:
    """The overrides that put a Pale backbone of ``arch`` into ``cfg`` (a Config or a path).

    Args:
        cfg: the mmdet/mmseg config (mmengine ``Config``, or a file name).
        arch: Pale variant (``'tiny'``, ``'small'``, ``'base'`` or an arch dict).
        pretrained: Pale's ImageNet checkpoint (path or URL) for the backbone's init_cfg;
            None trains it from scratch.
        out_indices: the Pale stages that stand for the old backbone's outputs, one per
            output, where it cannot tell them itself.

    Raises:
        SwapError: naming the key to set by hand.
    """
    from mmengine.config import Config
    if isinstance(cfg, str):
        cfg = Config.fromfile(cfg)
    model = cfg.get('model')
    if not isinstance(model, dict) or not isinstance(model.get('backbone'), dict):
        raise SwapError('the config has no model.backbone to replace')
    changes = []
    dims = pale_dims(arch)
    arch_name = arch if isinstance(arch, str) else 'custom'
    backbone = model['backbone']
    old_name = type_name(backbone.get('type'))

    # the old outputs, as Pale stages
    if out_indices is not None:
        levels = [int(i) for i in out_indices]
        n_old = len(backbone_outputs(backbone)) if old_name in BACKBONES else len(levels)
        if len(levels) != n_old or any(not 0 <= i < 4 for i in levels):
            raise SwapError(f'--out-indices {levels}: give one Pale stage (0..3) for each of '
                            f'the {n_old} outputs of {old_name}')
        outputs = [(lv, PALE_STRIDES[lv]) for lv in levels]
    else:
        outputs = backbone_outputs(backbone)
    num_inputs = len(outputs)
    scope = cfg.get('default_scope') or ('mmseg' if 'decode_head' in model else 'mmdet')
    consumers = _consumers(model, num_inputs, scope)
    read = sorted({p for _, c in consumers for p in c.reads})
    levels = [outputs[p][0] for p in read]
    if len(set(levels)) != len(levels) or levels != sorted(levels):
        raise SwapError(f'the outputs read ({read}) do not map to distinct Pale stages in order '
                        f'({levels}); give model.backbone.out_indices and the in_channels by hand')
    if levels[-1] != 3:
        raise SwapError(
            f'nothing reads Pale stage 3 (the neck and heads read stages {levels}): its blocks '
            'would run without a use and without gradients (DDP stops on unused parameters). '
            'Set model.backbone.arch with fewer stages by hand')
    position = {p: i for i, p in enumerate(read)}
    channels = {p: dims[outputs[p][0]] for p in read}
    strides = {p: (outputs[p][1], PALE_STRIDES[outputs[p][0]]) for p in read}

    new_backbone = dict(_delete_=True, type='PaleTransformer', arch=copy.deepcopy(arch),
                        drop_path_rate=backbone.get('drop_path_rate',
                                                    DEFAULT_DROP_PATH.get(arch_name, 0.2)),
                        out_indices=tuple(levels))
    if backbone.get('with_cp'):
        new_backbone['with_cp'] = True
    new_backbone['init_cfg'] = dict(type='Pretrained', checkpoint=pretrained) \
        if pretrained else None
    overrides = dict(model=dict(backbone=new_backbone))
    changes.append(
        f'model.backbone: {old_name} -> PaleTransformer arch={arch_name!r} '
        f'(channels {dims}), out_indices={tuple(levels)}'
        + (f' (the old outputs {[p for p in range(num_inputs) if p not in read]} are read '
           'by nothing and dropped)' if len(read) < num_inputs else '')
        + f", drop_path_rate={new_backbone['drop_path_rate']}"
        + ('' if 'drop_path_rate' in backbone else ' (Swin\'s value; the old backbone had none)'))
    changes.append('model.backbone.init_cfg: ' + (
        f'Pale weights from {pretrained}' if pretrained else
        'None: Pale trains from scratch (give ImageNet weights with --pretrained)'))
    if backbone.get('frozen_stages', -1) not in (-1, None):
        changes.append(f"model.backbone: the old backbone froze frozen_stages="
                       f"{backbone['frozen_stages']}; Pale trains all its stages (set "
                       'model.backbone.frozen_stages to freeze)')
    moved = [(p, s) for p, s in strides.items() if s[0] != s[1]]
    if moved:
        if model.get('decode_head') is None:
            raise SwapError(
                f'the old backbone gives strides {[s[0] for _, s in moved]} where Pale gives '
                f'{[s[1] for _, s in moved]} (a dilated backbone); the anchors and heads of a '
                'detector depend on them: adapt the config by hand')
        changes.append(
            f'strides: Pale gives {[s[1] for _, s in moved]} where the dilated {old_name} gave '
            f'{[s[0] for _, s in moved]}: the heads read coarser maps (mmseg resizes the '
            'logits to the labels)')

    for path, c in consumers:
        new = c.rewrite(position, channels, strides)
        if len(path) == 2:  # an entry of a list: the whole list is written
            lst = overrides['model'].setdefault(path[0], [_plain(x) for x in model[path[0]]])
            _merge(lst[path[1]], new)
        else:
            _set(overrides['model'], path, new)
        key = 'model.' + '.'.join(str(p) for p in path)
        flat = _flatten(new)
        shown = ', '.join(f'{k}={_plain(v)}' for k, v in flat.items())
        was = ', '.join(f'{k}={_plain(_lookup(c.cfg, k))}' for k in flat)
        changes.append(f'{key} ({c.name}): {shown} (was {was})')

    # normalisation: Pale's ImageNet weights see RGB with ImageNet statistics
    pre = model.get('data_preprocessor')
    if not isinstance(pre, dict):
        raise SwapError('model.data_preprocessor is not set; give it RGB ImageNet statistics '
                        f"by hand ({IMAGENET_RGB})")
    wanted = dict(IMAGENET_RGB, bgr_to_rgb=True)
    if 'rgb_to_bgr' in pre:
        wanted['rgb_to_bgr'] = False
    if any(_plain(pre.get(k)) != v for k, v in wanted.items()):
        overrides['model']['data_preprocessor'] = wanted
        changes.append(f"model.data_preprocessor: mean {_plain(pre.get('mean'))}, std "
                       f"{_plain(pre.get('std'))}, bgr_to_rgb={pre.get('bgr_to_rgb', False)} -> "
                       'RGB ImageNet mean/std (the statistics Pale is trained with)')
    if model.get('pretrained') is not None:
        overrides['model']['pretrained'] = None
        changes.append(f"model.pretrained: {model['pretrained']} (the old backbone's weights, "
                       'which mmseg hands to the backbone) -> None')

    # optimizer
    optim = cfg.get('optim_wrapper') or {}
    paramwise = optim.get('paramwise_cfg') or {}
    if type_name(optim.get('constructor', '')) == 'LearningRateDecayOptimizerConstructor':
        overrides['optim_wrapper'] = dict(constructor='PaleLayerDecayOptimizerConstructor')
        n = paramwise.get('num_layers')
        changes.append(
            'optim_wrapper.constructor: LearningRateDecayOptimizerConstructor -> '
            'PaleLayerDecayOptimizerConstructor (the same decay_rate, decay_type'
            + (f' and num_layers={n}: the lr at the stem stays decay_rate^{n + 1}, Pale\'s '
               f'{sum(pale_depths(arch))} blocks spread over {n} layer ids)' if n else ')'))
    elif paramwise.get('custom_keys'):
        keys, key_changes = rewrite_custom_keys(_plain(paramwise['custom_keys']), arch)
        if key_changes:
            overrides['optim_wrapper'] = dict(
                paramwise_cfg=dict(custom_keys=dict(_delete_=True, **keys)))
            changes += key_changes

    imports = _plain(cfg.get('custom_imports') or {})
    names = _as_list(imports.get('imports', []))
    custom_imports = dict(imports=names + ['pale_mm'] * ('pale_mm' not in names),
                          allow_failed_imports=False)
    return Swap(overrides, changes, custom_imports)


def pale_depths(arch) -> List[int]:
    from .models.pale_transformer import check_args
    return list(check_args(arch=arch)['arch']['depths'])


def _merge(base: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def _lookup(cfg: dict, dotted: str):
    for k in dotted.split('.'):
        cfg = cfg.get(k) if isinstance(cfg, dict) else None
    return cfg


def _flatten(d: dict, prefix: str = '') -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f'{prefix}{k}.'))
        else:
            out[f'{prefix}{k}'] = v
    return out


def apply_swap(cfg, arch='tiny', pretrained=None, out_indices=None) -> Swap:
    """Swap the backbone of ``cfg`` (an mmengine Config, old-style or pure-Python) in place;
    returns the :class:`Swap` (its ``changes`` say what changed)."""
    swap = swap_backbone(cfg, arch, pretrained, out_indices)
    cfg.merge_from_dict(swap.overrides)
    cfg.custom_imports = swap.custom_imports
    import pale_mm  # noqa: F401  registers PaleTransformer where the config builds it
    return swap


# ---------------------------------------------------------------------------------------
# writing the config
WIDTH = 96


def _is_name(k) -> bool:
    return isinstance(k, str) and k.isidentifier() and not keyword.iskeyword(k)


def _render(value, level: int = 0, used: int = 0) -> str:
    """``value`` as Python source, dicts with name keys as ``dict(...)``; broken over lines
    (items indented by 4 under ``level``) when longer than the line's room (``used``
    characters of it are taken)."""
    flat = _render_flat(value)
    if level + used + len(flat) <= WIDTH or not isinstance(value, (dict, list, tuple)):
        return flat
    pad = ' ' * (level + 4)
    if isinstance(value, dict):
        items = _dict_items(value, level + 4)
        opening, closing = ('dict(', ')') if all(_is_name(k) for k in value) else ('{', '}')
    else:
        items = [_render(v, level + 4) for v in value]
        opening, closing = ('[', ']') if isinstance(value, list) else ('(', ')')
    trailing = ',' if isinstance(value, tuple) and len(value) == 1 else ''
    return f'{opening}\n{pad}' + f',\n{pad}'.join(items) + f'{trailing}\n{" " * level}{closing}'


def _dict_items(value: dict, level: int) -> List[str]:
    """Items of a dict; in a dict keyed by strings, three or more ``backbone.`` keys with the
    same value (custom_keys for Pale's norms) as one ``**dict.fromkeys([...], value)``."""
    if all(_is_name(k) for k in value):
        return [f'{k}={_render(v, level, len(k) + 1)}' for k, v in value.items()]
    groups: Dict[str, List[str]] = {}
    for k, v in value.items():
        if isinstance(k, str) and k.startswith('backbone.'):
            groups.setdefault(_render_flat(v), []).append(k)
    grouped = {k for keys in groups.values() if len(keys) >= 3 for k in keys}
    items = [f'{k!r}: {_render(v, level, len(repr(k)) + 2)}' for k, v in value.items()
             if k not in grouped]
    for rendered, keys in groups.items():
        if len(keys) < 3:
            continue
        lines, line = [], ''
        for k in keys:
            if line and len(line) + len(repr(k)) + 2 + level + 4 > WIDTH:
                lines.append(line.rstrip())
                line = ''
            line += f'{k!r}, '
        lines.append(line.rstrip())
        inner = '\n'.join(' ' * (level + 4) + x for x in lines)
        items.append(f'**dict.fromkeys([\n{inner}\n{" " * level}], {rendered})')
    return items


def _render_flat(value) -> str:
    if isinstance(value, dict):
        if all(_is_name(k) for k in value):
            return 'dict(' + ', '.join(f'{k}={_render_flat(v)}' for k, v in value.items()) + ')'
        return '{' + ', '.join(f'{k!r}: {_render_flat(v)}' for k, v in value.items()) + '}'
    if isinstance(value, list):
        return '[' + ', '.join(_render_flat(v) for v in value) + ']'
    if isinstance(value, tuple):
        inner = ', '.join(_render_flat(v) for v in value)
        return f'({inner},)' if len(value) == 1 else f'({inner})'
    return repr(value)


def base_reference(config: str, out_file: str) -> str:
    """How ``out_file`` names ``config`` in ``_base_``: ``mmdet::...`` / ``mmseg::...`` for a
    library's installed config, else the path relative to ``out_file``'s folder."""
    if '::' in config:
        return config
    real = osp.realpath(config)
    for scope in ('mmdet', 'mmseg', 'mmpretrain'):
        try:
            package = osp.dirname(__import__(scope).__file__)
        except ImportError:
            continue
        root = osp.realpath(osp.join(package, '.mim', 'configs'))
        if real.startswith(root + os.sep):
            return f'{scope}::{osp.relpath(real, root)}'
    return osp.relpath(real, osp.dirname(osp.abspath(out_file)))


def render_config(config: str, swap: Swap, out_file: str, command: str = '') -> str:
    """The text of a config that inherits ``config`` and applies ``swap``."""
    lines = ['# Made by tools/swap_backbone.py' + (f':\n#   {command}' if command else '.'),
             '# Changes from the base config, and why:']
    for change in swap.changes:
        lines += textwrap.wrap(change, WIDTH, initial_indent='#   - ',
                               subsequent_indent='#     ', break_on_hyphens=False,
                               break_long_words=False)
    lines += [f'_base_ = [{base_reference(config, out_file)!r}]',
              f'custom_imports = {_render(swap.custom_imports, 0, len("custom_imports = "))}']
    for key, value in swap.overrides.items():
        lines.append(f'{key} = {_render(value, 0, len(key) + 3)}')
    return '\n'.join(lines) + '\n'
