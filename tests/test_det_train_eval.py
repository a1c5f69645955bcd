"""Mask R-CNN with a Pale backbone on synthetic COCO data, end to end through the tools:
tools/train.py trains (loss falls, checkpoint saved, --resume continues), tools/test.py
evaluates with mmdet's CocoMetric (--out, --show-dir), tools/dist_test.sh with two CPU
processes (gloo) gives exactly the single-process metrics and predictions on an odd number of
images, tools/dist_train.sh trains with two processes.

The model is configs/mask_rcnn/pale_t_coco_1x.py with a small Pale, narrower FPN and heads
(derived config, det_common.SMALL_PALE_CONFIG) and fewer sampled RoIs, so that an iteration
takes about a second on two cores; the real Pale-T config trains a step in
test_det_configs.py."""
import collections
import math
import os
import os.path as osp
import pickle
import re
import subprocess
import sys

import pytest
import torch

from pale_mm.checkpoint import safe_load

from det_common import (
    HEIGHT,
    LIGHT_HEADS,
    NO_VAL,
    NUM_TRAIN,
    NUM_VAL,
    ROOT,
    WIDTH,
    coco_data,
    data_options,
    free_port,
    logged_test_metrics,
    tool,
    torch_threads_env,
    train_losses,
    write_small_config,
)

# end to end through the tools: left out of `make test-quick`
pytestmark = pytest.mark.slow

EPOCHS = 6  # 24 iterations: enough for a mAP above 0, so that equal mAPs mean something
ITERS = EPOCHS * NUM_TRAIN // 2  # batch 2


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """Train the small-Pale Mask R-CNN for 6 epochs (24 iterations) through tools/train.py."""
    info = coco_data(tmp_path_factory)
    directory = tmp_path_factory.mktemp('det_train')
    config = write_small_config(directory)
    work_dir = directory / 'work'
    options = data_options(info) + LIGHT_HEADS
    tool('train').main([
        config, '--work-dir', str(work_dir), '--cfg-options', *options,
        'model.backbone.init_cfg=None',
        f'train_cfg.max_epochs={EPOCHS}', NO_VAL,
        'param_scheduler.0.end=2',  # warm-up over 2 iterations, not 1000
        'optim_wrapper.optimizer.lr=0.001', 'randomness.seed=0',
        'default_hooks.logger.interval=1', 'log_processor.window_size=1',  # every loss
        f'default_hooks.checkpoint.interval={EPOCHS}',
    ])
    return dict(info=info, config=config, work_dir=work_dir, options=options,
                checkpoint=str(work_dir / f'epoch_{EPOCHS}.pth'))


@pytest.fixture(scope='module')
def single_process_eval(trained, tmp_path_factory):
    """tools/test.py in this process, one thread (as each process of the dist run has)."""
    work_dir = tmp_path_factory.mktemp('det_test_single')
    out = str(work_dir / 'results.pkl')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # no model.backbone.init_cfg=None: testing does not need the ImageNet weights
        metrics = tool('test').main([trained['config'], trained['checkpoint'], '--work-dir',
                                     str(work_dir), '--out', out, '--show-dir',
                                     str(work_dir / 'vis'),
                                     '--cfg-options', *trained['options']])
    finally:
        torch.set_num_threads(threads)
    with open(out, 'rb') as f:
        results = pickle.load(f)
    return dict(metrics=metrics, results=results, work_dir=work_dir)


def test_training_loss_goes_down_and_checkpoint_is_saved(trained):
    losses = train_losses(trained['work_dir'])
    assert [it for it, _ in losses] == list(range(1, ITERS + 1))
    values = [v for _, v in losses]
    assert all(math.isfinite(v) for v in values)
    first, last = sum(values[:4]) / 4, sum(values[-4:]) / 4
    print(f'loss: first {values[0]:.3f}, last {values[-1]:.3f}; mean of the first four '
          f'{first:.3f}, of the last four {last:.3f}')
    assert last < 0.7 * first, values

    ckpt = safe_load(trained['checkpoint'])
    assert ckpt['meta']['epoch'] == EPOCHS and ckpt['meta']['iter'] == ITERS
    assert tuple(ckpt['meta']['dataset_meta']['classes']) == ('square', 'circle', 'triangle')
    state = ckpt['state_dict']
    assert state['backbone.stem.proj.weight'].shape == (32, 3, 7, 7)
    assert state['roi_head.bbox_head.fc_cls.weight'].shape[0] == 3 + 1  # + background
    assert state['roi_head.mask_head.conv_logits.weight'].shape[0] == 3
    assert 'optimizer' in ckpt and 'message_hub' in ckpt


