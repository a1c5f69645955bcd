"""Bad data and bad configs, and what each gets: a clear error naming the file or key (and
the fix), no traceback, nothing written. And a failed run never loses what earlier runs wrote
(checkpoints, logs, result files).

Each case breaks a fresh copy of a small synthetic dataset and runs tools/train.py (or
tools/test.py) in this process; the message is what the command prints (``sys.exit``).
"""
import glob
import hashlib
import json
import os
import os.path as osp
import shutil
import subprocess
import sys

import cv2
import pytest
import torch

from pale_mm.synthetic.ade import make_ade
from pale_mm.synthetic.imagenet import imagenet_cfg_options, make_imagenet

from det_common import (
    LIGHT_HEADS,
    NO_VAL,
    ROOT,
    coco_data,
    data_options,
    tool,
    torch_threads_env,
    tree_digest,
    write_small_config,
)
from seg_common import small_seg_options

ADE_CONFIG = osp.join(ROOT, 'configs/upernet/pale_t_ade20k.py')
NUM_CLASSES = 4


# end to end through the tools: left out of `make test-quick`
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures('one_torch_thread')]


@pytest.fixture(scope='module')
def ade_master(tmp_path_factory):
    return make_ade(str(tmp_path_factory.mktemp('ade_master')), num_train=4, num_val=2,
                    image_size=(64, 64), seed=0, num_classes=NUM_CLASSES)


def _copy(info, dst):
    """A copy of a generated dataset, and its info with every path moved to the copy."""
    shutil.copytree(info['root'], dst)

    def moved(v):
        if isinstance(v, dict):
            return {k: moved(x) for k, x in v.items()}
        if isinstance(v, str) and v.startswith(info['root']):
            return str(dst) + v[len(info['root']):]
        return v

    return moved(info)


def _first(pattern):
    found = sorted(glob.glob(pattern))
    assert found, pattern
    return found[0]


