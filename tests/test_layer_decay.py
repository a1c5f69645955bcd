"""PaleLayerDecayOptimizerConstructor: learning rates per layer id on mmdet's and mmseg's
ConvNeXt layer-decay configs swapped to Pale, weight decay per kind of parameter, and the
one-line errors for settings that cannot work."""
import math
import re

import pytest
import torch
from conftest import optimizer_settings_of_each_parameter

import pale_mm  # noqa: F401
from pale_mm.engine.optimizers import LayerDecayConfigError, PaleLayerIds
from pale_mm.models import PaleTransformer
from pale_mm.swap import apply_swap, resolve_config

DET_CONVNEXT = ('mmdet::convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-'
                'crop-3x_coco.py')
SEG_CONVNEXT = 'mmseg::convnext/convnext-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py'


def _depth_order(name):
    """(layer, ...) sort key of a backbone parameter in the order the input passes them."""
    m = re.match(r'backbone\.stages\.(\d+)\.(downsample|blocks\.(\d+))\.', name)
    if name.startswith('backbone.stem.'):
        return (0, 0, 0)
    if m:
        return (1 + int(m.group(1)), 0 if m.group(3) is None else 1, int(m.group(3) or 0))
    return (9, 0, 0)  # output norms


def _swapped(config):
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    cfg = Config.fromfile(resolve_config(config))
    swap = apply_swap(cfg, arch='tiny')
    init_default_scope(cfg.default_scope)
    # AmpOptimWrapper needs a GPU; the param groups come from the constructor alone
    cfg.optim_wrapper.type = 'OptimWrapper'
    cfg.optim_wrapper.pop('loss_scale', None)
    return cfg, MODELS.build(cfg.model), swap


@pytest.mark.parametrize('config, decay_type, num_layers, rate', [
    (DET_CONVNEXT, 'layer_wise', 6, 0.7),
    (SEG_CONVNEXT, 'stage_wise', 6, 0.9),
])
def test_convnext_layer_decay_configs_swapped_to_pale(config, decay_type, num_layers, rate):
    cfg, model, swap = _swapped(config)
    paramwise = cfg.optim_wrapper.paramwise_cfg
    assert cfg.optim_wrapper.constructor == 'PaleLayerDecayOptimizerConstructor'
    assert (paramwise.decay_type, paramwise.num_layers, paramwise.decay_rate) == (
        decay_type, num_layers, rate)
    assert any('PaleLayerDecayOptimizerConstructor' in line for line in swap.changes)
    base_lr, base_wd = cfg.optim_wrapper.optimizer.lr, cfg.optim_wrapper.optimizer.weight_decay
    settings = optimizer_settings_of_each_parameter(model, cfg.optim_wrapper)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(settings) == trainable

    scale = {n: s['lr'] / base_lr for n, s in settings.items()}
    backbone = sorted((n for n in settings if n.startswith('backbone.')), key=_depth_order)
    blocks = [n for n in backbone if '.blocks.' in n]
    # the stem at decay_rate^(num_layers + 1), the last block one step below the heads
    assert all(math.isclose(scale[n], rate ** (num_layers + 1)) for n in backbone
               if n.startswith('backbone.stem.'))
    last_block = blocks[-1].split('.blocks.')[0] + '.blocks.' + blocks[-1].split('.')[4] + '.'
    top_block_id = 4 if decay_type == 'stage_wise' else num_layers
    assert all(math.isclose(scale[n], rate ** (num_layers + 1 - top_block_id))
               for n in blocks if n.startswith(last_block))
    # monotone in depth, rising from the stem to the last block
    lrs = [scale[n] for n in backbone if not re.match(r'backbone\.norm\d', n)]
    assert all(a <= b * (1 + 1e-9) for a, b in zip(lrs, lrs[1:]))
    assert len(set(round(x, 12) for x in lrs)) == num_layers + 1 if decay_type == 'layer_wise' \
        else len(set(round(x, 12) for x in lrs)) == 5
    # output norms, neck and heads at the base lr
    for n in settings:
        if not n.startswith('backbone.') or re.match(r'backbone\.norm\d', n):
            assert math.isclose(scale[n], 1.0), n

    # no weight decay on norms, biases and the position encodings, full decay elsewhere
    norms = {f'{m}.{p}' for m, mod in model.named_modules()
             if isinstance(mod, (torch.nn.LayerNorm, torch.nn.modules.batchnorm._BatchNorm,
                                 torch.nn.GroupNorm)) for p, _ in mod.named_parameters()}
    for n, s in settings.items():
        exempt = n in norms or n.endswith('.bias') or '.cpe.' in n or settings_ndim(model, n) <= 1
        assert s['weight_decay'] == (0. if exempt else base_wd), n
    assert any(s['weight_decay'] == 0. for n, s in settings.items() if '.cpe.weight' in n)


