"""tools/swap_backbone.py and pale_mm.swap on mmdet's and mmseg's own installed configs.

For each architecture: the rewrite with Pale-T's real channels (out_indices, the neck's and
heads' in_channels / in_index, RGB ImageNet statistics, no segmentor-level pretrained,
custom_keys for Pale's parameters), then the same swap with a tiny Pale builds, takes one
training step on a 64x96 image (finite loss, a gradient for every trainable backbone
parameter with drop_path_rate=0) and predicts once."""
import math

import numpy as np
import pytest
import torch

import pale_mm  # noqa: F401
from pale_mm.swap import SwapError, _plain, apply_swap, resolve_config, swap_backbone

TINY = dict(embed_dims=16, depths=[1, 1, 2, 1], num_heads=[2, 2, 4, 4])
TINY_DIMS = [16, 32, 64, 128]
H, W = 64, 96
RGB = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True)

# config -> what the swap to Pale-T (channels 64, 128, 256, 512) must set
CASES = {
    'mmdet::swin/retinanet_swin-t-p4-w7_fpn_1x_coco.py': dict(
        out_indices=(1, 2, 3), neck=dict(in_channels=[128, 256, 512])),
    'mmdet::cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py': dict(
        out_indices=(0, 1, 2, 3), neck=dict(in_channels=[64, 128, 256, 512])),
    'mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py': dict(  # FPN start_level=1
        out_indices=(1, 2, 3), neck=dict(in_channels=[128, 256, 512], start_level=0)),
    'mmdet::dino/dino-5scale_swin-l_8xb2-12e_coco.py': dict(
        out_indices=(0, 1, 2, 3), neck=dict(in_channels=[64, 128, 256, 512])),
    'mmdet::mask2former/mask2former_swin-t-p4-w7-224_8xb2-lsj-50e_coco.py': dict(
        out_indices=(0, 1, 2, 3), panoptic_head=dict(in_channels=[64, 128, 256, 512])),
    'mmseg::mask2former/mask2former_swin-t_8xb2-160k_ade20k-512x512.py': dict(
        out_indices=(0, 1, 2, 3), decode_head=dict(in_channels=[64, 128, 256, 512])),
    'mmseg::segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py': dict(
        out_indices=(0, 1, 2, 3),
        decode_head=dict(in_channels=[64, 128, 256, 512], in_index=[0, 1, 2, 3])),
    'mmseg::deeplabv3plus/deeplabv3plus_r50-d8_4xb4-80k_ade20k-512x512.py': dict(
        # stage 1 is read by nothing: the ASPP reads stage 3 (stride 32 for Pale, 8 for the
        # dilated ResNet: dilations / 4), the skip stage 0, the auxiliary head stage 2
        out_indices=(0, 2, 3), pretrained=None,
        decode_head=dict(in_channels=512, in_index=2, c1_in_channels=64,
                         dilations=(1, 3, 6, 9)),
        auxiliary_head=dict(in_channels=256, in_index=1)),
    'mmseg::knet/knet-s3_swin-t_upernet_8xb2-adamw-80k_ade20k-512x512.py': dict(
        out_indices=(0, 1, 2, 3),
        decode_head=dict(kernel_generate_head=dict(in_channels=[64, 128, 256, 512],
                                                   in_index=[0, 1, 2, 3])),
        auxiliary_head=dict(in_channels=256, in_index=2)),
}
# rewritten only (no training step here): heads that read some outputs, caffe statistics
REWRITE_ONLY = {
    'mmseg::segnext/segnext_mscan-t_1xb16-adamw-160k_ade20k-512x512.py': dict(
        out_indices=(1, 2, 3), decode_head=dict(in_channels=[128, 256, 512],
                                                in_index=[0, 1, 2])),
    'mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py': dict(
        out_indices=(1, 2, 3), neck=dict(in_channels=[128, 256, 512])),
    'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py': dict(
        out_indices=(0, 1, 2, 3),
        decode_head=dict(in_channels=[64, 128, 256, 512], in_index=[0, 1, 2, 3]),
        auxiliary_head=dict(in_channels=256, in_index=2)),
}


def _load(config):
    from mmengine.config import Config
    return Config.fromfile(resolve_config(config))