def test_resume_continues_from_the_checkpoint(trained, tmp_path):
    """--resume CKPT: the model, optimizer and counters come back and training goes on
    (one epoch more, over 2 images: a single iteration, numbered on from the checkpoint)."""
    work_dir = tmp_path / 'resumed'
    tool('train').main([
        trained['config'], '--work-dir', str(work_dir), '--resume', trained['checkpoint'],
        '--cfg-options', *trained['options'], 'model.backbone.init_cfg=None',
        'train_dataloader.dataset.indices=2',
        f'train_cfg.max_epochs={EPOCHS + 1}', NO_VAL,
        'param_scheduler.0.end=2', 'optim_wrapper.optimizer.lr=0.001',
        'default_hooks.logger.interval=1', 'log_processor.window_size=1',
        'default_hooks.checkpoint.save_optimizer=False'])
    losses = train_losses(work_dir)
    assert [it for it, _ in losses] == [ITERS + 1]
    ckpt = safe_load(str(work_dir / f'epoch_{EPOCHS + 1}.pth'))
    assert ckpt['meta']['epoch'] == EPOCHS + 1 and ckpt['meta']['iter'] == ITERS + 1
    trained_state = safe_load(trained['checkpoint'])['state_dict']
    key = 'roi_head.bbox_head.fc_cls.weight'
    # one more step from the trained weights: close to them, but not equal
    diff = (ckpt['state_dict'][key] - trained_state[key]).abs().max().item()
    assert 0 < diff < 0.01


def test_test_tool_evaluates_with_coco_metric(trained, single_process_eval):
    metrics, results = single_process_eval['metrics'], single_process_eval['results']
    print('single-process metrics:', metrics)
    for task in ('bbox', 'segm'):
        for suffix in ('', '_50', '_75', '_s', '_m'):
            assert 0.0 <= metrics[f'coco/{task}_mAP{suffix}'] <= 1.0
        # no object of the small synthetic images reaches COCO's "large" (96^2 px)
        assert metrics[f'coco/{task}_mAP_l'] == -1.0
    logged = logged_test_metrics(single_process_eval['work_dir'])
    assert {k: logged[k] for k in metrics} == metrics

    assert [r['img_id'] for r in results] == list(range(1, NUM_VAL + 1))
    # --show-dir: one picture per image (ground truth and prediction side by side)
    import cv2
    pictures = sorted((single_process_eval['work_dir'] / 'vis').glob('*.png'))
    assert [p.name for p in pictures] == [f'{i:012d}.png' for i in range(1, NUM_VAL + 1)]
    assert cv2.imread(str(pictures[0])).shape == (HEIGHT, 2 * WIDTH, 3)
    counts = [len(r['pred_instances']['scores']) for r in results]
    assert sum(counts) > 0
    for r, n in zip(results, counts):
        pred = r['pred_instances']
        assert pred['bboxes'].shape == (n, 4) and len(pred['masks']) == n
        assert ((pred['labels'] >= 0) & (pred['labels'] < 3)).all()
        # masks as RLE at the original image size
        assert all(m['size'] == [HEIGHT, WIDTH] for m in pred['masks'])
    # 24 iterations on simple shapes: the detector has begun to find them
    assert metrics['coco/bbox_mAP_50'] > 0 and metrics['coco/segm_mAP_50'] > 0


