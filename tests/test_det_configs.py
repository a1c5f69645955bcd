"""configs/mask_rcnn: the paper's Mask R-CNN settings (and the Swin/CSWin recipe where the
paper is silent), the real Pale-T config training a step through tools/train.py, the
pre-flight checks for a missing ImageNet checkpoint or dataset, and Pale dropped into
mmdet's own Swin Mask R-CNN config."""
import inspect
import math
import os.path as osp

import pytest
import torch

from pale_mm.checkpoint import safe_load
from pale_mm.launch.run_config import load_config
from pale_mm.models import ARCH_SETTINGS, PaleTransformer
from pale_mm.synthetic.coco import cli_cfg_options, mmdet_cfg_options

from det_common import (
    CONFIG_DIR,
    LIGHT_HEADS,
    NO_VAL,
    ROOT,
    coco_data,
    data_options,
    tool,
    train_losses,
)

# end to end through the tools: left out of `make test-quick`
pytestmark = pytest.mark.slow

VARIANTS = {'t': ('tiny', 0.2), 's': ('small', 0.3), 'b': ('base', 0.3)}
CONFIGS = [f'pale_{v}_coco_{s}.py' for v in VARIANTS for s in ('1x', '3x')]
SHORT_SIDES = list(range(480, 801, 32))


def _config(name, options=None):
    return load_config(osp.join(CONFIG_DIR, name), options)