def settings_ndim(model, name):
    return dict(model.named_parameters())[name].ndim


def test_layer_wise_default_gives_each_block_its_own_id(tiny_arch):
    model = torch.nn.Module()
    model.backbone = PaleTransformer(tiny_arch, frozen_stages=0)  # stem frozen
    model.head = torch.nn.Linear(4, 4)
    cfg = dict(constructor='PaleLayerDecayOptimizerConstructor',
               optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
               paramwise_cfg=dict(decay_rate=0.5))
    settings = optimizer_settings_of_each_parameter(model, cfg)
    assert not any(n.startswith('backbone.stem.') for n in settings)  # frozen: left out
    blocks = sum(tiny_arch['depths'])  # 5: ids 1..5, top 6
    for n, s in settings.items():
        m = re.match(r'backbone\.stages\.(\d+)\.blocks\.(\d+)\.', n)
        if m:
            k = sum(tiny_arch['depths'][:int(m.group(1))]) + int(m.group(2)) + 1
            assert math.isclose(s['lr'], 1e-3 * 0.5 ** (blocks + 1 - k)), n
        elif n.startswith('backbone.stages.'):  # a downsampling: its stage's first block
            stage = int(n.split('.')[2])
            k = sum(tiny_arch['depths'][:stage]) + 1
            assert math.isclose(s['lr'], 1e-3 * 0.5 ** (blocks + 1 - k)), n
        else:
            assert math.isclose(s['lr'], 1e-3), n


def test_fewer_layer_ids_spread_blocks_evenly(tiny_arch):
    ids = PaleLayerIds(PaleTransformer(dict(embed_dims=16, depths=(2, 2, 6, 2),
                                            num_heads=(2, 2, 4, 4))), 'layer_wise', 3)
    order = [ids(f'stages.{i}.blocks.{j}.cpe.weight') for i, d in enumerate((2, 2, 6, 2))
             for j in range(d)]
    assert order == [1] * 4 + [2] * 4 + [3] * 4
    assert ids('stem.proj.weight') == 0 and ids('norm3.norm.weight') == 4
    assert ids('stages.2.downsample.proj.weight') == ids('stages.2.blocks.0.cpe.weight')


def test_mmpretrain_layer_decay_constructor_reads_the_models_map(tiny_arch):
    """mmpretrain's own LearningRateDecayOptimWrapperConstructor, with nothing Pale-specific
    in the config, gives every parameter of a Pale classifier the lr that Pale's
    constructor gives it (through PaleTransformer.get_layer_depth)."""
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS
    classifier = dict(type='ImageClassifier',
                      backbone=dict(type='PaleTransformer', arch=tiny_arch, out_indices=(3, )),
                      neck=dict(type='GlobalAveragePooling'),
                      head=dict(type='LinearClsHead', num_classes=10, in_channels=128))
    optimizer = dict(type='AdamW', lr=1e-3, weight_decay=0.05)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(classifier)
        theirs = optimizer_settings_of_each_parameter(model, dict(
            constructor='LearningRateDecayOptimWrapperConstructor', optimizer=optimizer,
            paramwise_cfg=dict(layer_decay_rate=0.5)))
        ours = optimizer_settings_of_each_parameter(model, dict(
            constructor='PaleLayerDecayOptimizerConstructor', optimizer=optimizer,
            paramwise_cfg=dict(decay_rate=0.5)))
    assert set(theirs) == set(ours) == {n for n, _ in model.named_parameters()}
    for name in ours:
        assert math.isclose(theirs[name]['lr'], ours[name]['lr']), name
    blocks = sum(tiny_arch['depths'])
    assert math.isclose(theirs['backbone.stem.proj.weight']['lr'], 1e-3 * 0.5 ** (blocks + 1))
    assert math.isclose(theirs['head.fc.weight']['lr'], 1e-3)


@pytest.mark.parametrize('paramwise, match', [
    (dict(decay_rate=0.9, custom_keys={'norm': dict(decay_mult=0.)}),
     r'takes decay_rate, decay_type, num_layers; custom_keys would be ignored'),
    (dict(decay_rate=1.5), r'decay_rate must be a number in \(0, 1\], got 1\.5'),
    (dict(decay_rate=0.9, decay_type='block_wise'), r"decay_type must be one of .*'block_wise'"),
    (dict(decay_rate=0.9, num_layers=40), r'num_layers=40 is more than the 5 blocks'),
])
def test_bad_settings_are_named(tiny_arch, paramwise, match):
    model = torch.nn.Module()
    model.backbone = PaleTransformer(tiny_arch)
    cfg = dict(constructor='PaleLayerDecayOptimizerConstructor',
               optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05), paramwise_cfg=paramwise)
    with pytest.raises(LayerDecayConfigError, match=match):
        optimizer_settings_of_each_parameter(model, cfg)


