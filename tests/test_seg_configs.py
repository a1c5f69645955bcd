"""configs/upernet: the paper's ADE20K recipe (UperNet + auxiliary FCN, 160k iterations,
512x512 crops, batch 16, multi-scale test 0.5-1.75), models that build and fit their heads,
and the clear, immediate messages for a missing dataset or ImageNet checkpoint."""
import os.path as osp
import sys
import time

import pytest
import torch

from pale_mm.synthetic.ade import make_ade

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, 'tools'))
import test as test_tool  # noqa: E402
import train as train_tool  # noqa: E402

# end to end through the tools: left out of `make test-quick`
pytestmark = pytest.mark.slow

CONFIGS = {
    'tiny': ('configs/upernet/pale_t_ade20k.py', 'checkpoints/pale_t_in1k.pth', 64),
    'small': ('configs/upernet/pale_s_ade20k.py', 'checkpoints/pale_s_in1k.pth', 96),
    'base': ('configs/upernet/pale_b_ade20k.py', 'checkpoints/pale_b_in1k.pth', 128),
}


def _load(arch, options=None):
    from pale_mm.launch.run_config import load_config
    return load_config(osp.join(ROOT, CONFIGS[arch][0]), options)


@pytest.fixture(scope='module')
def ade(tmp_path_factory):
    return make_ade(str(tmp_path_factory.mktemp('ade')), num_train=2, num_val=1,
                    image_size=(48, 64), seed=0, num_classes=3)


@pytest.mark.parametrize('arch', list(CONFIGS))
def test_paper_recipe(arch):
    cfg = _load(arch)
    _, ckpt, c = CONFIGS[arch]
    dims = [c, 2 * c, 4 * c, 8 * c]
    assert cfg.default_scope == 'mmseg'
    m = cfg.model
    assert m.type == 'EncoderDecoder'
    assert m.backbone.type == 'PaleTransformer' and m.backbone.arch == arch
    assert m.backbone.init_cfg == dict(type='Pretrained', checkpoint=ckpt)
    assert tuple(m.backbone.out_indices) == (0, 1, 2, 3)
    assert 'embed_dims' not in m.backbone and 'window_size' not in m.backbone  # no Swin leftovers
    # UperNet, 512 channels, on all four stages; auxiliary FCN on stage 3, weight 0.4
    assert m.decode_head.type == 'UPerHead' and m.decode_head.channels == 512
    assert list(m.decode_head.in_channels) == dims and list(m.decode_head.in_index) == [0, 1, 2, 3]
    assert m.auxiliary_head.type == 'FCNHead' and m.auxiliary_head.in_index == 2
    assert m.auxiliary_head.in_channels == dims[2]
    assert m.auxiliary_head.loss_decode.loss_weight == 0.4
    assert m.decode_head.num_classes == m.auxiliary_head.num_classes == 150
    # 160k iterations, 512x512 crops, 2 images x 8 GPUs = 16
    assert cfg.train_cfg.max_iters == 160000
    assert tuple(m.data_preprocessor.size) == (512, 512)
    crop = [t for t in cfg.train_dataloader.dataset.pipeline if t.type == 'RandomCrop']
    assert tuple(crop[0].crop_size) == (512, 512)
    assert cfg.train_dataloader.batch_size * 8 == cfg.auto_scale_lr.base_batch_size == 16
    # Swin/CSWin optimiser: AdamW 6e-5, wd 0.01, warm-up 1500 then poly (power 1)
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.weight_decay) == ('AdamW', 6e-5, 0.01)
    warm, poly = cfg.param_scheduler
    assert (warm.type, warm.begin, warm.end) == ('LinearLR', 0, 1500)
    assert (poly.type, poly.power, poly.begin, poly.end) == ('PolyLR', 1.0, 1500, 160000)
    # ADE20K with mmseg's convention, single-scale test at 2048x512
    ds = cfg.test_dataloader.dataset
    assert ds.type == 'ADE20KDataset' and ds.data_root == 'data/ade/ADEChallengeData2016'
    assert ds.pipeline[1].type == 'Resize' and tuple(ds.pipeline[1].scale) == (2048, 512)
    # multi-scale + flip test: ratios 0.5 .. 1.75 of the single-scale size
    assert cfg.tta_model.type == 'SegTTAModel'
    aug = cfg.tta_pipeline[1]
    assert aug.type == 'TestTimeAug'
    assert tuple(aug.transforms[0][0].scale) == (2048, 512)
    assert [t.scale_factor for t in aug.transforms[1]] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    assert [t.prob for t in aug.transforms[2]] == [0., 1.]


@pytest.mark.parametrize('arch', list(CONFIGS))
def test_model_builds_and_heads_fit(arch):
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    from pale_mm import ARCH_SETTINGS
    cfg = _load(arch)
    c = CONFIGS[arch][2]
    cfg.model.backbone.init_cfg = None
    init_default_scope('mmseg')
    model = MODELS.build(cfg.model).eval()
    assert model.backbone.arch == ARCH_SETTINGS[arch]
    n_backbone = sum(p.numel() for p in model.backbone.parameters()) / 1e6
    assert n_backbone == pytest.approx(
        {'tiny': 21.24, 'small': 47.54, 'base': 84.30}[arch], abs=0.01)
    model.to('meta')  # shapes only: the forward below does no arithmetic
    with torch.no_grad():
        feats = model.backbone(torch.empty(1, 3, 64, 96, device='meta'))
        logits = model.decode_head(feats)
        aux = model.auxiliary_head(feats)
    assert [tuple(f.shape) for f in feats] == [
        (1, c, 16, 24), (1, 2 * c, 8, 12), (1, 4 * c, 4, 6), (1, 8 * c, 2, 3)]
    assert tuple(logits.shape) == (1, 150, 16, 24)  # stride 4
    assert tuple(aux.shape) == (1, 150, 4, 6)  # stage 3, stride 16