@pytest.mark.parametrize('name', CONFIGS)
def test_config_settings(name):
    cfg = _config(name)
    variant, schedule = name.split('_')[1], name.split('_')[3][:2]
    arch, drop_path = VARIANTS[variant]
    assert cfg.default_scope == 'mmdet' and cfg.model.type == 'MaskRCNN'
    backbone = cfg.model.backbone
    assert backbone.type == 'PaleTransformer' and backbone.arch == arch
    assert backbone.pale_size == 7 and backbone.drop_path_rate == drop_path
    assert set(backbone) - {'type'} <= set(inspect.signature(PaleTransformer).parameters)
    c = ARCH_SETTINGS[arch]['embed_dims']
    assert cfg.model.neck.in_channels == [c, 2 * c, 4 * c, 8 * c]
    assert backbone.init_cfg.type == 'Pretrained'
    assert osp.normpath(backbone.init_cfg.checkpoint) == osp.join(
        ROOT, 'checkpoints', f'pale_{variant}_in1k.pth')
    # Swin/CSWin recipe: AdamW 1e-4, wd 0.05, batch 2 x 8, warm-up 1000 iterations
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.weight_decay) == ('AdamW', 1e-4, 0.05)
    assert cfg.train_dataloader.batch_size == 2 and cfg.auto_scale_lr.base_batch_size == 16
    warmup, steps = cfg.param_scheduler
    assert (warmup.type, warmup.by_epoch, warmup.end) == ('LinearLR', False, 1000)
    epochs, milestones = {'1x': (12, [8, 11]), '3x': (36, [27, 33])}[schedule]
    assert cfg.train_cfg.max_epochs == epochs
    assert (steps.type, steps.milestones, steps.end) == ('MultiStepLR', milestones, epochs)
    assert cfg.test_dataloader.dataset.pipeline[1].scale == (1333, 800)
    assert cfg.test_evaluator.type == 'CocoMetric'
    assert cfg.test_evaluator.metric == ['bbox', 'segm']


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_detector_builds_and_neck_fits_backbone(variant):
    from mmdet.registry import MODELS
    cfg = _config(f'pale_{variant}_coco_1x.py', {'model.backbone.init_cfg': None})
    model = MODELS.build(cfg.model).eval()
    assert isinstance(model.backbone, PaleTransformer)
    assert model.backbone.arch == ARCH_SETTINGS[VARIANTS[variant][0]]
    with torch.no_grad():
        feats = model.extract_feat(torch.zeros(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(1, 256, 64 // s, 96 // s)
                                               for s in (4, 8, 16, 32)] + [(1, 256, 1, 2)]


def test_no_weight_decay_on_norms_and_position_encodings():
    from conftest import optimizer_settings_of_each_parameter
    from mmdet.registry import MODELS
    cfg = _config('pale_t_coco_1x.py', {'model.backbone.init_cfg': None})
    model = MODELS.build(cfg.model)
    groups = optimizer_settings_of_each_parameter(model, cfg.optim_wrapper)
    names = dict(model.named_parameters())
    checked = {'norm': 0, 'bn': 0, 'cpe': 0, 'other': 0}
    for name, p in names.items():
        if '.norm' in name:  # LayerNorms of the blocks, stem, downsamplings, outputs
            kind, want = 'norm', 0.
        elif '.bn.' in name:  # BatchNorm of the Q/K/V separable convolutions
            kind, want = 'bn', 0.
        elif '.cpe.' in name:  # conditional position encoding
            kind, want = 'cpe', 0.
        else:
            kind, want = 'other', 0.05
        assert groups[name]['weight_decay'] == want, name
        checked[kind] += 1
    assert all(checked.values()), checked
    assert all(g['lr'] == 1e-4 for g in groups.values())


def test_3x_schedule_trains_at_shorter_sides_480_to_800(tmp_path_factory):
    """The 3x train pipeline resizes every sample to a shorter side of 480, 512, ..., 800
    (directly or after a random crop); the 1x pipeline always to 800."""
    from mmdet.registry import DATASETS
    info = coco_data(tmp_path_factory)
    sides = {}
    for schedule in ('1x', '3x'):
        cfg = _config(f'pale_t_coco_{schedule}.py', mmdet_cfg_options(info))
        dataset = DATASETS.build(cfg.train_dataloader.dataset)
        sides[schedule] = []
        for i in range(12):
            sample = dataset[i % len(dataset)]
            h, w = sample['inputs'].shape[-2:]
            masks = sample['data_samples'].gt_instances.masks
            assert (masks.height, masks.width) == (h, w)
            sides[schedule].append(min(h, w))
    assert set(sides['1x']) == {800}
    assert set(sides['3x']) <= set(SHORT_SIDES) and len(set(sides['3x'])) > 2, sides


@pytest.mark.parametrize('name', CONFIGS)
def test_missing_imagenet_checkpoint_stops_training_at_once(name, tmp_path_factory, tmp_path):
    info = coco_data(tmp_path_factory)
    variant = name.split('_')[1]
    expected = osp.join(ROOT, 'checkpoints', f'pale_{variant}_in1k.pth')
    argv = [osp.join(CONFIG_DIR, name), '--work-dir', str(tmp_path / 'work'),
            '--cfg-options', *cli_cfg_options(info)]
    if osp.exists(expected):  # the real weights are there: check with an absent file
        expected = str(tmp_path / 'absent.pth')
        argv.append(f'model.backbone.init_cfg.checkpoint={expected}')
    with pytest.raises(SystemExit) as exc:
        tool('train').main(argv)
    msg = str(exc.value.code)
    assert msg.startswith('train.py: error: pretrained checkpoint not found: ' + expected)
    assert '--cfg-options model.backbone.init_cfg=None' in msg
    assert not (tmp_path / 'work').exists()  # stopped before the runner was built


def test_missing_dataset_stops_at_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/coco here
    config = osp.join(CONFIG_DIR, 'pale_t_coco_1x.py')
    with pytest.raises(SystemExit) as exc:
        tool('train').main([config, '--cfg-options', 'model.backbone.init_cfg=None'])
    msg = str(exc.value.code)
    assert msg.startswith('train.py: error: dataset not found: data/coco/')
    assert 'data/coco/annotations/instances_{train,val}2017.json' in msg
    assert '--cfg-options train_dataloader.dataset.data_root=' in msg

    ckpt = tmp_path / 'model.pth'  # a whole checkpoint file: the data is what is missing
    torch.save({'meta': {}, 'state_dict': {}}, ckpt)
    with pytest.raises(SystemExit) as exc:
        tool('test').main([config, str(ckpt)])
    msg = str(exc.value.code)
    assert msg.startswith('test.py: error: dataset not found: data/coco/')
    assert '--cfg-options test_dataloader.dataset.data_root=' in msg
    assert not (tmp_path / 'work_dirs').exists()


def test_evaluator_annotations_are_checked_too(tmp_path_factory, tmp_path, monkeypatch):
    """Data roots moved but CocoMetric still pointing at data/coco: named before the run."""
    info = coco_data(tmp_path_factory)
    monkeypatch.chdir(tmp_path)
    options = [o for o in data_options(info) if '_evaluator.' not in o]
    with pytest.raises(SystemExit) as exc:
        tool('train').main([osp.join(CONFIG_DIR, 'pale_t_coco_1x.py'), '--cfg-options',
                            *options, 'model.backbone.init_cfg=None'])
    msg = str(exc.value.code)
    assert 'annotation file not found: data/coco/annotations/instances_val2017.json' in msg
    assert '--cfg-options val_evaluator.ann_file=' in msg


def test_cfg_options_that_do_not_fit_are_named(tmp_path):
    with pytest.raises(SystemExit) as exc:
        tool('train').main([osp.join(CONFIG_DIR, 'pale_t_coco_1x.py'), '--work-dir',
                            str(tmp_path), '--cfg-options', 'model.backbone.arch.depths=[1]'])
    msg = str(exc.value.code)
    assert msg.startswith('train.py: error: --cfg-options do not fit')
    assert 'arch' in msg


def test_real_pale_t_config_trains_a_step(tmp_path_factory, tmp_path):
    """configs/mask_rcnn/pale_t_coco_1x.py as it is (full Pale-T, FPN and heads, their
    train/test settings), only pointed at the synthetic data, resized to 64x80 to spare the
    CPU, from scratch, one iteration on 2 images through tools/train.py."""
    info = coco_data(tmp_path_factory)
    work_dir = tmp_path / 'work'
    runner = tool('train').main([
        osp.join(CONFIG_DIR, 'pale_t_coco_1x.py'), '--work-dir', str(work_dir),
        '--cfg-options', *data_options(info), 'model.backbone.init_cfg=None',
        'train_dataloader.dataset.pipeline.2.scale=(80,64)',
        'train_dataloader.dataset.indices=2', 'train_cfg.max_epochs=1',
        NO_VAL, 'default_hooks.logger.interval=1',
        'default_hooks.checkpoint.save_optimizer=False'])
    assert tuple(runner.train_dataloader.dataset[0]['inputs'].shape) == (3, 64, 80)
    losses = train_losses(work_dir)
    assert len(losses) == 1 and math.isfinite(losses[0][1]) and losses[0][1] > 0
    state = safe_load(str(work_dir / 'epoch_1.pth'))['state_dict']
    backbone = {k: v for k, v in state.items() if k.startswith('backbone.')}
    reference = PaleTransformer('tiny').state_dict()
    assert {k[len('backbone.'):]: tuple(v.shape) for k, v in backbone.items()} == {
        k: tuple(v.shape) for k, v in reference.items()}
    n_params = sum(v.numel() for k, v in backbone.items() if 'running_' not in k
                   and 'num_batches' not in k)
    assert 21e6 < n_params < 22.5e6  # Pale-T without its classifier (21.8M with it)
    assert state['roi_head.bbox_head.fc_cls.weight'].shape == (3 + 1, 1024)


# The README snippet, with a small arch: Pale-T is arch='tiny', in_channels=[64, 128, 256, 512]
# (trained a step above already), the wiring is the same.
SWIN_WITH_PALE = """_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
custom_imports = dict(imports=['pale_mm'], allow_failed_imports=False)
model = dict(
    backbone=dict(_delete_=True, type='PaleTransformer', arch={arch!r}, drop_path_rate=0.2,
                  init_cfg=dict(type='Pretrained', checkpoint={checkpoint!r})),
    neck=dict(in_channels={in_channels!r}))
"""
SMALL_ARCH = dict(embed_dims=32, depths=[1, 1, 2, 1], num_heads=[2, 2, 4, 4])


def test_pale_in_mmdet_swin_mask_rcnn_config(tmp_path_factory, tmp_path):
    """mmdet's own Swin-T Mask R-CNN config with its backbone replaced by PaleTransformer
    (custom_imports, backbone, neck in_channels): builds, loads an ImageNet-style checkpoint
    into the backbone through init_cfg, trains a step through tools/train.py."""
    info = coco_data(tmp_path_factory)
    # an ImageNet-style checkpoint: 'backbone.' keys plus a classifier head
    pretrained = PaleTransformer(SMALL_ARCH, drop_path_rate=0.)
    pretrained.init_weights()
    state = {f'backbone.{k}': v for k, v in pretrained.state_dict().items()}
    state['head.fc.weight'] = torch.zeros(1000, 256)
    ckpt = tmp_path / 'pale_small_in1k.pth'
    torch.save({'state_dict': state}, str(ckpt))
    config = tmp_path / 'mask-rcnn_pale_fpn_1x_coco.py'
    config.write_text(SWIN_WITH_PALE.format(arch=SMALL_ARCH, checkpoint=str(ckpt),
                                            in_channels=[32, 64, 128, 256]))

    work_dir = tmp_path / 'work'
    runner = tool('train').main([
        str(config), '--work-dir', str(work_dir), '--cfg-options', *data_options(info),
        *LIGHT_HEADS, 'train_dataloader.dataset.indices=2', 'train_cfg.max_epochs=1',
        NO_VAL, 'default_hooks.logger.interval=1',
        'default_hooks.checkpoint.interval=2', 'default_hooks.checkpoint.save_last=False'])
    model = runner.model
    assert type(model).__name__ == 'MaskRCNN' and isinstance(model.backbone, PaleTransformer)
    assert type(model.neck).__name__ == 'FPN' and model.neck.in_channels == [32, 64, 128, 256]
    losses = train_losses(work_dir)
    assert len(losses) == 1 and math.isfinite(losses[0][1])
    # the backbone started from the checkpoint: one AdamW step (lr 1e-7, the start of the
    # warm-up) leaves every weight next to it, while fresh initial weights would differ
    now = model.backbone.state_dict()
    for key in ('stem.proj.weight', 'stages.2.blocks.1.attn.q.pw.weight', 'norm3.norm.bias'):
        assert torch.allclose(now[key], state[f'backbone.{key}'], atol=1e-4), key
    fresh = PaleTransformer(SMALL_ARCH).state_dict()['stem.proj.weight']
    assert not torch.allclose(fresh, state['backbone.stem.proj.weight'], atol=1e-4)
    logs = [p for p in work_dir.rglob('*.log')]
    assert any('PaleTransformer: loaded' in p.read_text() for p in logs)
    assert not list(work_dir.glob('*.pth'))  # checkpoint.interval=2, save_last=False
