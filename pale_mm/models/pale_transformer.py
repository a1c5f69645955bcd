"""Pale Transformer backbone (Wu et al., AAAI 2022, arXiv 2112.14000).

Composable pieces, each with the shapes it takes and gives:

* :class:`SepConvProjection` -- depthwise 3x3 -> BatchNorm -> pointwise 1x1 (CvT style).
* :class:`PaleAttention` -- Q, K, V projections, PS-Attention, output projection.
* :class:`PaleBlock` -- conditional position encoding, attention and MLP with residuals.
* :class:`PaleStage` -- (downsample) + blocks.
* :class:`PaleTransformer` -- stem + stages; one normed map per ``out_indices`` entry.

The attention math itself lives in :mod:`pale_mm.models.pale_attention`. With
``memory_efficient=True`` (the default), where a Linear layer follows cheap ops (GELU;
depthwise conv and BatchNorm; the scatter of the attention's groups), training keeps the cheap
ops' input rather than their output and recomputes them in the backward
(:mod:`pale_mm.models.memory_efficient`): a block keeps about 13 C per token instead of 24 C.
"""
import math
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule
from mmengine.model.weight_init import constant_init, trunc_normal_init
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import PaleError
from .memory_efficient import recomputed_input_linear
from .pale_attention import pale_attention_bands

# Variants as a table (docs/model.md): widths C, 2C, 4C, 8C.
ARCH_SETTINGS: Dict[str, Dict] = {
    'tiny': dict(embed_dims=64, depths=(2, 2, 16, 2), num_heads=(2, 4, 8, 16)),
    'small': dict(embed_dims=96, depths=(2, 2, 16, 2), num_heads=(4, 8, 16, 32)),
    'base': dict(embed_dims=128, depths=(2, 2, 16, 2), num_heads=(4, 8, 16, 32)),
}
ARCH_ALIASES = {'t': 'tiny', 's': 'small', 'b': 'base',
                'pale-t': 'tiny', 'pale-s': 'small', 'pale-b': 'base'}


def depthwise_conv3x3(channels: int, bias: bool) -> nn.Conv2d:
    """A 3x3 depthwise conv for channels-last inputs, its weight laid out as its gradient
    comes back.

    The blocks feed their depthwise convs channels-last maps (a permuted (B, H, W, C) map),
    and the convolution's backward then returns the (C, 1, 3, 3) weight's gradient in the
    channels-last layout, strides (9, 1, 3, 1), while a new weight has strides (9, 9, 3, 1).
    The two hold the same bytes (the dimension of size 1 makes them equal), so autograd
    keeps the gradient as it is, but DDP compares strides exactly: it warned ("Grad strides
    do not match bucket view strides") and copied every such gradient into its bucket at
    every step. A weight in the channels-last layout from the start matches; ``.to()``,
    ``load_state_dict`` and optimizers keep the layout.
    """
    conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=bias)
    # a fresh tensor: .to(memory_format=...) would keep the current strides, which already
    # count as channels-last because of the dimension of size 1
    weight = torch.empty_like(conv.weight, memory_format=torch.channels_last)
    conv.weight = nn.Parameter(weight.copy_(conv.weight.detach()))
    return conv


def training_step(module: nn.Module) -> bool:
    """Whether ``module`` runs in a training step that will call a backward: train mode with
    autograd on. Only there do the memory-efficient paths run; in eval mode (inference, the
    ONNX exporters, which trace in eval mode and cannot trace an autograd Function) every
    module runs its plain forward."""
    return module.training and torch.is_grad_enabled()


class ChannelsLastNorm(nn.Module):
    """A norm layer from ``norm_cfg`` applied to (B, H, W, C) maps (LN over C)."""

    def __init__(self, norm_cfg: Dict, channels: int):
        super().__init__()
        if norm_cfg.get('type') not in ('LN', 'LayerNorm'):
            raise ValueError(
                f"PaleTransformer normalises tokens with LayerNorm; norm_cfg type "
                f"{norm_cfg.get('type')!r} is not supported, use dict(type='LN')")
        self.norm = build_norm_layer(norm_cfg, channels)[1]

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x)


