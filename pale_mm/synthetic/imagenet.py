"""A small image-classification dataset in the ImageNet layout, deterministic from a seed.

::

    ROOT/train/n00000000/n00000000_0001.JPEG
    ROOT/meta/train.txt   (lines such as "n00000000/n00000000_0001.JPEG 0")
    ROOT/val/n00000000/n00000000_0001.JPEG      ROOT/meta/val.txt

This is the layout mmpretrain's ``ImageNet`` dataset reads with ``data_root=ROOT`` and
``split='train'|'val'`` (the ``meta/*.txt`` lists give the labels, so the number of class
folders need not be 1000). Each class is one texture (horizontal stripes, vertical stripes,
checks, dots, a grid, ...) in its own hue on a noisy grey ground, at a random scale, phase
and position, so a classifier has something to learn. :func:`imagenet_cfg_options` gives the
config overrides that point a ``configs/imagenet`` config at the generated data.
"""
import colorsys
import os
import os.path as osp
from typing import Dict, Optional

import cv2
import numpy as np

from .ade import PATTERNS, _pattern

SPLITS = ('train', 'val')
MAX_CLASSES = 2 * len(PATTERNS)  # each pattern in two hue families


def _class_look(label: int, num_classes: int):
    """(pattern, rgb colour) of a class: patterns first, then a second hue family."""
    kind = PATTERNS[label % len(PATTERNS)]
    hue = (label / max(1, num_classes)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return kind, np.array([b, g, r]) * 255.0  # BGR for cv2


def _make_image(label: int, num_classes: int, h: int, w: int, rng) -> np.ndarray:
    """(h, w, 3) uint8 BGR image of class ``label``: a textured patch on a noisy ground."""
    image = rng.normal(110, 25, size=(h, w, 1)).clip(0, 255) * np.ones((1, 1, 3))
    kind, colour = _class_look(label, num_classes)
    ph, pw = int(rng.integers(h // 2, h + 1)), int(rng.integers(w // 2, w + 1))
    y0, x0 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    period = int(rng.integers(4, 9))
    texture = _pattern(kind, ph, pw, (int(rng.integers(period)), int(rng.integers(period))),
                       period)
    image[y0:y0 + ph, x0:x0 + pw] = texture[..., None] * colour
    return image.clip(0, 255).astype(np.uint8)


def make_imagenet(root: str, num_classes: int = 5, num_train: int = 4, num_val: int = 2,
                  image_size=(80, 80), seed: int = 0) -> Dict:
    """Write the dataset under ``root``; ``num_train`` / ``num_val`` images per class.

    Returns:
        dict with ``root``, ``num_classes``, ``image_size``, ``num_train``, ``num_val``
        (totals over the classes) and ``seed``.
    """
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f'make_imagenet: num_classes must lie in [2, {MAX_CLASSES}], got '
                         f'{num_classes}')
    if num_train < 1 or num_val < 1:
        raise ValueError('make_imagenet: num_train and num_val (images per class) must be '
                         f'>= 1, got {num_train} and {num_val}')
    h, w = (int(s) for s in image_size)
    if min(h, w) < 16:
        raise ValueError(f'make_imagenet: image_size must be at least 16x16, got {h}x{w}')
    rng = np.random.default_rng(seed)
    os.makedirs(osp.join(root, 'meta'), exist_ok=True)
    counts = dict(train=num_train, val=num_val)
    for split in SPLITS:
        lines = []
        for label in range(num_classes):
            wnid = f'n{label:08d}'
            folder = osp.join(root, split, wnid)
            os.makedirs(folder, exist_ok=True)
            for i in range(counts[split]):
                name = f'{wnid}_{i + 1:04d}.JPEG'
                image = _make_image(label, num_classes, h, w, rng)
                if not cv2.imwrite(osp.join(folder, name), image,
                                   [cv2.IMWRITE_JPEG_QUALITY, 95]):
                    raise OSError(f'make_imagenet: could not write {osp.join(folder, name)}')
                lines.append(f'{wnid}/{name} {label}\n')
        with open(osp.join(root, 'meta', f'{split}.txt'), 'w') as f:
            f.writelines(lines)
    return dict(root=str(root), num_classes=int(num_classes), image_size=(h, w),
                num_train=num_train * num_classes, num_val=num_val * num_classes, seed=seed)


def imagenet_cfg_options(info: Dict, crop_size: Optional[int] = None) -> Dict:
    """``--cfg-options`` that point a ``configs/imagenet`` config at data from
    :func:`make_imagenet`: data roots, the number of classes (head, Mixup/CutMix one-hots,
    top-k), crops of ``crop_size`` (default: the image's shorter side rounded down to a
    multiple of 32) and no worker processes.
    """
    h, w = info['image_size']
    crop = int(crop_size) if crop_size else max(32, min(h, w) // 32 * 32)
    n = info['num_classes']
    opts = {
        'model.head.num_classes': n,
        'data_preprocessor.num_classes': n,
        'val_evaluator.topk': (1, min(5, n)),
        # mmpretrain's imagenet_bs64_swin_224.py: train 1 = RandomResizedCrop;
        # test 1 = ResizeEdge (256 for 224 crops), 2 = CenterCrop
        'train_dataloader.dataset.pipeline.1.scale': crop,
    }
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        opts[f'{loader}.dataset.data_root'] = info['root']
        opts[f'{loader}.num_workers'] = 0
        opts[f'{loader}.persistent_workers'] = False
        if loader != 'train_dataloader':
            opts[f'{loader}.dataset.pipeline.1.scale'] = round(crop * 256 / 224)
            opts[f'{loader}.dataset.pipeline.2.crop_size'] = crop
    return opts
