"""mmdet's and mmseg's own tools/train.py and tools/test.py (installed under the packages'
``.mim/tools/``) and their inferencers (DetInferencer, MMSegInferencer) run the project's
configs through ``custom_imports`` alone: each library in one fresh Python process that never
imports pale_mm itself, on the synthetic data. The mmseg run takes its Pale weights from a
URL (a local HTTP server on 127.0.0.1) through mmseg's train.py."""
import glob
import json
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch

from pale_mm.synthetic.ade import ade_cfg_options, format_cfg_options, make_ade

from det_common import (
    LIGHT_HEADS,
    NO_VAL,
    ROOT,
    RunsACommand,
    coco_data,
    data_options,
    logged_test_metrics,
    torch_threads_env,
    write_small_config,
)

# end to end through the tools: left out of `make test-quick`
pytestmark = pytest.mark.slow


def _library_tools(scope):
    import importlib
    tools = osp.join(osp.dirname(importlib.import_module(scope).__file__), '.mim', 'tools')
    assert osp.isfile(osp.join(tools, 'train.py')), tools
    return tools


def _run_driver(spec, env):
    driver = osp.join(ROOT, 'tests', 'scripts', 'upstream_tools_driver.py')
    proc = subprocess.run([sys.executable, driver, json.dumps(spec)], cwd=spec['cwd'],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith('FOUND ')][-1]
    return json.loads(line[len('FOUND '):]), proc.stdout + proc.stderr


def test_mmdet_tools_and_det_inferencer(tmp_path, tmp_path_factory):
    info = coco_data(tmp_path_factory)
    config = write_small_config(tmp_path)
    options = data_options(info) + LIGHT_HEADS + [
        NO_VAL, 'model.backbone.init_cfg=None', 'model.backbone.drop_path_rate=0.',
        'train_cfg.max_epochs=1', 'default_hooks.logger.interval=1',
        # one iteration of two images, two test images (the metric still reads all five)
        'train_dataloader.dataset.indices=2', 'test_dataloader.dataset.indices=2']
    image = sorted(os.listdir(info['val']['img_dir']))[0]
    spec = dict(
        scope='mmdet', tools=_library_tools('mmdet'), cwd=str(tmp_path), config=config,
        train=[config, '--work-dir', str(tmp_path / 'train'), '--cfg-options'] + options,
        test=[config, str(tmp_path / 'train' / 'epoch_1.pth'), '--work-dir',
              str(tmp_path / 'test'), '--cfg-options'] + options,
        checkpoint=str(tmp_path / 'train' / 'epoch_1.pth'),
        inferencer_options=[o for o in options if o.startswith(('model.', 'test_dataloader'))],
        image=osp.join(info['val']['img_dir'], image))
    found, log = _run_driver(spec, torch_threads_env(1))
    assert found['pale_mm_before'] is False and found['pale_mm_after_tools'] is True
    metrics = logged_test_metrics(tmp_path / 'test')
    assert 'coco/bbox_mAP' in metrics and 'coco/segm_mAP' in metrics
    assert set(found['prediction']) == {'labels', 'bboxes'}
    assert found['prediction']['labels'] == found['prediction']['bboxes']


SMALL_SEG = """_base_ = [{base!r}]
model = dict(
    backbone=dict(arch=dict(_delete_=True, embed_dims=16, depths=[1, 1, 2, 1],
                            num_heads=[2, 2, 4, 4]),
                  drop_path_rate=0.,
                  init_cfg=dict(type='Pretrained', checkpoint={url!r})),
    decode_head=dict(in_channels=[16, 32, 64, 128], channels=32),
    auxiliary_head=dict(in_channels=64, channels=16))
"""


