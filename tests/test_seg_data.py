"""The synthetic ADE20K-layout dataset: layout, determinism, label conventions, and that
mmseg's own ADE20KDataset reads it with the config overrides from ade_cfg_options."""
import hashlib
import os

import cv2
import numpy as np
import pytest

from pale_mm.synthetic.ade import ADE_FIRST_CLASSES, ade_cfg_options, format_cfg_options, make_ade

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _digest(root):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            path = os.path.join(dirpath, f)
            h.update(os.path.relpath(path, root).encode())
            with open(path, 'rb') as fh:
                h.update(fh.read())
    return h.hexdigest()


@pytest.fixture(scope='module')
def ade(tmp_path_factory):
    root = tmp_path_factory.mktemp('ade')
    return make_ade(str(root), num_train=6, num_val=3, image_size=(48, 64), seed=3,
                    num_classes=4)


def test_layout_and_labels(ade):
    root = ade['root']
    assert ade['classes'] == ADE_FIRST_CLASSES[:4] and ade['num_classes'] == 4
    for split, prefix, n in (('training', 'ADE_train', 6), ('validation', 'ADE_val', 3)):
        imgs = sorted(os.listdir(os.path.join(root, 'images', split)))
        anns = sorted(os.listdir(os.path.join(root, 'annotations', split)))
        assert imgs == [f'{prefix}_{i:08d}.jpg' for i in range(1, n + 1)]
        assert anns == [f'{prefix}_{i:08d}.png' for i in range(1, n + 1)]
    seen = set()
    for split in ('training', 'validation'):
        ann_dir = os.path.join(root, 'annotations', split)
        for f in os.listdir(ann_dir):
            label = cv2.imread(os.path.join(ann_dir, f), cv2.IMREAD_UNCHANGED)
            img = cv2.imread(os.path.join(root, 'images', split, f[:-4] + '.jpg'))
            assert label.dtype == np.uint8 and label.shape == (48, 64)
            assert img.shape == (48, 64, 3)
            values = set(np.unique(label).tolist())
            assert values <= {0, 1, 2, 3, 4}
            # ADE20K convention: 0 (ignored) only on thin borders, background is class 1
            assert 0 < (label == 0).mean() < 0.25 and (label == 1).mean() > 0.2
            seen |= values
    assert seen == {0, 1, 2, 3, 4}
    frac = ade['val_pixel_fraction']
    assert len(frac) == 4 and abs(sum(frac) - 1) < 1e-4
    present = sum(f > 0 for f in frac)
    assert ade['constant_miou'] == pytest.approx(100 * max(frac) / present, abs=0.01)


def test_classes_are_told_apart_by_appearance(ade):
    """Every class has its own mean colour: the task can be learnt from local appearance."""
    root = ade['root']
    sums = {c: [] for c in range(1, 5)}
    for f in os.listdir(os.path.join(root, 'annotations', 'training')):
        label = cv2.imread(os.path.join(root, 'annotations', 'training', f),
                           cv2.IMREAD_UNCHANGED)
        img = cv2.imread(os.path.join(root, 'images', 'training', f[:-4] + '.jpg'))
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV).astype(np.float64)
        for c in sums:
            if (label == c).any():
                sums[c].append(hsv[label == c].mean(0))
    means = {c: np.mean(v, 0) for c, v in sums.items() if v}
    assert len(means) == 4
    assert means[1][1] < 40  # grey background: low saturation
    hues = [means[c][0] for c in (2, 3, 4)]  # the shapes: saturated, hues far apart
    assert all(means[c][1] > 120 for c in (2, 3, 4))
    for i in range(3):
        for j in range(i + 1, 3):
            d = abs(hues[i] - hues[j])
            assert min(d, 180 - d) > 25


def test_deterministic_from_seed(tmp_path):
    a = make_ade(str(tmp_path / 'a'), num_train=2, num_val=1, image_size=32, seed=7)
    b = make_ade(str(tmp_path / 'b'), num_train=2, num_val=1, image_size=32, seed=7)
    c = make_ade(str(tmp_path / 'c'), num_train=2, num_val=1, image_size=32, seed=8)
    assert _digest(a['root']) == _digest(b['root'])
    assert _digest(a['root']) != _digest(c['root'])
    assert {k: v for k, v in a.items() if k != 'root'} == {
        k: v for k, v in b.items() if k != 'root'}


@pytest.mark.parametrize('kwargs, match', [
    (dict(num_classes=1), r'num_classes must be an int in \[2, 7\]'),
    (dict(num_classes=8), r'num_classes must be an int in \[2, 7\]'),
    (dict(num_val=0), r'num_val must be an int >= 1'),
    (dict(image_size=(8, 64)), r'too small'),
    (dict(image_size='big'), r'image_size must be \(H, W\)'),
])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_ade(str(tmp_path), **kwargs)
    assert not os.path.exists(tmp_path / 'images')


def test_format_cfg_options_round_trip():
    from mmengine.config import DictAction
    opts = {'a.b': (64, 48), 'c': ('wall', 'sky'), 'd': [1, 2], 'e': 0, 'f': False,
            'g': '/tmp/x'}
    strings = format_cfg_options(opts)
    assert strings[0] == 'a.b=(64,48)'
    import argparse
    parser = argparse.ArgumentParser()
    parser.add_argument('--o', nargs='+', action=DictAction)
    assert parser.parse_args(['--o'] + strings).o == opts
    with pytest.raises(ValueError, match='cannot be written as a --cfg-options value'):
        format_cfg_options({'x': 'bed '})


def test_mmseg_reads_it(ade):
    """The upernet config's own ADE20KDataset + pipelines load the data with the overrides:
    labels 0..N-1 after reduce_zero_label, 255 where the PNG holds 0."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS

    import pale_mm  # noqa: F401
    init_default_scope('mmseg')
    cfg = Config.fromfile(os.path.join(ROOT, 'configs/upernet/pale_t_ade20k.py'))
    cfg.merge_from_dict(ade_cfg_options(ade))
    for loader, n in (('train_dataloader', 6), ('val_dataloader', 3), ('test_dataloader', 3)):
        ds = DATASETS.build(cfg[loader].dataset)
        assert len(ds) == n
        assert ds.metainfo['classes'] == ade['classes']
        sample = ds[0]
        seg = sample['data_samples'].gt_sem_seg.data.numpy()
        assert set(np.unique(seg).tolist()) <= {0, 1, 2, 3, 255}
        assert (seg == 255).any() and (seg == 0).any()
        if loader == 'train_dataloader':  # RandomResize + 48x64 crop
            assert tuple(sample['inputs'].shape[1:]) == tuple(seg.shape[-2:])
            assert sample['inputs'].shape[1] <= 48 and sample['inputs'].shape[2] <= 64
        else:  # test at the image size, label map unchanged
            assert tuple(sample['inputs'].shape[1:]) == (48, 64)
            raw = cv2.imread(os.path.join(ade['root'], 'annotations', 'validation',
                                          'ADE_val_00000001.png'), cv2.IMREAD_UNCHANGED)
            expect = np.where(raw == 0, 255, raw.astype(np.int64) - 1)
            np.testing.assert_array_equal(seg[0], expect)