def test_no_weight_decay_on_norms_and_position_encodings():
    from conftest import optimizer_settings_of_each_parameter
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    cfg = _load('tiny')
    cfg.model.backbone.init_cfg = None
    cfg.model.backbone.arch = dict(embed_dims=16, depths=[1, 1, 1, 1], num_heads=[2, 2, 2, 2])
    cfg.model.decode_head.update(in_channels=[16, 32, 64, 128], channels=16)
    cfg.model.auxiliary_head.update(in_channels=64, channels=16)
    init_default_scope('mmseg')
    model = MODELS.build(cfg.model)
    decay = {n: g['weight_decay'] for n, g in
             optimizer_settings_of_each_parameter(model, cfg.optim_wrapper).items()}
    assert decay['backbone.stages.0.blocks.0.cpe.weight'] == 0
    assert decay['backbone.stages.1.blocks.0.norm1.norm.weight'] == 0
    assert decay['backbone.norm3.norm.bias'] == 0
    assert decay['backbone.stages.0.blocks.0.attn.proj.weight'] == 0.01
    assert decay['backbone.stages.0.blocks.0.mlp.fc1.weight'] == 0.01
    assert decay['decode_head.conv_seg.weight'] == 0.01


def test_tta_views_follow_the_paper_protocol(ade):
    """--tta: 6 scales x 2 flips of each image, scaled from the 2048x512 test size."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS

    from pale_mm.launch.run_config import enable_tta
    cfg = _load('tiny', {'test_dataloader.dataset.data_root': ade['root']})
    enable_tta(cfg)
    assert cfg.model.type == 'SegTTAModel' and cfg.model.module.type == 'EncoderDecoder'
    init_default_scope('mmseg')
    sample = DATASETS.build(cfg.test_dataloader.dataset)[0]
    assert len(sample['inputs']) == 12
    shapes = [tuple(x.shape[1:]) for x in sample['inputs']]
    # a 48x64 image: 2048x512 gives 512x683, then ratios 0.5..1.75
    expect = [(int(512 * r + .5), int(683 * r + .5))
              for r in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)]
    assert sorted(set(shapes)) == sorted(expect)
    flips = [ds.metainfo['flip'] for ds in sample['data_samples']]
    assert sorted(flips) == [False] * 6 + [True] * 6
    # the ground truth stays at the original size (the prediction is resized back to it)
    for ds in sample['data_samples']:
        assert tuple(ds.gt_sem_seg.shape) == (48, 64)
        assert ds.metainfo['ori_shape'] == (48, 64)


def _exit_message(main, argv):
    start = time.time()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert time.time() - start < 20  # at once: before any model is built
    return str(exc.value.code)


@pytest.mark.parametrize('arch', list(CONFIGS))
def test_missing_pretrained_checkpoint(arch, ade, tmp_path, monkeypatch):
    """Run from a directory without checkpoints/: training stops before anything is built,
    naming the absolute path and the three ways round it."""
    monkeypatch.chdir(tmp_path)
    opts = [f'{k}.dataset.data_root={ade["root"]}'
            for k in ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    msg = _exit_message(train_tool.main,
                        [osp.join(ROOT, CONFIGS[arch][0]), '--cfg-options'] + opts)
    expect = str(tmp_path / CONFIGS[arch][1])
    assert msg.startswith('train.py: error: pretrained checkpoint not found: ' + expect)
    assert '(model.backbone.init_cfg)' in msg
    assert '--cfg-options model.backbone.init_cfg.checkpoint=/path/to/ckpt.pth' in msg
    assert '--cfg-options model.backbone.init_cfg=None' in msg
    assert not (tmp_path / 'work_dirs').exists()


def test_missing_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = osp.join(ROOT, CONFIGS['tiny'][0])
    msg = _exit_message(train_tool.main, [config])
    assert msg.startswith('train.py: error: dataset not found: data/ade/ADEChallengeData2016 '
                          '(train_dataloader.dataset.data_root)')
    assert 'images/{training,validation}/*.jpg' in msg
    assert '--cfg-options train_dataloader.dataset.data_root=/path/to/data' in msg
    # the validation split is checked too, and test.py checks the test split
    root = tmp_path / 'ade'
    (root / 'images' / 'training').mkdir(parents=True)
    (root / 'annotations' / 'training').mkdir(parents=True)
    msg = _exit_message(train_tool.main, [
        config, '--cfg-options', f'train_dataloader.dataset.data_root={root}',
        f'val_dataloader.dataset.data_root={root}'])
    assert f'dataset not found: {root}/images/validation' in msg
    assert '(val_dataloader.dataset.data_prefix.img_path)' in msg
    ckpt = tmp_path / 'model.pth'
    torch.save({'state_dict': {}}, ckpt)
    msg = _exit_message(test_tool.main, [config, str(ckpt), '--tta'])
    assert msg.startswith('test.py: error: dataset not found: data/ade/ADEChallengeData2016 '
                          '(test_dataloader.dataset.data_root)')
    assert not (tmp_path / 'work_dirs').exists()