class ConvEmbed(nn.Module):
    """Strided conv + norm: the stem (7x7, stride 4) and the downsamplings (3x3, stride 2).

    (B, H, W, C_in) channels-last -> (B, H/stride, W/stride, C_out)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 norm_cfg: Dict):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                              padding=kernel_size // 2)
        self.norm = ChannelsLastNorm(norm_cfg, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x.permute(0, 3, 1, 2))  # (B, C_out, H', W')
        return self.norm(x.permute(0, 2, 3, 1))


class SepConvProjection(nn.Module):
    """Depthwise 3x3 conv -> BatchNorm -> pointwise 1x1 conv (CvT-style projection).

    (B, C, H, W) -> (B, H, W, C). The pointwise conv is an ``nn.Linear`` over the channels of
    the channels-last map: the same operation as a 1x1 conv, as one matrix product. With
    ``memory_efficient`` the backward recomputes the conv and the BatchNorm from ``x``.
    """

    def __init__(self, channels: int, bias: bool = True, memory_efficient: bool = False):
        super().__init__()
        self.memory_efficient = memory_efficient
        self.dw = depthwise_conv3x3(channels, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.pw = nn.Linear(channels, channels, bias=bias)

    def _dw_bn(self, x: Tensor, *params) -> Tensor:
        """(B, C, H, W) -> (B, H, W, C): the cheap part, with the modules' own forward."""
        return self.bn(self.dw(x)).permute(0, 2, 3, 1)

    def _dw_bn_again(self, x: Tensor, dw_weight: Tensor, bn_weight: Tensor, bn_bias: Tensor,
                     running_mean: Optional[Tensor], running_var: Optional[Tensor]) -> Tensor:
        """:meth:`_dw_bn` recomputed for the backward: the same values (batch statistics, or
        the running ones where the forward used them), and no update of the statistics."""
        dw = self.dw
        d = F.conv2d(x, dw_weight, None, dw.stride, dw.padding, dw.dilation, dw.groups)
        return F.batch_norm(d, running_mean, running_var, bn_weight, bn_bias,
                            training=running_mean is None, momentum=0.,
                            eps=self.bn.eps).permute(0, 2, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        dw, bn, pw = self.dw, self.bn, self.pw
        # the recompute is written for BatchNorm2d (not, e.g., a SyncBatchNorm after
        # conversion) and for the (only) configuration built here: no conv bias
        if not (self.memory_efficient and training_step(self)
                and type(bn) is nn.BatchNorm2d and dw.bias is None):
            return pw(self._dw_bn(x))
        use_running = not bn.training and bn.running_mean is not None
        stats = (bn.running_mean, bn.running_var) if use_running else (None, None)
        return recomputed_input_linear(self._dw_bn, (x, dw.weight, bn.weight, bn.bias, *stats),
                                       pw.weight, pw.bias, recompute_fn=self._dw_bn_again)


class PaleAttention(nn.Module):
    """Pale-shaped self-attention with separable-conv Q/K/V. (B, H, W, C) -> (B, H, W, C).

    With ``memory_efficient`` the output projection keeps the attention's grouped output
    only (not also the scattered copy) and the backward scatters it again.
    """

    def __init__(self, dims: int, num_heads: int, pale_size=7, qkv_bias: bool = True,
                 attn_drop: float = 0., proj_drop: float = 0., memory_efficient: bool = False):
        super().__init__()
        self.dims = dims
        self.num_heads = num_heads
        self.pale_size = pale_size
        self.attn_drop = attn_drop
        self.memory_efficient = memory_efficient
        self.q = SepConvProjection(dims, qkv_bias, memory_efficient)
        self.k = SepConvProjection(dims, qkv_bias, memory_efficient)
        self.v = SepConvProjection(dims, qkv_bias, memory_efficient)
        self.proj = nn.Linear(dims, dims)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        xc = x.permute(0, 3, 1, 2)  # (B, C, H, W), channels-last in memory
        q, k, v = self.q(xc), self.k(xc), self.v(xc)  # each (B, H, W, C)
        # the attention's output in groups; layout.scatter(*bands) is (B, H, W, C)
        bands, layout = pale_attention_bands(q, k, v, self.pale_size, self.num_heads,
                                             self.attn_drop if self.training else 0.)
        if self.memory_efficient and training_step(self):
            x = recomputed_input_linear(layout.scatter, bands, self.proj.weight, self.proj.bias)
        else:
            x = self.proj(layout.scatter(*bands))
        return self.proj_drop(x)


class Mlp(nn.Module):
    """Linear -> act -> Linear. (..., C) -> (..., C).

    With ``memory_efficient`` and GELU, fc2 keeps fc1's output only (not GELU's as well) and
    the backward recomputes GELU (without dropout between them in training: it would draw
    again).
    """

    def __init__(self, dims: int, hidden: int, act_cfg: Dict, drop: float = 0.,
                 memory_efficient: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(dims, hidden)
        self.act = build_activation_layer(act_cfg)
        self.fc2 = nn.Linear(hidden, dims)
        self.drop = nn.Dropout(drop)
        # GELU's backward needs its input only, so its output buffer can be reused
        self.recompute_act = memory_efficient and isinstance(self.act, nn.GELU)

    def forward(self, x: Tensor) -> Tensor:
        x = self.fc1(x)  # (..., hidden)
        if self.recompute_act and training_step(self) and not self.drop.p > 0:
            x = recomputed_input_linear(self.act, (x, ), self.fc2.weight, self.fc2.bias)
        else:
            x = self.fc2(self.drop(self.act(x)))
        return self.drop(x)


class PaleBlock(nn.Module):
    """x += DWConv3x3(x); x += DropPath(PSAttn(LN(x))); x += DropPath(MLP(LN(x))).

    (B, H, W, C) -> (B, H, W, C)
    """

    def __init__(self, dims: int, num_heads: int, pale_size=7, mlp_ratio: float = 4.,
                 qkv_bias: bool = True, drop: float = 0., attn_drop: float = 0.,
                 drop_path: float = 0., norm_cfg: Dict = dict(type='LN'),
                 act_cfg: Dict = dict(type='GELU'), with_cp: bool = False,
                 memory_efficient: bool = True):
        super().__init__()
        self.with_cp = with_cp
        self.cpe = depthwise_conv3x3(dims, bias=True)
        self.norm1 = ChannelsLastNorm(norm_cfg, dims)
        self.attn = PaleAttention(dims, num_heads, pale_size, qkv_bias, attn_drop, drop,
                                  memory_efficient)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = ChannelsLastNorm(norm_cfg, dims)
        self.mlp = Mlp(dims, int(dims * mlp_ratio), act_cfg, drop, memory_efficient)

    def _forward(self, x: Tensor) -> Tensor:
        x = x + self.cpe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def forward(self, x: Tensor) -> Tensor:
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


class PaleStage(nn.Module):
    """Optional 3x3 stride-2 downsampling, then ``depth`` blocks.

    (B, H, W, C_in) -> (B, H/2, W/2, C) (or (B, H, W, C) without downsampling)
    """

    def __init__(self, in_dims: int, dims: int, depth: int, num_heads: int, pale_size,
                 downsample: bool, drop_paths: Sequence[float], norm_cfg: Dict,
                 **block_kwargs):
        super().__init__()
        self.downsample = ConvEmbed(in_dims, dims, 3, 2, norm_cfg) if downsample else None
        self.blocks = nn.ModuleList([
            PaleBlock(dims, num_heads, pale_size, drop_path=drop_paths[i],
                      norm_cfg=norm_cfg, **block_kwargs) for i in range(depth)
        ])

    def forward(self, x: Tensor) -> Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        for block in self.blocks:
            x = block(x)
        return x


def _resolve_arch(arch: Union[str, Dict]) -> Dict:
    if isinstance(arch, str):
        key = ARCH_ALIASES.get(arch.lower(), arch.lower())
        if key not in ARCH_SETTINGS:
            raise PaleConfigError(
                f'PaleTransformer: unknown arch {arch!r}; choose one of '
                f'{sorted(ARCH_SETTINGS)} or pass a dict with embed_dims, depths, num_heads')
        return dict(ARCH_SETTINGS[key])
    if not isinstance(arch, dict):
        raise PaleConfigError(f'PaleTransformer: arch must be a str or a dict, got {type(arch)}')
    missing = {'embed_dims', 'depths', 'num_heads'} - set(arch)
    if missing:
        raise PaleConfigError(f'PaleTransformer: custom arch dict lacks {sorted(missing)}; it '
                              'needs embed_dims, depths and num_heads')
    extra = set(arch) - {'embed_dims', 'depths', 'num_heads'}
    if extra:
        raise PaleConfigError(f'PaleTransformer: custom arch dict has unknown keys '
                              f'{sorted(extra)}; it takes embed_dims, depths and num_heads')
    return dict(arch)


class PaleConfigError(PaleError, ValueError):
    """A PaleTransformer argument that cannot work; the message names it and the fix."""


def check_args(arch: Union[str, Dict] = 'tiny', pale_size: Union[int, Sequence[int]] = 7,
               out_indices: Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1,
               in_channels: int = 3) -> Dict:
    """Validate the structural arguments of :class:`PaleTransformer` without building it.

    Returns:
        dict with the resolved ``arch`` (embed_dims, depths, num_heads), ``dims``,
        ``pale_sizes`` (one per stage) and ``out_indices`` (non-negative).

    Raises:
        PaleConfigError: naming the argument and what it must be.
    """
    arch = _resolve_arch(arch)
    embed_dims = arch['embed_dims']
    depths, num_heads = list(arch['depths']), list(arch['num_heads'])
    num_stages = len(depths)
    if len(num_heads) != num_stages:
        raise PaleConfigError(
            f'PaleTransformer: depths {depths} and num_heads {num_heads} must have one '
            f'entry per stage (got {num_stages} and {len(num_heads)})')
    dims = [embed_dims * 2**i for i in range(num_stages)]
    for i, (d, h) in enumerate(zip(dims, num_heads)):
        if h < 2 or h % 2 or d % h:
            raise PaleConfigError(
                f'PaleTransformer: stage {i} has {d} channels and {h} heads; heads must be '
                'even (half attend rows, half columns) and divide the channels')
    if isinstance(pale_size, int):
        pale_sizes = [pale_size] * num_stages
    else:
        pale_sizes = list(pale_size)
        if len(pale_sizes) != num_stages:
            raise PaleConfigError(
                f'PaleTransformer: pale_size {pale_size} needs one value per stage '
                f'({num_stages}) or a single int')
    for p in pale_sizes:
        if not isinstance(p, int) or p < 1:
            raise PaleConfigError(
                f'PaleTransformer: pale_size must be a positive int, got {pale_size}')
    if isinstance(out_indices, int):
        out_indices = [out_indices]
    resolved = [i + num_stages if isinstance(i, int) and i < 0 else i for i in out_indices]
    for i in resolved:
        if not isinstance(i, int) or not 0 <= i < num_stages:
            raise PaleConfigError(
                f'PaleTransformer: out_indices {tuple(out_indices)} out of range; the model '
                f'has stages 0..{num_stages - 1} (strides 4, 8, 16, 32 for four stages)')
    if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= num_stages:
        raise PaleConfigError(
            f'PaleTransformer: frozen_stages={frozen_stages} must lie in [-1, {num_stages}]')
    if not isinstance(in_channels, int) or in_channels < 1:
        raise PaleConfigError(
            f'PaleTransformer: in_channels must be an int >= 1, got {in_channels}')
    return dict(arch=arch, dims=dims, pale_sizes=pale_sizes, out_indices=resolved)


def check_config(cfg: Dict) -> None:
    """Validate a ``type='PaleTransformer'`` config dict: unknown argument names (with the
    nearest known one) and the structural arguments, before anything is built."""
    import difflib
    import inspect
    params = [n for n in inspect.signature(PaleTransformer.__init__).parameters
              if n != 'self']
    kwargs = {k: v for k, v in cfg.items() if k not in ('type', '_scope_')}
    for name in kwargs:
        if name not in params:
            close = difflib.get_close_matches(name, params, n=1)
            raise PaleConfigError(
                f'PaleTransformer has no argument {name!r}'
                + (f'; did you mean {close[0]!r}?' if close else '.')
                + f' Its arguments: {", ".join(params)}')
    check_args(**{k: v for k, v in kwargs.items()
                  if k in ('arch', 'pale_size', 'out_indices', 'frozen_stages',
                           'in_channels')})


class PaleTransformer(BaseModule):
    """Pale Transformer backbone returning multi-scale maps (strides 4, 8, 16, 32).

    Args:
        arch (str | dict): ``'tiny'``, ``'small'``, ``'base'`` (see :data:`ARCH_SETTINGS`)
            or a dict with ``embed_dims``, ``depths`` and ``num_heads``. Default: ``'tiny'``.
        in_channels (int): input image channels. Default: 3.
        pale_size (int | Sequence[int]): pale size ``s_r = s_c``, one for all stages or one
            per stage. Default: 7.
        mlp_ratio (float): MLP hidden width over the stage width. Default: 4.
        qkv_bias (bool): bias of the pointwise Q/K/V convolutions. Default: True.
        drop_rate (float): dropout after the MLP and the attention projection. Default: 0.
        attn_drop_rate (float): dropout on the attention weights. Default: 0.
        drop_path_rate (float): stochastic depth, rising linearly over the blocks to this
            value. Default: 0.1.
        out_indices (Sequence[int]): stages whose (normed) output is returned.
            Default: (0, 1, 2, 3).
        frozen_stages (int): freeze the stem (0) and also the first ``k`` stages (k >= 1),
            parameters and norm statistics, from construction on. -1 freezes nothing.
        norm_eval (bool): keep BatchNorm layers in eval mode while training. Default: False.
        with_cp (bool): gradient checkpointing per block: the backward runs each block's
            forward again (the least memory, about a third more time). Default: False.
        memory_efficient (bool): where a Linear layer follows cheap ops (GELU before fc2,
            depthwise conv + BatchNorm before each Q/K/V projection, the scatter of the
            attention's groups before proj), keep the cheap ops' input instead of their
            output and recompute them in the backward: a block keeps about 13 C per token
            instead of 24 C, for a little more time. The same results and BatchNorm
            statistics as without it. Default: True, so that training fits where Swin-T's
            does (``docs/model.md`` has the measurements).
        norm_cfg (dict): token norm. Default: ``dict(type='LN')``.
        act_cfg (dict): MLP activation. Default: ``dict(type='GELU')``.
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint=PATH)`` loads a
            classification, mmdet/mmseg or plain backbone checkpoint (a ``backbone.`` prefix
            and head keys are handled).
    """

    def __init__(self,
                 arch: Union[str, Dict] = 'tiny',
                 in_channels: int = 3,
                 pale_size: Union[int, Sequence[int]] = 7,
                 mlp_ratio: float = 4.,
                 qkv_bias: bool = True,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.1,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 memory_efficient: bool = True,
                 norm_cfg: Dict = dict(type='LN'),
                 act_cfg: Dict = dict(type='GELU'),
                 pretrained: str = None,
                 init_cfg: Dict = None):
        if pretrained is not None:
            # mmseg's segmentors hand their own `pretrained` (the weights of the backbone the
            # config was written for: open-mmlab://resnet50_v1c, a Swin URL) to the backbone.
            raise PaleConfigError(
                f'PaleTransformer got pretrained={pretrained!r}, the segmentor-level weights '
                'of the backbone this config was written for. Set model.pretrained=None '
                '(--cfg-options model.pretrained=None) and give Pale weights as '
                "model.backbone.init_cfg=dict(type='Pretrained', checkpoint=PATH_OR_URL)")
        super().__init__(init_cfg=init_cfg)

        checked = check_args(arch=arch, pale_size=pale_size, out_indices=out_indices,
                             frozen_stages=frozen_stages, in_channels=in_channels)
        arch, dims, pale_sizes, out_indices = (checked[k] for k in (
            'arch', 'dims', 'pale_sizes', 'out_indices'))
        embed_dims, depths, num_heads = arch['embed_dims'], list(arch['depths']), list(
            arch['num_heads'])
        num_stages = len(depths)

        self.arch = arch
        self.embed_dims = embed_dims
        self.in_channels = in_channels
        self.num_stages = num_stages
        self.dims = dims
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp
        self.memory_efficient = memory_efficient
        self.num_features = [dims[i] for i in self.out_indices]

        self.stem = ConvEmbed(in_channels, embed_dims, 7, 4, norm_cfg)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        for i in range(num_stages):
            start = sum(depths[:i])
            self.stages.append(
                PaleStage(dims[i - 1] if i else embed_dims, dims[i], depths[i], num_heads[i],
                          pale_sizes[i], downsample=i > 0,
                          drop_paths=dpr[start:start + depths[i]], norm_cfg=norm_cfg,
                          mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop_rate,
                          attn_drop=attn_drop_rate, act_cfg=act_cfg, with_cp=with_cp,
                          memory_efficient=memory_efficient))
        for i in self.out_indices:
            self.add_module(f'norm{i}', ChannelsLastNorm(norm_cfg, dims[i]))

        self._freeze_stages()

    # ------------------------------------------------------------------ freezing / modes
    def _frozen_modules(self):
        if self.frozen_stages >= 0:
            yield self.stem
        for i in range(self.frozen_stages):
            yield self.stages[i]
            if i in self.out_indices:
                yield getattr(self, f'norm{i}')

    def _freeze_stages(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    # ------------------------------------------------------------------ layer map
    def layer_ids(self, decay_type: str = 'layer_wise',
                  num_layers: Optional[int] = None) -> Dict[str, int]:
        """{parameter name: layer id} for layer-wise learning-rate decay, from the model's
        structure: 0 for the stem; 1..``num_layers`` for the blocks (``'layer_wise'``: in
        depth order, spread evenly over ``num_layers`` ids, by default one per block;
        ``'stage_wise'``: stage i's blocks get i + 1, ``num_layers`` defaults to the number
        of stages); a downsampling goes with the first block of its stage; the output norms
        get ``num_layers + 1``, the id of the neck and heads (an ImageNet checkpoint holds
        none of them but the last)."""
        depths = [len(stage.blocks) for stage in self.stages]
        total = sum(depths)
        n = num_layers or (total if decay_type == 'layer_wise' else len(depths))
        ids = {f'stem.{name}': 0 for name, _ in self.stem.named_parameters()}
        k = 0  # blocks so far, in depth order
        for i, stage in enumerate(self.stages):
            first = None
            for j, block in enumerate(stage.blocks):
                k += 1
                layer = i + 1 if decay_type == 'stage_wise' else math.ceil(k * n / total)
                first = layer if first is None else first
                ids.update({f'stages.{i}.blocks.{j}.{name}': layer
                            for name, _ in block.named_parameters()})
            if stage.downsample is not None:
                ids.update({f'stages.{i}.downsample.{name}': first or i + 1
                            for name, _ in stage.downsample.named_parameters()})
        for i in self.out_indices:
            ids.update({f'norm{i}.{name}': n + 1
                        for name, _ in getattr(self, f'norm{i}').named_parameters()})
        return ids

    def parameter_kinds(self) -> Dict[str, str]:
        """{parameter name: kind}: ``'norm'`` for the weights and biases of norm layers,
        ``'position'`` for the conditional position encodings (each block's ``cpe``, a
        depthwise conv), ``'other'`` for the rest. What goes without weight decay is read
        from it (Pale's layer-decay constructor; the swap tool's ``custom_keys``)."""
        position = {id(block.cpe) for stage in self.stages for block in stage.blocks}
        kinds = {}
        for module_name, module in self.named_modules():
            kind = ('norm' if isinstance(module, (nn.LayerNorm, _BatchNorm, nn.GroupNorm))
                    else 'position' if id(module) in position else 'other')
            for name, _ in module.named_parameters(prefix=module_name, recurse=False):
                kinds[name] = kind
        return kinds

    def get_layer_depth(self, param_name: str, prefix: str = ''):
        """(layer id, number of ids) of a parameter, as mmpretrain's
        ``LearningRateDecayOptimWrapperConstructor`` asks its backbone (through
        ``ImageClassifier.get_layer_depth`` with ``prefix='backbone.'``); that constructor
        scales the lr by ``layer_decay_rate ** (number - id - 1)``. The ids are
        :meth:`layer_ids` (one per block); names outside the backbone (neck, heads) get the
        top id, at the base lr."""
        if getattr(self, '_layer_depths', None) is None:
            self._layer_depths = self.layer_ids()
        top = sum(len(stage.blocks) for stage in self.stages) + 1
        name = param_name[len(prefix):] if param_name.startswith(prefix) else None
        return self._layer_depths.get(name, top), top + 1

    # ------------------------------------------------------------------ weights
    def init_weights(self) -> None:
        if self.init_cfg is not None and self.init_cfg.get('type') == 'Pretrained':
            from ..checkpoint import load_pretrained_backbone
            load_pretrained_backbone(self, self.init_cfg['checkpoint'],
                                     map_location='cpu')
            self._is_init = True
            return
        if self.init_cfg is not None:
            super().init_weights()
            return
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_init(m, std=.02, bias=0.)
            elif isinstance(m, (nn.LayerNorm, _BatchNorm)):
                constant_init(m, val=1.0, bias=0.)
        self._is_init = True

    # ------------------------------------------------------------------ forward
    def _check_input(self, x) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f'PaleTransformer expects a 4-D image batch (B, C, H, W), got {shape}; '
                'add a batch dimension with x[None] for a single image')
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f'PaleTransformer was built for in_channels={self.in_channels} but the input '
                f'has {x.shape[1]} channels (shape {tuple(x.shape)}); set '
                f'in_channels={x.shape[1]} in the backbone config or convert the images')

    def forward(self, x: Tensor):
        """(B, C_in, H, W) -> tuple of (B, dims[i], H_i, W_i) for i in ``out_indices``."""
        self._check_input(x)
        x = self.stem(x.permute(0, 2, 3, 1))  # (B, H/4, W/4, C)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                out = getattr(self, f'norm{i}')(x)
                outs.append(out.permute(0, 3, 1, 2).contiguous())
        return tuple(outs)
