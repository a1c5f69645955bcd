"""A small semantic-segmentation dataset in the ADE20K layout, deterministic from a seed.

::

    ROOT/images/training/ADE_train_00000001.jpg    ROOT/annotations/training/ADE_train_00000001.png
    ROOT/images/validation/ADE_val_00000001.jpg    ROOT/annotations/validation/ADE_val_00000001.png

Label PNGs follow mmseg's ADE20K convention (``ADE20KDataset`` loads them with
``reduce_zero_label=True``): 0 is "other / unlabelled" and is ignored, 1..N are the classes and
become 0..N-1 in training. Class 1 is the background (a grey, blotchy texture); classes 2..N
are ellipses, rectangles and triangles, each class with its own hue and its own pattern
(horizontal stripes, vertical stripes, checks, dots, ...), so the class of a pixel can be told
from its neighbourhood. A one-pixel band where two regions meet is left at 0, like the
unlabelled borders of real ADE20K annotations.

The classes are named after ADE20K's first N classes (``wall``, ``building``, ``sky``, ...),
so that mmseg's ``ADE20KDataset`` can be restricted to them with ``metainfo.classes`` without
remapping any label; :func:`ade_cfg_options` gives the config overrides that point a
``configs/upernet`` config at the generated data.
"""
import colorsys
import os
import os.path as osp
from typing import Dict, Optional, Sequence, Tuple

import cv2
import numpy as np

from .cfg_options import format_cfg_options  # noqa: F401  (re-exported)

# ADE20K's first classes (mmseg's ADE20KDataset.METAINFO order); the 8th, 'bed ', holds a
# space, which --cfg-options cannot carry, so a synthetic dataset has at most 7 classes.
ADE_FIRST_CLASSES = ('wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road')
MAX_CLASSES = len(ADE_FIRST_CLASSES)
IGNORE = 0  # label value mmseg ignores in ADE20K annotations (reduce_zero_label=True)
PATTERNS = ('hstripes', 'vstripes', 'checks', 'dots', 'plain', 'grid')
SPLITS = (('training', 'ADE_train'), ('validation', 'ADE_val'))


