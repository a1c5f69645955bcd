"""ImageNet-1K pretraining with mmpretrain (configs/imagenet): the classifier's size and
cost against the paper, the recipe, and the whole path a user takes: tools/train.py on a
small synthetic ImageNet-layout dataset, then its checkpoint loaded, as written, by the
Mask R-CNN and UperNet configs' init_cfg."""
import os.path as osp
import subprocess
import sys

import pytest
import torch

from pale_mm.synthetic.cfg_options import format_cfg_options
from pale_mm.synthetic.imagenet import imagenet_cfg_options, make_imagenet

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, 'tools'))
import train as train_tool  # noqa: E402

# paper: classifier parameters (M) and MACs (G) at 224x224
PAPER = {'t': (21.8, 4.2), 's': (48.3, 9.0), 'b': (85.4, 15.6)}
EPOCHS = 2


# end to end through the tools: left out of `make test-quick`
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures('one_torch_thread')]


def _config(variant, options=None):
    from pale_mm.launch.run_config import load_config
    return load_config(osp.join(ROOT, f'configs/imagenet/pale_{variant}_in1k.py'),
                              options)


@pytest.mark.parametrize('variant', sorted(PAPER))
def test_classifier_params_and_flops_match_paper(variant, get_flops):
    lines = get_flops(f'configs/imagenet/pale_{variant}_in1k.py')
    assert lines['input shape'] == '3x224x224'
    params, gmacs = float(lines['params'].split()[0]), float(lines['MACs'].split()[0])
    paper_params, paper_gmacs = PAPER[variant]
    assert abs(params - paper_params) <= 0.01 * paper_params, lines
    assert abs(gmacs - paper_gmacs) <= 0.03 * paper_gmacs, lines


def test_recipe():
    """300 epochs at 224 (paper); the Swin/DeiT recipe where the paper is silent."""
    cfgs = {v: _config(v) for v in PAPER}
    cfg = cfgs['t']
    assert cfg.default_scope == 'mmpretrain'
    assert cfg.model.type == 'ImageClassifier'
    assert cfg.model.neck.type == 'GlobalAveragePooling'
    assert cfg.model.head.type == 'LinearClsHead' and cfg.model.head.num_classes == 1000
    assert cfg.model.head.loss.label_smooth_val == 0.1
    augments = {a['type']: a['alpha'] for a in cfg.model.train_cfg.augments}
    assert augments == {'Mixup': 0.8, 'CutMix': 1.0}
    assert cfg.train_cfg.max_epochs == 300
    steps = {t['type']: t for t in cfg.train_dataloader.dataset.pipeline}
    assert steps['RandomResizedCrop']['scale'] == 224
    assert steps['RandAugment']['num_policies'] == 2
    assert steps['RandomErasing']['erase_prob'] == 0.25
    test_steps = {t['type']: t for t in cfg.val_dataloader.dataset.pipeline}
    assert test_steps['CenterCrop']['crop_size'] == 224
    opt = cfg.optim_wrapper.optimizer
    assert opt.type == 'AdamW' and opt.lr == 1e-3 and opt.weight_decay == 0.05
    # lr 1e-3 belongs to a total batch of 1024 (8 GPUs x 128), scaled linearly otherwise
    assert cfg.train_dataloader.batch_size * 8 == cfg.auto_scale_lr.base_batch_size == 1024
    warmup, cosine = cfg.param_scheduler
    assert warmup.type == 'LinearLR' and warmup.end == 20 and warmup.by_epoch
    assert cosine.type == 'CosineAnnealingLR' and cosine.begin == 20
    # stochastic depth rises with model size
    dpr = [cfgs[v].model.backbone.drop_path_rate for v in ('t', 's', 'b')]
    assert dpr[0] < dpr[1] < dpr[2]
    for v, arch, width in (('t', 'tiny', 512), ('s', 'small', 768), ('b', 'base', 1024)):
        assert cfgs[v].model.backbone.arch == arch
        assert cfgs[v].model.head.in_channels == width


def test_no_weight_decay_on_norms_biases_and_position_encodings():
    from conftest import optimizer_settings_of_each_parameter
    from mmpretrain.registry import MODELS
    cfg = _config('t', {'model.backbone.arch': dict(_delete_=True, embed_dims=16,
                                                    depths=[1, 1, 1, 1], num_heads=[2, 2, 2, 2]),
                        'model.head.in_channels': 128})
    model = MODELS.build(cfg.model)
    decay = {n: g['weight_decay'] for n, g in
             optimizer_settings_of_each_parameter(model, cfg.optim_wrapper).items()}
    assert decay['backbone.stages.0.blocks.0.cpe.weight'] == 0
    assert decay['backbone.stages.0.blocks.0.norm1.norm.weight'] == 0
    assert decay['backbone.stages.0.blocks.0.attn.q.pw.bias'] == 0
    assert decay['head.fc.bias'] == 0
    assert decay['backbone.stages.0.blocks.0.attn.q.pw.weight'] == 0.05
    assert decay['head.fc.weight'] == 0.05


