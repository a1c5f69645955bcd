"""What a user types, end to end on a small synthetic ADE20K: tools/train.py with
configs/upernet/pale_t_ade20k.py (the real model for one step, a shrunk one to learn),
--resume, tools/test.py single-process, tools/dist_test.sh with 2 processes (same mIoU, same
predictions), --tta, and PaleTransformer dropped into mmseg's own Swin UperNet config."""
import glob
import json
import os
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from pale_mm.synthetic.ade import ade_cfg_options, format_cfg_options, make_ade

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, 'tools'))
import test as test_tool  # noqa: E402
import train as train_tool  # noqa: E402

from det_common import free_port, logged_metrics  # noqa: E402
from seg_common import own_visualizer, small_seg_options  # noqa: E402

CONFIG = osp.join(ROOT, 'configs/upernet/pale_t_ade20k.py')
ITERS, MORE = 30, 10  # first run, then resumed for MORE iterations
# the mmseg Swin UperNet config with Pale-T instead of Swin-T (the README's snippet)
SWIN_SNIPPET = """\
_base_ = ['mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py']
custom_imports = dict(imports=['pale_mm'], allow_failed_imports=False)
model = dict(
    backbone=dict(_delete_=True, type='PaleTransformer', arch='tiny', drop_path_rate=0.3,
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/pale_t_in1k.pth')),
    decode_head=dict(in_channels=[64, 128, 256, 512]), auxiliary_head=dict(in_channels=256))
"""


def _scalars(work_dir):
    """Every line mmengine logged to the newest run's vis_data/scalars.json."""
    files = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    assert files, f'no scalars.json under {work_dir}'
    with open(files[-1]) as f:
        return [json.loads(line) for line in f if line.strip()]


# end to end through the tools: left out of `make test-quick`
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures('one_torch_thread')]


@pytest.fixture(scope='module')
def ade(tmp_path_factory):
    return make_ade(str(tmp_path_factory.mktemp('ade')), num_train=16, num_val=5,
                    image_size=(64, 64), seed=0, num_classes=5)


@pytest.fixture(scope='module')
def trained(ade, tmp_path_factory):
    """The shrunk model trained for ITERS iterations (validated at the end) through
    tools/train.py, as if a longer run (schedule ITERS + MORE) had been interrupted."""
    work_dir = str(tmp_path_factory.mktemp('work'))
    runner = train_tool.main([CONFIG, '--work-dir', work_dir, '--cfg-options'] +
                             small_seg_options(ade, ITERS, ITERS + MORE))
    assert runner.iter == ITERS
    return dict(work_dir=work_dir, ckpt=osp.join(work_dir, f'iter_{ITERS}.pth'),
                scalars=_scalars(work_dir))


def test_training_learns(ade, trained):
    train_logs = [s for s in trained['scalars'] if 'loss' in s]
    val_logs = logged_metrics(trained['work_dir'], 'val')
    assert [s['step'] for s in train_logs] == list(range(1, ITERS + 1))
    losses = [s['loss'] for s in train_logs]
    assert all(np.isfinite(losses))
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    print(f'loss first/last 5 mean: {first:.3f} -> {last:.3f}; val mIoU '
          f'{val_logs[-1]["mIoU"]:.2f} (constant prediction {ade["constant_miou"]:.2f})')
    assert last < 0.85 * first
    assert len(val_logs) == 1  # once, after the last iteration (val_interval = ITERS)
    # far above predicting the background everywhere
    assert val_logs[0]['mIoU'] > ade['constant_miou'] + 10
    assert osp.isfile(trained['ckpt'])


def test_resume(ade, trained, tmp_path):
    """--resume continues the interrupted run: iteration count, optimizer and scheduler
    state come from the checkpoint, not from a fresh start."""
    from pale_mm.checkpoint import safe_load
    work_dir = str(tmp_path / 'work')
    os.makedirs(work_dir)
    runner = train_tool.main([CONFIG, '--work-dir', work_dir, '--resume', trained['ckpt'],
                              '--cfg-options'] + small_seg_options(ade, ITERS + MORE,
                                                                ITERS + MORE))
    assert runner.iter == ITERS + MORE
    steps = [s['step'] for s in _scalars(work_dir) if 'loss' in s]
    assert steps == list(range(ITERS + 1, ITERS + MORE + 1))
    ckpt = safe_load(osp.join(work_dir, f'iter_{ITERS + MORE}.pth'))
    assert ckpt['meta']['iter'] == ITERS + MORE
    # AdamW's step count: restored from the checkpoint, then MORE steps on
    assert all(int(s['step']) == ITERS + MORE for s in ckpt['optimizer']['state'].values())
    # the schedule went on where it stopped: the lr of iteration ITERS + 1 is that of an
    # uninterrupted run (mmengine's schedulers stepped ITERS times on a toy optimiser)
    from mmengine.optim.scheduler import LinearLR, PolyLR
    toy = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=4e-3)
    schedulers = [LinearLR(toy, start_factor=1e-6, by_epoch=False, begin=0, end=5),
                  PolyLR(toy, eta_min=0., power=1., by_epoch=False, begin=5,
                         end=ITERS + MORE)]
    for _ in range(ITERS):
        toy.step()
        for sch in schedulers:
            sch.step()
    lrs = [s['lr'] for s in _scalars(work_dir) if 'loss' in s]
    assert lrs[0] == pytest.approx(toy.param_groups[0]['lr'], rel=1e-6)
    assert 0 < lrs[0] < 4e-3 / 2 and lrs[-1] == pytest.approx(0, abs=1e-12)  # schedule's end
    val = logged_metrics(work_dir, 'val')
    assert len(val) == 1 and val[0]['mIoU'] > ade['constant_miou'] + 10