def _pattern(kind: str, h: int, w: int, phase: Tuple[int, int], period: int) -> np.ndarray:
    """A (h, w) brightness pattern in [0.55, 1]."""
    yy, xx = np.mgrid[0:h, 0:w]
    yy = yy + phase[0]
    xx = xx + phase[1]
    half = period // 2
    if kind == 'hstripes':
        on = (yy % period) < half
    elif kind == 'vstripes':
        on = (xx % period) < half
    elif kind == 'checks':
        on = ((yy // half) + (xx // half)) % 2 == 0
    elif kind == 'dots':
        on = ~(((yy % period) < half) & ((xx % period) < half))
    elif kind == 'grid':
        on = ((yy % period) > 0) & ((xx % period) > 0)
    else:  # plain
        on = np.ones((h, w), bool)
    return np.where(on, 1.0, 0.55)


def _class_colour(cls: int, num_classes: int) -> Tuple[float, float]:
    """(hue in [0, 1), saturation) of class ``cls`` (1-based; 1 is the grey background)."""
    if cls == 1:
        return 0.0, 0.0
    return (cls - 2) / (num_classes - 1), 0.85


def _render_class(cls: int, num_classes: int, h: int, w: int,
                  rng: np.random.RandomState) -> np.ndarray:
    """A (h, w, 3) float RGB texture in [0, 1] for class ``cls``, jittered per image."""
    hue, sat = _class_colour(cls, num_classes)
    hue = (hue + rng.uniform(-0.03, 0.03)) % 1.0
    if cls == 1:
        # background: grey, low-frequency blotches plus grain
        small = rng.uniform(0.35, 0.65, size=(max(2, h // 16), max(2, w // 16)))
        value = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        rgb = np.repeat(value[..., None], 3, axis=2)
    else:
        kind = PATTERNS[(cls - 2) % len(PATTERNS)]
        period = 6 + 2 * (((cls - 2) // len(PATTERNS)) % 3)
        phase = tuple(int(p) for p in rng.randint(0, period, size=2))
        value = _pattern(kind, h, w, phase, period) * rng.uniform(0.75, 1.0)
        r, g, b = colorsys.hsv_to_rgb(hue, sat, 1.0)
        rgb = value[..., None] * np.array([r, g, b])[None, None]
    rgb = rgb + rng.normal(0, 0.03, size=rgb.shape)
    return np.clip(rgb, 0, 1)


def _draw_shape(mask: np.ndarray, rng: np.random.RandomState) -> None:
    """Fill one random ellipse, rectangle or triangle into the uint8 ``mask`` with 1."""
    h, w = mask.shape
    side = min(h, w)
    cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
    ry, rx = rng.uniform(0.12, 0.3, size=2) * side
    kind = rng.randint(3)
    if kind == 0:
        cv2.ellipse(mask, (int(cx), int(cy)), (int(rx), int(ry)), float(rng.uniform(0, 180)),
                    0, 360, 1, thickness=-1)
    elif kind == 1:
        cv2.rectangle(mask, (int(cx - rx), int(cy - ry)), (int(cx + rx), int(cy + ry)), 1,
                      thickness=-1)
    else:
        angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
        pts = np.stack([cx + 1.3 * rx * np.cos(angles), cy + 1.3 * ry * np.sin(angles)], 1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)


def _make_sample(h: int, w: int, num_classes: int,
                 rng: np.random.RandomState) -> Tuple[np.ndarray, np.ndarray]:
    """One (BGR uint8 image, uint8 label map with values 0..num_classes)."""
    label = np.ones((h, w), np.uint8)  # class 1: background
    for _ in range(rng.randint(2, 5)):
        mask = np.zeros((h, w), np.uint8)
        _draw_shape(mask, rng)
        label[mask > 0] = rng.randint(2, num_classes + 1)
    image = np.zeros((h, w, 3), np.float64)
    for cls in np.unique(label):
        where = label == cls
        image[where] = _render_class(int(cls), num_classes, h, w, rng)[where]
    # unlabelled one-pixel band where two regions meet
    edge = np.zeros((h, w), bool)
    edge[:, 1:] |= label[:, 1:] != label[:, :-1]
    edge[1:, :] |= label[1:, :] != label[:-1, :]
    label[edge] = IGNORE
    bgr = np.round(image[..., ::-1] * 255).astype(np.uint8)
    return bgr, label


def _check_args(root, num_train, num_val, image_size, num_classes) -> Tuple[int, int]:
    if not isinstance(root, (str, os.PathLike)) or not str(root):
        raise ValueError(f'make_ade: root must be a directory path, got {root!r}')
    for name, n, least in (('num_train', num_train, 1), ('num_val', num_val, 1)):
        if not isinstance(n, (int, np.integer)) or n < least:
            raise ValueError(f'make_ade: {name} must be an int >= {least}, got {n!r}')
    try:
        h, w = (int(image_size), int(image_size)) if np.isscalar(image_size) else (
            int(image_size[0]), int(image_size[1]))
    except (TypeError, ValueError, IndexError):
        raise ValueError(f'make_ade: image_size must be (H, W) or an int, got {image_size!r}')
    if h < 16 or w < 16:
        raise ValueError(f'make_ade: image_size {image_size!r} is too small; use at least '
                         '16x16 (the model downsamples by 32, 64x64 or more is sensible)')
    if not isinstance(num_classes, (int, np.integer)) or not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(
            f'make_ade: num_classes must be an int in [2, {MAX_CLASSES}] (background plus '
            f'shapes, named after ADE20K\'s first classes {ADE_FIRST_CLASSES}), got '
            f'{num_classes!r}')
    return h, w


def make_ade(root: str, num_train: int = 16, num_val: int = 5,
             image_size: Sequence[int] = (64, 64), seed: int = 0,
             num_classes: int = 5) -> Dict:
    """Write a synthetic ADE20K-layout dataset under ``root``; the same arguments always
    give the same files.

    Args:
        root: dataset root (what a config calls ``data_root``); created if needed. Files of
            an earlier call with the same names are overwritten.
        num_train / num_val: number of training / validation images.
        image_size: (H, W) of every image.
        seed: random seed.
        num_classes: classes N (2..7) including the background; label values 1..N, 0 ignored.

    Returns:
        dict with ``root``, ``classes`` (names, in label order 1..N), ``num_classes``,
        ``image_size``, ``num_train``, ``num_val``, ``seed``, ``val_pixel_fraction`` (share
        of each class among the labelled validation pixels) and ``constant_miou`` (mIoU in
        percent on the validation split of predicting its most frequent class everywhere,
        the bar a trained model has to clear).
    """
    h, w = _check_args(root, num_train, num_val, image_size, num_classes)
    rng = np.random.RandomState(seed)
    counts = {'training': int(num_train), 'validation': int(num_val)}
    val_hist = np.zeros(num_classes + 1, np.int64)
    for split, prefix in SPLITS:
        img_dir = osp.join(root, 'images', split)
        ann_dir = osp.join(root, 'annotations', split)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        for i in range(counts[split]):
            image, label = _make_sample(h, w, num_classes, rng)
            stem = f'{prefix}_{i + 1:08d}'
            if not cv2.imwrite(osp.join(img_dir, stem + '.jpg'), image,
                               [cv2.IMWRITE_JPEG_QUALITY, 95]):
                raise OSError(f'make_ade: could not write {osp.join(img_dir, stem)}.jpg')
            if not cv2.imwrite(osp.join(ann_dir, stem + '.png'), label):
                raise OSError(f'make_ade: could not write {osp.join(ann_dir, stem)}.png')
            if split == 'validation':
                val_hist += np.bincount(label.ravel(), minlength=num_classes + 1)
    labelled = val_hist[1:]
    fraction = labelled / max(1, labelled.sum())
    present = int((labelled > 0).sum())
    return dict(
        root=str(root),
        classes=ADE_FIRST_CLASSES[:num_classes],
        num_classes=int(num_classes),
        image_size=(h, w),
        num_train=counts['training'],
        num_val=counts['validation'],
        seed=seed,
        val_pixel_fraction=[round(float(f), 6) for f in fraction],
        constant_miou=round(100.0 * float(fraction.max()) / max(1, present), 2),
    )


def ade_cfg_options(info: Dict, crop_size: Optional[Sequence[int]] = None) -> Dict:
    """``--cfg-options`` that point a ``configs/upernet`` config at data from
    :func:`make_ade`: data roots, the N classes (datasets, evaluation and both heads), crop
    and test sizes equal to the image size (or ``crop_size``), and no worker processes.

    Returns a flat dict (``Config.merge_from_dict`` takes it as is; :func:`format_cfg_options`
    turns it into ``key=value`` strings for the command line).
    """
    h, w = info['image_size']
    ch, cw = (h, w) if crop_size is None else (int(crop_size[0]), int(crop_size[1]))
    # mmseg sizes are (w, h); resize the images to about their own size, crop to (ch, cw)
    scale = (max(w, cw), max(h, ch))
    opts = {
        'model.data_preprocessor.size': (ch, cw),
        'model.decode_head.num_classes': info['num_classes'],
        'model.auxiliary_head.num_classes': info['num_classes'],
        # train pipeline of mmseg's ade20k.py: 2 = RandomResize, 3 = RandomCrop
        'train_dataloader.dataset.pipeline.2.scale': scale,
        'train_dataloader.dataset.pipeline.3.crop_size': (ch, cw),
        # single-scale test at the image size; --tta's views scale from the same size
        'tta_pipeline.1.transforms.0.0.scale': scale,
    }
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        opts[f'{loader}.dataset.data_root'] = info['root']
        opts[f'{loader}.dataset.metainfo.classes'] = tuple(info['classes'])
        opts[f'{loader}.num_workers'] = 0
        opts[f'{loader}.persistent_workers'] = False
        if loader != 'train_dataloader':
            opts[f'{loader}.dataset.pipeline.1.scale'] = scale
    return opts