def _assert_same_predictions(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x['img_id'] == y['img_id']
        px, py = x['pred_instances'], y['pred_instances']
        for key in ('bboxes', 'scores', 'labels'):
            assert torch.equal(px[key], py[key]), (x['img_id'], key)
        assert px['masks'] == py['masks'], x['img_id']


def test_dist_test_two_processes_equal_single_process(trained, single_process_eval, tmp_path):
    """5 images over 2 ranks (3 + 2, the sampler pads rank 1 with a repeat that the
    collection drops): bbox and segm mAP and every prediction equal the 1-process run."""
    work_dir = tmp_path / 'dist'
    out = str(tmp_path / 'dist_results.pkl')
    env = torch_threads_env(1)
    env.update(PYTHON=sys.executable, PORT=str(free_port()))
    proc = subprocess.run(
        ['bash', osp.join(ROOT, 'tools', 'dist_test.sh'), trained['config'],
         trained['checkpoint'], '2', '--work-dir', str(work_dir), '--out', out,
         '--cfg-options', *trained['options']],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    # (run from tmp_path: mmengine collects the ranks' results through ./.dist_test)
    dist_metrics = logged_test_metrics(work_dir)
    single = single_process_eval['metrics']
    print('dist metrics:', {k: dist_metrics[k] for k in single})
    assert single['coco/bbox_mAP'] > 0 and single['coco/segm_mAP'] > 0  # equal and not 0
    assert {k: dist_metrics[k] for k in single} == single
    # rank 0 ran 3 of the 5 images (and rank 1 the other 2 plus one repeat)
    logs = [osp.join(dp, f) for dp, _, fs in os.walk(work_dir) for f in fs if f.endswith('.log')]
    assert len(logs) == 1
    with open(logs[0]) as f:
        log = f.read()
    assert re.search(r'Epoch\(test\) \[3/3\]', log) and 'Distributed launcher: pytorch' in log
    with open(out, 'rb') as f:
        dist_results = pickle.load(f)
    _assert_same_predictions(dist_results, single_process_eval['results'])


def test_dist_train_resume_and_test_two_processes(trained, tmp_path):
    """tools/dist_train.sh: two CPU processes (gloo, DDP) share the 4 images of one epoch;
    then --resume in two processes trains the second epoch from that checkpoint (whose
    multi-step schedule keeps its milestones in a collections.Counter), and
    tools/dist_test.sh evaluates the result in two processes."""
    work_dir = tmp_path / 'dist_train'
    env = torch_threads_env(1)
    env.update(PYTHON=sys.executable)

    def dist(tool_name, *args):
        env['PORT'] = str(free_port())
        proc = subprocess.run(['bash', osp.join(ROOT, 'tools', tool_name), *args],
                              cwd=str(tmp_path), env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    train_options = ['--cfg-options', *trained['options'], 'model.backbone.init_cfg=None',
                     'train_dataloader.dataset.indices=4', 'train_cfg.val_interval=3',
                     'default_hooks.logger.interval=1', 'log_processor.window_size=1']
    dist('dist_train.sh', trained['config'], '2', '--work-dir', str(work_dir),
         *train_options, 'train_cfg.max_epochs=1')
    losses = train_losses(work_dir)
    assert [it for it, _ in losses] == [1]  # 4 images / (2 processes x batch 2)
    assert math.isfinite(losses[0][1])
    ckpt = safe_load(str(work_dir / 'epoch_1.pth'))
    assert not any(k.startswith('module.') for k in ckpt['state_dict'])
    assert isinstance(ckpt['param_schedulers'][1]['milestones'], collections.Counter)

    resumed = tmp_path / 'dist_resumed'
    dist('dist_train.sh', trained['config'], '2', '--work-dir', str(resumed), '--resume',
         str(work_dir / 'epoch_1.pth'), *train_options, 'train_cfg.max_epochs=2')
    assert [it for it, _ in train_losses(resumed)] == [2]  # numbered on from the checkpoint
    assert safe_load(str(resumed / 'epoch_2.pth'))['meta']['epoch'] == 2

    dist('dist_test.sh', trained['config'], str(resumed / 'epoch_2.pth'), '2', '--work-dir',
         str(tmp_path / 'dist_test'), '--cfg-options', *trained['options'])
    metrics = logged_test_metrics(tmp_path / 'dist_test')
    assert 0.0 <= metrics['coco/bbox_mAP'] <= 1.0 and 0.0 <= metrics['coco/segm_mAP'] <= 1.0
