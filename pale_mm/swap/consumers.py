"""The necks and heads that read a backbone's outputs (:data:`CONSUMERS`), each rewritten to
Pale's channels and the indices of the outputs it keeps."""
from typing import Dict, List

from .outputs import SwapError, _as_list, type_name


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