@pytest.fixture(scope='module')
def single_test(ade, trained, tmp_path_factory):
    """tools/test.py, one process, on the trained checkpoint: metrics and label maps."""
    tmp = tmp_path_factory.mktemp('single')
    metrics = test_tool.main([CONFIG, trained['ckpt'], '--work-dir', str(tmp / 'work'),
                              '--out', str(tmp / 'out'), '--cfg-options'] +
                             small_seg_options(ade, ITERS, ITERS + MORE))
    return dict(metrics=metrics, out=tmp / 'out')


def _label_maps(out_dir):
    names = sorted(os.listdir(out_dir))
    assert names == [f'ADE_val_{i:08d}.png' for i in range(1, 6)]
    maps = {n: cv2.imread(str(out_dir / n), cv2.IMREAD_UNCHANGED) for n in names}
    assert all(m.shape == (64, 64) for m in maps.values())
    return maps


def test_dist_test_matches_single_process(ade, trained, single_test, tmp_path):
    """tools/dist_test.sh with 2 CPU processes (gloo) on 5 images (an odd number: one rank
    gets a padded duplicate) gives the single-process mIoU and the same label maps."""
    dist_out, dist_work = tmp_path / 'dist', tmp_path / 'work'
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(free_port()), OMP_NUM_THREADS='1')
    proc = subprocess.run(
        ['bash', osp.join(ROOT, 'tools/dist_test.sh'), CONFIG, trained['ckpt'], '2',
         '--work-dir', str(dist_work), '--out', str(dist_out), '--cfg-options'] +
        small_seg_options(ade, ITERS, ITERS + MORE),
        # cwd: mmengine gathers the ranks' results through ./.dist_test/
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        (tmp_path / 'dist_test.log').write_text(log)
        errors = [line for line in log.splitlines() if 'rror' in line or 'rank' in line]
        pytest.fail(f'dist_test.sh exited with {proc.returncode}; log in '
                    f'{tmp_path / "dist_test.log"}:\n' + '\n'.join(errors[-40:]))
    assert 'Distributed launcher: pytorch' in log and 'Distributed training: True' in log
    assert 'GPU number: 2' in log  # mmengine's name for the world size
    assert 'SyncBN layers of the model become BN' in log  # no GPU: DDP refuses SyncBN
    dist_metrics = logged_metrics(dist_work, 'test')[-1]
    single = single_test['metrics']
    print(f'mIoU single {single["mIoU"]} / 2 processes {dist_metrics["mIoU"]}')
    for key in ('aAcc', 'mIoU', 'mAcc'):
        assert round(float(single[key]), 2) == round(dist_metrics[key], 2), key
    single_maps, dist_maps = _label_maps(single_test['out']), _label_maps(dist_out)
    for name, labels in single_maps.items():
        np.testing.assert_array_equal(labels, dist_maps[name], err_msg=name)


def test_tta(ade, trained, single_test, tmp_path):
    """--tta: mmseg's SegTTAModel over 6 scales x 2 flips, scored against the same labels."""
    tta = test_tool.main([CONFIG, trained['ckpt'], '--tta', '--work-dir', str(tmp_path / 'w'),
                          '--out', str(tmp_path / 'out'), '--cfg-options'] +
                         small_seg_options(ade, ITERS, ITERS + MORE))
    print(f'mIoU single-scale {single_test["metrics"]["mIoU"]} / multi-scale+flip '
          f'{tta["mIoU"]}')
    assert set(tta) >= {'aAcc', 'mIoU', 'mAcc'}
    assert tta['mIoU'] > ade['constant_miou'] + 10
    # the views were really merged: the label maps differ from the single-scale ones
    single_maps, tta_maps = _label_maps(single_test['out']), _label_maps(tmp_path / 'out')
    assert sum(int((single_maps[n] != tta_maps[n]).sum()) for n in single_maps) > 0


# ---------------------------------------------------------------------------------------
# the real Pale-T model, with an "ImageNet" checkpoint where the config expects it
@pytest.fixture(scope='module')
def pretrained_dir(tmp_path_factory):
    """A directory holding checkpoints/pale_t_in1k.pth, an mmpretrain-style classifier
    checkpoint (backbone. prefix, a head) of random Pale-T weights."""
    from pale_mm import PaleTransformer
    root = tmp_path_factory.mktemp('repo')
    torch.manual_seed(1)
    backbone = PaleTransformer(arch='tiny', drop_path_rate=0.)
    for p in backbone.parameters():  # distinct from any fresh initialisation
        torch.nn.init.normal_(p, std=0.02)
    state = {f'backbone.{k}': v for k, v in backbone.state_dict().items()}
    state['head.fc.weight'] = torch.zeros(1000, 512)
    state['head.fc.bias'] = torch.zeros(1000)
    os.makedirs(root / 'checkpoints')
    torch.save({'state_dict': state, 'meta': {}}, root / 'checkpoints' / 'pale_t_in1k.pth')
    return dict(root=root, state=backbone.state_dict())


def _one_step_options(ade, tta_scale=True):
    opts = ade_cfg_options(ade)
    if not tta_scale:  # mmseg's own tta_pipeline has no single-scale resize to shrink
        del opts['tta_pipeline.1.transforms.0.0.scale']
    opts.update(own_visualizer())
    opts.update({
        'train_dataloader.batch_size': 2,
        'train_cfg.max_iters': 1,
        'train_cfg.val_begin': 2,  # no validation of the big model
        'default_hooks.logger.interval': 1,
        'default_hooks.checkpoint.save_last': False,
        'randomness.seed': 0,
    })
    return format_cfg_options(opts)


def _assert_pretrained_loaded(runner, state):
    model = runner.model.module if hasattr(runner.model, 'module') else runner.model
    own = model.backbone.state_dict()
    # the first step runs at lr 6e-5 * 1e-6 (warm-up start): weights move by ~1e-10
    for key in ('stem.proj.weight', 'stages.2.blocks.15.attn.q.pw.weight',
                'stages.3.blocks.1.mlp.fc2.weight', 'norm3.norm.weight'):
        torch.testing.assert_close(own[key], state[key], atol=1e-6, rtol=0)


def test_real_pale_t_training_step(ade, pretrained_dir, tmp_path, monkeypatch):
    """configs/upernet/pale_t_ade20k.py as it is (Pale-T, UperNet 512, aux FCN, 150-class
    heads resized to the synthetic classes), its ImageNet checkpoint found at
    checkpoints/pale_t_in1k.pth relative to where the user runs, one step through train.py."""
    monkeypatch.chdir(pretrained_dir['root'])
    runner = train_tool.main([CONFIG, '--work-dir', str(tmp_path / 'work'), '--cfg-options']
                             + _one_step_options(ade))
    assert runner.iter == 1
    model = runner.model
    assert type(model.backbone).__name__ == 'PaleTransformer'
    assert model.backbone.arch['embed_dims'] == 64 and len(model.backbone.stages[2].blocks) == 16
    assert model.decode_head.channels == 512 and model.auxiliary_head.in_index == 2
    _assert_pretrained_loaded(runner, pretrained_dir['state'])
    logs = [s for s in _scalars(str(tmp_path / 'work')) if 'loss' in s]
    assert len(logs) == 1 and np.isfinite(logs[0]['loss'])
    assert {'decode.loss_ce', 'aux.loss_ce'} <= set(logs[0])
    # no weight decay on norms / position encodings reached the optimiser
    assert any(g['weight_decay'] == 0 for g in runner.optim_wrapper.optimizer.param_groups)


def test_drop_into_mmseg_swin_config(ade, pretrained_dir, tmp_path, monkeypatch):
    """PaleTransformer in place of Swin in mmseg's own Swin-T UperNet config."""
    monkeypatch.chdir(pretrained_dir['root'])
    config = tmp_path / 'pale_t_upernet_from_swin.py'
    config.write_text(SWIN_SNIPPET)
    runner = train_tool.main([str(config), '--work-dir', str(tmp_path / 'work'),
                              '--cfg-options'] + _one_step_options(ade, tta_scale=False))
    assert runner.iter == 1
    assert type(runner.model.backbone).__name__ == 'PaleTransformer'
    assert runner.cfg.optim_wrapper.optimizer.type == 'AdamW'  # Swin's recipe, inherited
    _assert_pretrained_loaded(runner, pretrained_dir['state'])
    logs = [s for s in _scalars(str(tmp_path / 'work')) if 'loss' in s]
    assert len(logs) == 1 and np.isfinite(logs[0]['loss'])