def test_other_backbones_are_sent_to_the_libraries_constructor():
    model = torch.nn.Module()
    model.backbone = torch.nn.Conv2d(3, 4, 3)
    cfg = dict(constructor='PaleLayerDecayOptimizerConstructor',
               optimizer=dict(type='AdamW', lr=1e-3), paramwise_cfg=dict(decay_rate=0.9))
    with pytest.raises(LayerDecayConfigError, match=r'no PaleTransformer backbone .*Conv2d'):
        optimizer_settings_of_each_parameter(model, cfg)


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg', 'mmpretrain'])
def test_registered_for_each_library(scope):
    import importlib

    from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
    registry = importlib.import_module(f'{scope}.registry').OPTIM_WRAPPER_CONSTRUCTORS
    assert registry.get('PaleLayerDecayOptimizerConstructor') is \
        OPTIM_WRAPPER_CONSTRUCTORS.get('PaleLayerDecayOptimizerConstructor') is not None


@pytest.mark.parametrize('config', ['configs/mask_rcnn/pale_t_coco_1x.py',
                                    'configs/upernet/pale_t_ade20k.py'])
def test_commented_alternative_in_pale_configs(config, tmp_path):
    """The layer-decay snippet commented in the configs works as written."""
    import os.path as osp

    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    text = open(osp.join(root, config)).read()
    block = re.search(r'inherits this one:\n((?:#   .*\n)+)', text).group(1)
    snippet = ''.join(line[4:] + '\n' for line in block.splitlines())
    derived = tmp_path / 'layer_decay.py'
    derived.write_text(f'_base_ = [{osp.join(root, config)!r}]\n{snippet}'
                       'model = dict(backbone=dict(init_cfg=None))\n')
    cfg = Config.fromfile(str(derived))
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    settings = optimizer_settings_of_each_parameter(model, cfg.optim_wrapper)
    lr = cfg.optim_wrapper.optimizer.lr
    assert math.isclose(settings['backbone.stem.proj.weight']['lr'], lr * 0.9 ** 23)
    assert math.isclose(settings['backbone.stages.3.blocks.1.mlp.fc1.weight']['lr'], lr * 0.9)
    assert settings['backbone.stages.3.blocks.1.norm1.norm.weight']['weight_decay'] == 0.
    assert settings['backbone.stages.3.blocks.1.mlp.fc1.weight']['weight_decay'] > 0.


def test_the_model_names_its_norms_and_position_encodings(tiny_arch):
    """PaleTransformer.parameter_kinds: every parameter once; each block's cpe (weight and
    bias) is 'position', the norm layers (LayerNorm, the projections' BatchNorm) 'norm'; the
    layer-decay constructor reads it (the
    cpe weights, 4-D, get no weight decay only through it)."""
    from mmengine.optim import build_optim_wrapper
    model = PaleTransformer(tiny_arch, drop_path_rate=0.)
    kinds = model.parameter_kinds()
    assert set(kinds) == {name for name, _ in model.named_parameters()}
    blocks = sum(len(stage.blocks) for stage in model.stages)
    position = sorted(n for n, k in kinds.items() if k == 'position')
    assert len(position) == 2 * blocks and all(re.search(r'\.cpe\.(weight|bias)$', n)
                                               for n in position)
    norms = (torch.nn.LayerNorm, torch.nn.BatchNorm2d)
    assert all(isinstance(model.get_submodule(n.rsplit('.', 1)[0]), norms)
               for n, k in kinds.items() if k == 'norm')
    assert {n for n, k in kinds.items() if k == 'norm'} == {
        f'{m}.{p}' for m, mod in model.named_modules() if isinstance(mod, norms)
        for p, _ in mod.named_parameters(recurse=False)}
    wrapper = build_optim_wrapper(model, dict(
        optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
        constructor='PaleLayerDecayOptimizerConstructor',
        paramwise_cfg=dict(decay_rate=0.9)))
    decay = {id(p): g['weight_decay'] for g in wrapper.optimizer.param_groups
             for p in g['params']}
    params = dict(model.named_parameters())
    assert all(decay[id(params[n])] == 0. for n in position)
    assert any(decay[id(p)] > 0 for n, p in params.items() if p.ndim == 4 and n not in position)