@pytest.mark.parametrize('config', list(CASES) + list(REWRITE_ONLY))
def test_swap_sets_what_follows_from_pale(config):
    expected = {**CASES, **REWRITE_ONLY}[config]
    cfg = _load(config)
    swap = apply_swap(cfg, arch='tiny')
    model = cfg.model
    assert model.backbone.type == 'PaleTransformer' and model.backbone.arch == 'tiny'
    assert tuple(model.backbone.out_indices) == expected['out_indices']
    assert model.backbone.init_cfg is None
    for key, values in expected.items():
        if key in ('out_indices', 'pretrained'):
            continue
        node = model[key]
        for k, v in values.items():
            if isinstance(v, dict):
                assert {kk: _plain(node[k][kk]) for kk in v} == _plain(v), (key, k)
            else:
                assert _plain(node[k]) == _plain(v), (key, k)
    if 'pretrained' in expected:
        assert model.pretrained is None
    pre = model.data_preprocessor
    assert {k: _plain(pre[k]) for k in RGB} == RGB
    assert 'pale_mm' in cfg.custom_imports['imports']
    assert swap.changes[0].startswith('model.backbone: ')


def _shrink_fixed_padding(cfg):
    """The images here are 64x96; the configs pad to a fixed size (mmseg's crop size,
    Mask2Former's 1024 LSJ pad) because their pipelines crop to it: pad to the image size."""
    pre = cfg.model.data_preprocessor
    if pre.get('size'):
        pre.size = (H, W)
    for aug in pre.get('batch_augments') or []:
        if 'size' in aug:
            aug.size = (H, W)


def _fewer_proposals(cfg):
    """Two-stage detectors sample 512 RoIs from 2000 proposals per stage by default; a
    64x96 image is served as well by 64 from 100 (the backbone's part is the same)."""
    def shrink(node):
        if isinstance(node, dict):
            for key, cap in (('nms_pre', 300), ('max_per_img', 100), ('num', 64)):
                if isinstance(node.get(key), int) and node[key] > cap:
                    node[key] = cap
            for v in node.values():
                shrink(v)
        elif isinstance(node, (list, tuple)):
            for v in node:
                shrink(v)
    for key in ('train_cfg', 'test_cfg'):
        shrink(cfg.model.get(key))
    if cfg.model.get('num_queries', 0) > 100:  # DINO's 900 queries pick among 512 tokens
        cfg.model.num_queries = 100


def _det_samples(training, masks):
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    sample = DetDataSample(metainfo=dict(img_shape=(H, W), ori_shape=(H, W), pad_shape=(H, W),
                                         scale_factor=(1., 1.), img_id=0))
    if training:
        boxes = torch.tensor([[8., 6., 40., 44.], [36., 20., 90., 60.]])
        gt = InstanceData(bboxes=boxes, labels=torch.tensor([0, 3]))
        if masks:
            m = np.zeros((2, H, W), np.uint8)
            for i, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
                m[i, y1:y2, x1:x2] = 1
            gt.masks = BitmapMasks(m, H, W)
        sample.gt_instances = gt
    return sample


def _seg_samples(training):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    sample = SegDataSample(metainfo=dict(img_shape=(H, W), ori_shape=(H, W), pad_shape=(H, W)))
    if training:
        label = torch.zeros(1, H, W, dtype=torch.long)
        label[:, 10:40, 20:70] = 3
        label[:, 40:, :30] = 7
        sample.gt_sem_seg = PixelData(data=label)
    return sample


def _batch(scope, model_cfg, training):
    """One image; two for training a segmentor (the heads' image-pooling BatchNorms need
    more than one value per channel)."""
    torch.manual_seed(0)
    n = 2 if training and scope == 'mmseg' else 1
    images = [torch.randint(0, 256, (3, H, W), dtype=torch.uint8) for _ in range(n)]
    if scope == 'mmdet':
        masks = 'mask' in str(model_cfg.get('roi_head', {})) or 'panoptic_head' in model_cfg
        samples = [_det_samples(training, masks) for _ in range(n)]
    else:
        samples = [_seg_samples(training) for _ in range(n)]
    return dict(inputs=images, data_samples=samples)