def test_mmseg_tools_and_seg_inferencer(tmp_path, weights_server):
    from pale_mm.models import PaleTransformer
    www, base_url = weights_server.root, weights_server.url
    backbone = PaleTransformer(dict(embed_dims=16, depths=[1, 1, 2, 1], num_heads=[2, 2, 4, 4]))
    backbone.init_weights()
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in backbone.state_dict().items()}},
               www / 'pale_small_in1k.pth')
    ade = make_ade(str(tmp_path / 'ade'), num_train=4, num_val=3, image_size=(64, 64))
    config = tmp_path / 'pale_small_upernet.py'
    config.write_text(SMALL_SEG.format(
        base=osp.join(ROOT, 'configs', 'upernet', 'pale_t_ade20k.py'),
        url=f'{base_url}/pale_small_in1k.pth'))
    opts = ade_cfg_options(ade)
    opts.update({'train_cfg.max_iters': 2, 'train_cfg.val_begin': 1000,
                 'default_hooks.checkpoint.interval': 2, 'default_hooks.logger.interval': 1,
                 'train_dataloader.batch_size': 2})
    options = format_cfg_options(opts)
    checkpoint = str(tmp_path / 'train' / 'iter_2.pth')
    env = torch_threads_env(1)
    env['TORCH_HOME'] = str(tmp_path / 'torch_home')
    image = sorted(os.listdir(osp.join(ade['root'], 'images', 'validation')))[0]
    spec = dict(
        scope='mmseg', tools=_library_tools('mmseg'), cwd=str(tmp_path), config=str(config),
        train=[str(config), '--work-dir', str(tmp_path / 'train'), '--cfg-options'] + options,
        test=[str(config), checkpoint, '--work-dir', str(tmp_path / 'test'),
              '--cfg-options'] + options,
        checkpoint=checkpoint,
        inferencer_options=[o for o in options if o.startswith(('model.', 'test_dataloader'))],
        image=osp.join(ade['root'], 'images', 'validation', image))
    found, log = _run_driver(spec, env)
    assert found['pale_mm_before'] is False and found['pale_mm_after_tools'] is True
    # Pale's weights came from the URL, through mmseg's own train.py
    assert f'PaleTransformer: loaded {len(backbone.state_dict())}/' in log
    assert f'from {base_url}/pale_small_in1k.pth' in log
    assert 'mIoU' in logged_test_metrics(tmp_path / 'test')
    assert found['prediction'] == [64, 64]


# ---------------------------------------------------------------------------------------
# import alone, and the opt-in (runner_type='HardenedRunner'), in the libraries' own tools
# mmdet's Swin-T Mask R-CNN with Pale in, as the README shows it (custom_imports, no
# runner_type); write_small_config makes it small
PLAIN_DET = """_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py']
custom_imports = dict(imports=['pale_mm'], allow_failed_imports=False)
model = dict(backbone=dict(_delete_=True, type='PaleTransformer', arch='tiny', drop_path_rate=0.))
"""

_LOAD_WITHOUT_PALE_MM = """
import sys
from mmengine.runner.checkpoint import _load_checkpoint
try:
    _load_checkpoint(sys.argv[1])
    print('LOAD loaded')
except Exception as e:
    print('LOAD', type(e).__name__)
assert 'pale_mm' not in sys.modules
"""