@pytest.fixture(scope='module')
def classifier_checkpoint(tmp_path_factory):
    """The real Pale-T classifier config trained for EPOCHS epochs (2 iterations each) on a
    synthetic ImageNet-layout dataset through tools/train.py, at 64x64 crops."""
    info = make_imagenet(str(tmp_path_factory.mktemp('imagenet')), num_classes=5,
                         num_train=2, num_val=1, image_size=(72, 72), seed=0)
    work_dir = str(tmp_path_factory.mktemp('cls_work'))
    options = format_cfg_options(imagenet_cfg_options(info)) + [
        'train_dataloader.batch_size=5', 'val_dataloader.batch_size=5',
        f'train_cfg.max_epochs={EPOCHS}', 'param_scheduler.0.end=1',
        'param_scheduler.1.begin=1', 'randomness.seed=0']
    runner = train_tool.main([osp.join(ROOT, 'configs/imagenet/pale_t_in1k.py'),
                              '--work-dir', work_dir, '--cfg-options'] + options)
    assert runner.epoch == EPOCHS and runner.iter == 2 * EPOCHS
    path = osp.join(work_dir, f'epoch_{EPOCHS}.pth')
    assert osp.isfile(path)
    return path


@pytest.mark.parametrize('config', ['configs/mask_rcnn/pale_t_coco_1x.py',
                                    'configs/upernet/pale_t_ade20k.py'])
def test_classification_checkpoint_loads_into_downstream_backbones(classifier_checkpoint,
                                                                   config):
    """The config's own init_cfg (only its path pointed at the new file) loads every weight
    of the classifier's backbone; the only backbone entries it does not set are the output
    norms of stages 0-2, which the classifier has no use for."""
    import importlib

    from pale_mm.checkpoint import safe_load
    from pale_mm.launch.run_config import load_config
    cfg = load_config(osp.join(ROOT, config),
                             {'model.backbone.init_cfg.checkpoint': classifier_checkpoint})
    registry = importlib.import_module(f'{cfg.default_scope}.registry').MODELS
    model = registry.build(cfg.model)
    model.init_weights()
    backbone = model.backbone.state_dict()
    trained = {k[len('backbone.'):]: v for k, v in
               safe_load(classifier_checkpoint)['state_dict'].items()
               if k.startswith('backbone.')}
    assert len(trained) > 800
    assert set(trained) <= set(backbone), set(trained) - set(backbone)  # nothing unexpected
    for k, v in trained.items():
        assert torch.equal(backbone[k], v), k  # every classifier backbone weight arrived
    not_set = sorted(set(backbone) - set(trained))
    assert not_set == [f'norm{i}.norm.{p}' for i in range(3) for p in ('bias', 'weight')]
    # the classifier really trained (its head is not in the backbone)
    assert 'head.fc.weight' in safe_load(classifier_checkpoint)['state_dict']


def test_classification_checkpoint_of_another_size_is_refused(classifier_checkpoint):
    """A Pale-T classification checkpoint in a Pale-S detector: a clear refusal."""
    import importlib

    from pale_mm.launch.run_config import load_config
    cfg = load_config(osp.join(ROOT, 'configs/upernet/pale_s_ade20k.py'),
                             {'model.backbone.init_cfg.checkpoint': classifier_checkpoint})
    model = importlib.import_module('mmseg.registry').MODELS.build(cfg.model)
    with pytest.raises(ValueError, match=r'does not fit this backbone.*same arch'):
        model.backbone.init_weights()


def test_missing_imagenet_data_is_named(tmp_path):
    work_dir = tmp_path / 'work'
    res = subprocess.run([sys.executable, 'tools/train.py', 'configs/imagenet/pale_t_in1k.py',
                          '--work-dir', str(work_dir), '--cfg-options',
                          f'train_dataloader.dataset.data_root={tmp_path}/no_imagenet'],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode != 0
    assert f'dataset not found: {tmp_path}/no_imagenet' in res.stderr
    assert 'data/imagenet/{train,val}/' in res.stderr  # the expected layout
    assert 'train_dataloader.dataset.data_root=' in res.stderr  # the fix
    assert 'Traceback' not in res.stderr
    assert not work_dir.exists()


def test_missing_split_folder_is_named(tmp_path):
    """data_root exists but holds no train/ folder."""
    (tmp_path / 'imagenet').mkdir()
    res = subprocess.run([sys.executable, 'tools/train.py', 'configs/imagenet/pale_t_in1k.py',
                          '--work-dir', str(tmp_path / 'work'), '--cfg-options',
                          f'train_dataloader.dataset.data_root={tmp_path}/imagenet',
                          f'val_dataloader.dataset.data_root={tmp_path}/imagenet'],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode != 0
    assert f'dataset not found: {tmp_path}/imagenet/train (train_dataloader.dataset.split)' \
        in res.stderr
    assert 'Traceback' not in res.stderr