@pytest.mark.slow  # builds and trains nine models
@pytest.mark.parametrize('config', list(CASES))
def test_swapped_model_trains_one_step_and_predicts(config, one_torch_thread):
    from mmengine.registry import MODELS, init_default_scope
    cfg = _load(config)
    apply_swap(cfg, arch=TINY)
    cfg.model.backbone.drop_path_rate = 0.
    _shrink_fixed_padding(cfg)
    _fewer_proposals(cfg)
    scope = cfg.default_scope
    init_default_scope(scope)
    model = MODELS.build(cfg.model)
    model.init_weights()
    assert type(model.backbone).__name__ == 'PaleTransformer'

    model.train()
    data = model.data_preprocessor(_batch(scope, cfg.model, True), True)
    loss, _ = model.parse_losses(model(**data, mode='loss'))
    assert math.isfinite(loss.item())
    loss.backward()
    no_grad = [n for n, p in model.backbone.named_parameters()
               if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not no_grad, no_grad

    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(_batch(scope, cfg.model, False), False)
        results = model(**data, mode='predict')
    assert len(results) == 1
    predicted = results[0].pred_instances.labels if scope == 'mmdet' else \
        results[0].pred_sem_seg.data
    assert predicted.dtype in (torch.int64, torch.int32) and (
        scope == 'mmdet' or tuple(predicted.shape[-2:]) == (H, W))


def test_mask2former_norm_and_position_keys_move_to_pale():
    """mmdet's Mask2Former gives Swin's norms and position tables lr x0.1 and no weight
    decay through keys named after Swin's parameters; after the swap Pale's norms (its
    LayerNorms and Q/K/V BatchNorms) and its position encodings get exactly those settings,
    every other backbone parameter the 'backbone' key's."""
    from conftest import optimizer_settings_of_each_parameter
    from mmengine.registry import MODELS, init_default_scope
    cfg = _load('mmdet::mask2former/mask2former_swin-t-p4-w7-224_8xb2-lsj-50e_coco.py')
    keys = cfg.optim_wrapper.paramwise_cfg.custom_keys
    assert 'backbone.stages.2.blocks.5.norm' in keys  # Swin's names
    swap = apply_swap(cfg, arch=TINY)
    new_keys = cfg.optim_wrapper.paramwise_cfg.custom_keys
    assert not any(k.startswith('backbone.patch_embed') or k == 'relative_position_bias_table'
                   for k in new_keys)
    assert {'query_embed', 'query_feat', 'level_embed', 'backbone'} <= set(new_keys)
    assert any('custom_keys' in line for line in swap.changes)
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    settings = optimizer_settings_of_each_parameter(model, cfg.optim_wrapper)
    base_lr, base_wd = cfg.optim_wrapper.optimizer.lr, cfg.optim_wrapper.optimizer.weight_decay
    norm_types = (torch.nn.LayerNorm, torch.nn.modules.batchnorm._BatchNorm)
    norms = {f'backbone.{m}.{p}' for m, mod in model.backbone.named_modules()
             if isinstance(mod, norm_types) for p, _ in mod.named_parameters(recurse=False)}
    assert len(norms) > 20
    for name, s in settings.items():
        if not name.startswith('backbone.'):
            continue
        exempt = name in norms or '.cpe.' in name
        assert math.isclose(s['lr'], base_lr * 0.1), name
        assert s['weight_decay'] == (0. if exempt else base_wd), name


def test_tool_writes_a_config_that_inherits_and_prints_changes(tmp_path, capsys):
    from mmengine.config import Config

    from det_common import tool
    config = 'mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py'
    out = tmp_path / 'fcos_pale_t.py'
    tool('swap_backbone').main([config, '--arch', 'small', '--pretrained',
                                'https://example.org/pale_s_in1k.pth', '-o', str(out)])
    printed = capsys.readouterr().out
    assert 'model.neck (FPN): in_channels=[192, 384, 768], start_level=0' in printed
    assert 'model.data_preprocessor: mean [102.9801, 115.9465, 122.7717]' in printed
    text = out.read_text()
    assert "_base_ = ['mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py']" in text
    written = Config.fromfile(str(out))
    expected = _load(config)
    apply_swap(expected, arch='small', pretrained='https://example.org/pale_s_in1k.pth')
    # (a base named mmdet::... tags the model with _scope_='mmdet')
    assert {**_plain(written.model), '_scope_': None} == {**_plain(expected.model),
                                                          '_scope_': None}
    assert written.model.backbone.init_cfg.checkpoint == 'https://example.org/pale_s_in1k.pth'
    assert [f.name for f in tmp_path.iterdir()] == ['fcos_pale_t.py']


def test_tool_refuses_what_it_cannot_map_and_writes_nothing(tmp_path):
    from det_common import tool
    base = tmp_path / 'odd_neck.py'
    base.write_text("_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py']\n"
                    "model = dict(neck=dict(_delete_=True, type='MyNeck', in_channels=[1, 2]))\n")
    out = tmp_path / 'out.py'
    with pytest.raises(SystemExit) as e:
        tool('swap_backbone').main([str(base), '-o', str(out)])
    assert str(e.value).startswith('swap_backbone.py: error: model.neck: does not know which '
                                   'backbone outputs MyNeck reads; set its in_channels')
    assert sorted(f.name for f in tmp_path.iterdir()) == ['odd_neck.py']


@pytest.mark.parametrize('edit, match', [
    (dict(backbone=dict(_delete_=True, type='VisionTransformer', out_indices=(2, 5, 8))),
     r'model\.backbone: cannot tell which resolutions the outputs of VisionTransformer'),
    (dict(neck=dict(type='FPN', in_channels=[256, 512, 1024, 2048], start_level=0,
                    end_level=2, num_outs=3)),
     r'nothing reads Pale stage 3'),
])
def test_unmappable_backbones_are_refused(edit, match):
    from mmengine.config import Config
    cfg = _load('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py')
    cfg.merge_from_dict(dict(model=edit))
    with pytest.raises(SwapError, match=match):
        swap_backbone(cfg, 'tiny')
    assert isinstance(cfg, Config)


def test_other_backbone_keys_in_custom_keys_are_refused():
    cfg = _load('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py')
    cfg.optim_wrapper.paramwise_cfg = dict(custom_keys={'backbone.layer1': dict(lr_mult=0.)})
    with pytest.raises(SwapError, match=r"custom_keys \['backbone\.layer1'\] name parameters "
                                        'of the old backbone'):
        swap_backbone(cfg, 'tiny')


PURE_PYTHON_RETINANET = """from mmdet.models import FPN, DetDataPreprocessor, RetinaHead, RetinaNet
from mmdet.models.backbones import ResNet

model = dict(
    type=RetinaNet,
    data_preprocessor=dict(type=DetDataPreprocessor, mean=[103.53, 116.28, 123.675],
                           std=[1.0, 1.0, 1.0], bgr_to_rgb=False, pad_size_divisor=32),
    backbone=dict(type=ResNet, depth=50, out_indices=(0, 1, 2, 3), frozen_stages=1),
    neck=dict(type=FPN, in_channels=[256, 512, 1024, 2048], out_channels=256, start_level=1,
              add_extra_convs='on_input', num_outs=5),
    bbox_head=dict(type=RetinaHead, num_classes=80, in_channels=256, feat_channels=256))
"""


def test_pure_python_config_is_swapped_in_python_and_refused_by_the_tool(tmp_path):
    """A pure-Python config (classes as types) cannot be inherited by an old-style one: the
    tool says so and names the Python route, which builds."""
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    from det_common import tool
    path = tmp_path / 'retinanet_pure.py'
    path.write_text(PURE_PYTHON_RETINANET)
    with pytest.raises(SystemExit, match=r'is a pure-Python config .*apply_swap'):
        tool('swap_backbone').main([str(path), '-o', str(tmp_path / 'out.py')])
    assert not (tmp_path / 'out.py').exists()
    cfg = Config.fromfile(str(path))
    apply_swap(cfg, arch=TINY)
    assert _plain(cfg.model.neck.in_channels) == TINY_DIMS[1:]
    assert cfg.model.neck.start_level == 0 and tuple(cfg.model.backbone.out_indices) == (1, 2, 3)
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    feats = model.extract_feat(torch.zeros(1, 3, H, W))
    assert [f.shape[1] for f in feats] == [256] * 5


def test_out_indices_place_an_unknown_backbone():
    cfg = _load('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py')
    cfg.model.backbone = dict(type='MyBackbone')
    with pytest.raises(SwapError, match=r'--out-indices'):
        swap_backbone(cfg, 'tiny')
    swap = swap_backbone(cfg, 'tiny', out_indices=[0, 1, 2, 3])
    assert swap.overrides['model']['backbone']['out_indices'] == (1, 2, 3)  # FPN start_level 1
    assert swap.overrides['model']['neck'] == dict(in_channels=[128, 256, 512], start_level=0)