def test_import_alone_leaves_mmdet_tools_as_they_are(tmp_path, tmp_path_factory):
    """custom_imports of pale_mm in an mmdet config of its own (no runner_type): mmdet's
    train.py trains Pale and validates it (Pale predicts), and mmengine afterwards loads
    with its own loader: a checkpoint holding an argparse.Namespace (as timm's and many
    research scripts save their arguments) loads, or not, exactly as without pale_mm."""
    import argparse
    info = coco_data(tmp_path_factory)
    plain = tmp_path / 'plain_pale_mask_rcnn.py'
    plain.write_text(PLAIN_DET)
    config = write_small_config(tmp_path, 'plain_pale_mask_rcnn_small.py', base=str(plain))
    namespace_ckpt = tmp_path / 'with_args.pth'
    torch.save({'state_dict': {'w': torch.ones(2)}, 'args': argparse.Namespace(lr=0.1)},
               namespace_ckpt)
    options = data_options(info) + LIGHT_HEADS + [
        'train_cfg.max_epochs=1', 'train_cfg.val_interval=1', 'default_hooks.logger.interval=1',
        'train_dataloader.dataset.indices=2', 'val_dataloader.dataset.indices=2',
        'test_dataloader.dataset.indices=2']
    spec = dict(scope='mmdet', tools=_library_tools('mmdet'), cwd=str(tmp_path),
                config=config, load=str(namespace_ckpt),
                train=[config, '--work-dir', str(tmp_path / 'train'), '--cfg-options'] + options)
    found, log = _run_driver(spec, torch_threads_env(1))
    assert found['pale_mm_before'] is False and found['pale_mm_after_tools'] is True
    log = open(sorted(glob.glob(str(tmp_path / 'train' / '*' / '*.log')))[-1]).read()
    assert re.search(r'Epoch\(val\) \[1\]\[2/2\]\s+coco/bbox_mAP: [\d.]+', log)  # Pale predicted
    assert (tmp_path / 'train' / 'epoch_1.pth').exists()
    assert found['local_loader'] == 'mmengine.runner.checkpoint.load_from_local'
    alone = subprocess.run([sys.executable, '-c', _LOAD_WITHOUT_PALE_MM, str(namespace_ckpt)],
                           capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr[-2000:]
    without = alone.stdout.split('LOAD ', 1)[1].strip()
    assert found['load'] == without, (found['load'], without)


def _small_hardened_det(tmp_path, tmp_path_factory):
    """A small Mask R-CNN from configs/mask_rcnn/pale_t_coco_1x.py (which has
    runner_type='HardenedRunner') on the synthetic COCO, and its --cfg-options: one
    iteration an epoch, a checkpoint every epoch, only the newest one kept."""
    info = coco_data(tmp_path_factory)
    config = write_small_config(tmp_path)
    options = data_options(info) + LIGHT_HEADS + [
        NO_VAL, 'model.backbone.init_cfg=None', 'model.backbone.drop_path_rate=0.',
        'train_cfg.max_epochs=2', 'default_hooks.checkpoint.max_keep_ckpts=1',
        'train_dataloader.dataset.indices=2', 'test_dataloader.dataset.indices=2']
    return config, options


def test_opt_in_refuses_a_crafted_checkpoint_in_mmdet_test_tool(tmp_path, tmp_path_factory):
    config, options = _small_hardened_det(tmp_path, tmp_path_factory)
    marker = tmp_path / 'pwned'
    evil = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'meta': RunsACommand(marker)}, evil)
    proc = subprocess.run(
        [sys.executable, osp.join(_library_tools('mmdet'), 'test.py'), config, str(evil),
         '--work-dir', str(tmp_path / 'test'), '--cfg-options'] + options,
        cwd=str(tmp_path), env=torch_threads_env(1), capture_output=True, text=True,
        timeout=600)
    assert proc.returncode != 0
    assert "refused to load checkpoint" in proc.stderr and 'system' in proc.stderr, \
        proc.stderr[-3000:]
    assert not marker.exists()


def test_opt_in_keeps_the_previous_checkpoint_when_killed_while_saving(tmp_path,
                                                                       tmp_path_factory):
    """mmdet's train.py with the opt-in, max_keep_ckpts=1, killed half way through writing
    its second checkpoint: the first is whole, still there, and named by last_checkpoint."""
    import signal
    import time

    from pale_mm.checkpoint import safe_load
    config, options = _small_hardened_det(tmp_path, tmp_path_factory)
    work = tmp_path / 'train'
    ready = tmp_path / 'half_written'
    proc = subprocess.Popen(
        [sys.executable, osp.join(ROOT, 'tests', 'scripts', 'hang_on_second_save.py'),
         str(ready), osp.join(_library_tools('mmdet'), 'train.py'), config, '--work-dir',
         str(work), '--cfg-options'] + options,
        cwd=str(tmp_path), env=torch_threads_env(1), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while not ready.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail('the run ended before its second save: ' + proc.stderr.read()[-3000:])
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert (work / 'epoch_1.pth').exists() and not (work / 'epoch_2.pth').exists()
    assert safe_load(work / 'epoch_1.pth')['meta']['epoch'] == 1
    assert (work / 'last_checkpoint').read_text().endswith('epoch_1.pth')
    assert len(list(work.glob('.epoch_2.pth.*.tmp'))) == 1  # the half-written file