# ------------------------------------------------------------------ how to break the data
def coco_json_truncated(root):
    path = osp.join(root, 'annotations/instances_train2017.json')
    text = open(path).read()
    open(path, 'w').write(text[:len(text) // 2])
    return [path, 'is not valid JSON', 'line 1, column', 'truncated']


def coco_json_without(key):
    def breaker(root):
        path = osp.join(root, 'annotations/instances_train2017.json')
        data = json.load(open(path))
        del data[key]
        json.dump(data, open(path, 'w'))
        return [path, f"has no '{key}' list", "'images', 'annotations' and 'categories'"]
    breaker.__name__ = f'coco_json_without_{key}'
    return breaker


def coco_image_missing(root):
    path = _first(osp.join(root, 'train2017', '*'))
    os.remove(path)
    return ['1 of the 8 images listed in', 'instances_train2017.json', 'missing on disk',
            path]


def coco_image_unreadable(root):
    path = _first(osp.join(root, 'train2017', '*'))
    open(path, 'wb').write(b'\x89PNG\r\n\x1a\n but the rest is not an image')
    return [f'image {path} cannot be decoded', 'truncated or not an image']


def ade_label_out_of_range(root):
    path = _first(osp.join(root, 'annotations/training/*.png'))
    label = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    # ADE20K numbers its 150 classes 1..150 in the file (0 = unlabelled); the synthetic data
    # uses the first few (metainfo.classes), mmseg maps the others to 'ignore'
    label[label > 0] = 200
    cv2.imwrite(path, label)
    return [f'label map {path} holds values [200]', f'outside the {NUM_CLASSES} classes',
            "class ids 1..150", 'num_classes']


def ade_label_missing(root):
    path = _first(osp.join(root, 'annotations/training/*.png'))
    os.remove(path)
    return ['have no label map under', path]


def ade_label_unreadable(root):
    path = _first(osp.join(root, 'annotations/training/*.png'))
    open(path, 'wb').write(b'')
    return [f'label map {path} cannot be decoded']


def _seg_options(info):
    return small_seg_options(info, 2, 10) + ['train_cfg.val_begin=100']


def _det_options(info, tmp_path):
    return [write_small_config(tmp_path)], data_options(info) + LIGHT_HEADS + [
        'model.backbone.init_cfg=None', 'train_cfg.max_epochs=1', NO_VAL]


DATA_CASES = [
    ('coco', coco_json_truncated), ('coco', coco_json_without('images')),
    ('coco', coco_json_without('annotations')), ('coco', coco_image_missing),
    ('coco', coco_image_unreadable), ('ade', ade_label_out_of_range),
    ('ade', ade_label_missing), ('ade', ade_label_unreadable),
]


def _train_error(argv):
    """Run tools/train.py in this process; the error message it exits with."""
    with pytest.raises(SystemExit) as exc:
        tool('train').main(argv)
    message = exc.value.code
    assert isinstance(message, str), f'exit code {message}, no message'
    assert message.startswith('train.py: error: ')
    return message


@pytest.mark.parametrize('layout,breaker', DATA_CASES,
                         ids=[b.__name__ for _, b in DATA_CASES])
def test_bad_data(layout, breaker, ade_master, tmp_path_factory, tmp_path):
    master = coco_data(tmp_path_factory) if layout == 'coco' else ade_master
    info = _copy(master, tmp_path / 'data')
    expected = breaker(info['root'])
    work_dir = tmp_path / 'work'
    if layout == 'coco':
        config, options = _det_options(info, tmp_path)
        argv = config + ['--work-dir', str(work_dir), '--cfg-options'] + options
    else:
        argv = [ADE_CONFIG, '--work-dir', str(work_dir), '--cfg-options'] + _seg_options(info)
    message = _train_error(argv)
    for text in expected:
        assert text in message, f'{text!r} not in: {message}'
    assert not glob.glob(str(work_dir / '*.pth'))  # no checkpoint from a broken run


def test_imagenet_listed_image_missing(tmp_path):
    info = make_imagenet(str(tmp_path / 'inet'), num_classes=3, num_train=1, num_val=1,
                         image_size=(32, 32))
    path = _first(osp.join(info['root'], 'train', '*', '*.JPEG'))
    os.remove(path)
    options = [f'{k}={v}' for k, v in imagenet_cfg_options(info).items()
               if not isinstance(v, tuple)]
    message = _train_error([osp.join(ROOT, 'configs/imagenet/pale_t_in1k.py'), '--work-dir',
                            str(tmp_path / 'work'), '--cfg-options'] + options)
    assert 'meta/train.txt are missing' in message and path in message
    assert not (tmp_path / 'work').exists()


CONFIG_CASES = [
    ('misspelt_backbone_argument', ['model.backbone.drop_path_rat=0.1'], [],
     ["model.backbone: PaleTransformer has no argument 'drop_path_rat'",
      "did you mean 'drop_path_rate'?"]),
    ('out_indices_out_of_range', ['model.backbone.out_indices=(0,1,2,4)'], [],
     ['model.backbone: PaleTransformer: out_indices (0, 1, 2, 4) out of range',
      'stages 0..3']),
    ('unknown_arch', ['model.backbone.arch=huge'], [],
     ["unknown arch 'huge'", "['base', 'small', 'tiny']"]),
    ('pretrained_checkpoint_missing',
     ['model.backbone.init_cfg.checkpoint=/nonexistent/pale_t_in1k.pth'], [],
     ['pretrained checkpoint not found: /nonexistent/pale_t_in1k.pth',
      'model.backbone.init_cfg', 'init_cfg=None']),
    ('resume_checkpoint_missing', [], ['--resume', '/nonexistent/iter_4.pth'],
     ['--resume checkpoint not found: /nonexistent/iter_4.pth']),
    ('load_from_missing', ['load_from=/nonexistent/model.pth'], [],
     ['load_from checkpoint not found: /nonexistent/model.pth']),
    ('dataset_root_missing', ['train_dataloader.dataset.data_root=/nonexistent/ade'], [],
     ['dataset not found: /nonexistent/ade', 'train_dataloader.dataset.data_root=']),
    ('head_classes_differ_from_data', ['model.decode_head.num_classes=7'], [],
     [f'the training data has {NUM_CLASSES} classes',
      'model.decode_head.num_classes is 7', f'num_classes={NUM_CLASSES}']),
]


@pytest.mark.parametrize('name,options,args,expected', CONFIG_CASES,
                         ids=[c[0] for c in CONFIG_CASES])
def test_bad_config(name, options, args, expected, ade_master, tmp_path):
    base = _seg_options(ade_master)
    if name == 'pretrained_checkpoint_missing':  # the config's own init_cfg, re-pointed
        base = [o for o in base if not o.startswith('model.backbone.init_cfg=')]
    work_dir = tmp_path / 'work'
    message = _train_error([ADE_CONFIG, '--work-dir', str(work_dir), *args, '--cfg-options']
                           + base + options)
    for text in expected:
        assert text in message, f'{text!r} not in: {message}'
    if name != 'head_classes_differ_from_data':  # found before the runner starts
        assert not work_dir.exists()


# A checkpoint that would run a command when unpickled, and nine other broken ones, through
# every way the tools load a checkpoint: tests/test_broken_checkpoints.py.


def test_missing_test_checkpoint(ade_master, tmp_path):
    with pytest.raises(SystemExit) as exc:
        tool('test').main([ADE_CONFIG, '/nonexistent/iter_4.pth', '--work-dir',
                           str(tmp_path / 'w'), '--cfg-options'] + _seg_options(ade_master))
    assert exc.value.code == 'test.py: error: checkpoint not found: /nonexistent/iter_4.pth'


def test_cli_prints_the_error_without_traceback(ade_master, tmp_path):
    """The command line, with the data read by worker processes (torch re-raises a
    worker's error with the worker's traceback in its message)."""
    info = _copy(ade_master, tmp_path / 'data')
    expected = ade_label_unreadable(info['root'])
    res = subprocess.run(
        [sys.executable, 'tools/train.py', ADE_CONFIG, '--work-dir', str(tmp_path / 'work'),
         '--cfg-options'] + _seg_options(info) + ['train_dataloader.num_workers=1'],
        cwd=ROOT, env=torch_threads_env(1), capture_output=True, text=True, timeout=600)
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith('train.py: error: ') and expected[0] in last, res.stderr[-3000:]
    assert 'Traceback' not in res.stderr, res.stderr[-3000:]


# ------------------------------------------------------------------ nothing lost
def test_failed_runs_keep_what_earlier_runs_wrote(ade_master, tmp_path):
    """Checkpoints, logs and --out label maps of a finished run survive: a new run into the
    same work dir (refused), a resumed run and a test that fail on broken data."""
    info = _copy(ade_master, tmp_path / 'data')
    work_dir, out_dir = tmp_path / 'work', tmp_path / 'label_maps'
    tool('train').main([ADE_CONFIG, '--work-dir', str(work_dir), '--cfg-options']
                       + small_seg_options(info, 2, 10))
    checkpoint = str(work_dir / 'iter_2.pth')
    test_options = small_seg_options(info, 2, 10)
    tool('test').main([ADE_CONFIG, checkpoint, '--work-dir', str(work_dir), '--out',
                       str(out_dir), '--cfg-options'] + test_options)
    assert len(os.listdir(out_dir)) == info['num_val']
    before = dict(tree_digest(work_dir), **{f'out/{k}': v for k, v in
                                             tree_digest(out_dir).items()})
    assert any(k.endswith('.log') for k in before) and 'iter_2.pth' in before

    # 1. a new run into the same work dir would overwrite iter_2.pth: refused
    message = _train_error([ADE_CONFIG, '--work-dir', str(work_dir), '--cfg-options']
                           + small_seg_options(info, 2, 10))
    assert 'already holds checkpoints of an earlier run (iter_2.pth)' in message
    assert '--resume' in message
    # 2. broken data: a resumed run and a test both fail on the first sample
    for split in ('training', 'validation'):
        for path in glob.glob(osp.join(info['root'], 'annotations', split, '*.png')):
            label = cv2.imread(path, cv2.IMREAD_UNCHANGED)
            label[0, 0] = 200  # beyond ADE20K's 150 classes
            cv2.imwrite(path, label)
    message = _train_error([ADE_CONFIG, '--work-dir', str(work_dir), '--resume',
                            '--cfg-options'] + small_seg_options(info, 4, 10)
                           + [f'visualizer.name=vis_{os.getpid()}_resume'])
    assert 'outside the 4 classes' in message
    with pytest.raises(SystemExit) as exc:
        tool('test').main([ADE_CONFIG, checkpoint, '--work-dir', str(work_dir), '--out',
                           str(out_dir), '--cfg-options'] + test_options
                          + [f'visualizer.name=vis_{os.getpid()}_test'])
    assert 'outside the 4 classes' in str(exc.value.code)

    after = dict(tree_digest(work_dir), **{f'out/{k}': v for k, v in
                                            tree_digest(out_dir).items()})
    # mmengine writes the config of the newest run started in a work dir to its top level
    # (<work_dir>/pale_t_ade20k.py); every run's own copy stays in <timestamp>/vis_data/
    assert any(k.endswith(osp.join('vis_data', 'config.py')) for k in before)
    changed = [k for k in before if after.get(k) != before[k] and k != 'pale_t_ade20k.py']
    assert not changed, f'changed or lost: {changed}'
    # no half-written outputs next to the old ones
    assert not glob.glob(str(tmp_path / 'label_maps.partial-*'))
    assert not glob.glob(str(work_dir / '.*.tmp'))


def test_failed_test_keeps_coco_results(tmp_path_factory, tmp_path):
    """tools/test.py --out results.pkl and CocoMetric's outfile_prefix json files of a
    finished test survive a test that fails on an unreadable image."""
    import argparse

    from mmdet.registry import MODELS
    from mmengine.config import DictAction

    from pale_mm.launch.run_config import load_config
    info = coco_data(tmp_path_factory)
    config, options = _det_options(info, tmp_path)
    # a checkpoint of the very model the test builds (its classes are the data's)
    parser = argparse.ArgumentParser()
    parser.add_argument('--o', nargs='+', action=DictAction)
    cfg = load_config(config[0], parser.parse_args(['--o', *options]).o)
    torch.manual_seed(0)
    checkpoint = str(tmp_path / 'model.pth')
    torch.save({'state_dict': MODELS.build(cfg.model).state_dict()}, checkpoint)
    work_dir, out = tmp_path / 'work', tmp_path / 'results.pkl'
    prefix = str(tmp_path / 'coco_results')
    argv = config[:1] + [checkpoint, '--work-dir', str(work_dir), '--out', str(out),
                         '--cfg-options'] + options + [
        'test_evaluator.format_only=True', f'test_evaluator.outfile_prefix={prefix}']
    tool('test').main(argv)
    written = sorted(glob.glob(str(tmp_path / 'coco_results.*.json'))) + [str(out)]
    assert len(written) == 3  # bbox and segm json, and the pkl
    digests = {p: hashlib.sha256(open(p, 'rb').read()).hexdigest() for p in written}

    broken = _copy(info, tmp_path / 'broken')
    for path in glob.glob(osp.join(broken['root'], 'val2017', '*')):
        open(path, 'wb').write(b'not an image')
    bad_argv = [a.replace(info['root'], broken['root']) for a in argv]
    with pytest.raises(SystemExit) as exc:
        tool('test').main(bad_argv)
    assert 'cannot be decoded' in str(exc.value.code)
    for path, digest in digests.items():
        assert hashlib.sha256(open(path, 'rb').read()).hexdigest() == digest, path
    assert not glob.glob(str(tmp_path / '.*.tmp*'))
