"""A small COCO-format instance segmentation dataset of synthetic shapes.

Each image is a noisy background with a few filled shapes (squares, circles, triangles,
...) that do not overlap, so every object's polygon is exactly its visible mask. The same
``seed`` always gives the same files. The layout is the one mmdet's COCO configs expect::

    ROOT/annotations/instances_train2017.json
    ROOT/annotations/instances_val2017.json
    ROOT/train2017/000000000001.png ...
    ROOT/val2017/000000000001.png ...

:func:`make_coco` writes it; :func:`mmdet_cfg_options` gives the config overrides that point
an mmdet COCO instance config (``mmdet::_base_/datasets/coco_instance.py`` and the configs
in ``configs/mask_rcnn``) at it, and :func:`cli_cfg_options` the same as ``--cfg-options``
arguments::

    from pale_mm.synthetic.coco import make_coco, cli_cfg_options
    info = make_coco('data/synthetic_coco', image_size=(128, 160))
    # python tools/train.py configs/mask_rcnn/pale_t_coco_1x.py --cfg-options \\
    #     <cli_cfg_options(info)> model.backbone.init_cfg=None
"""
import json
import math
import os
import os.path as osp
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

from .cfg_options import format_cfg_options

DEFAULT_CLASSES = ('square', 'circle', 'triangle')
SHAPES = ('square', 'circle', 'triangle', 'rectangle', 'diamond', 'hexagon')
SPLITS = (('train', 'train2017'), ('val', 'val2017'))
_SHIFT = 4  # cv2 fixed-point bits: polygons are drawn at 1/16 pixel precision


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Vertices (N, 2) in (x, y) of a shape centred on (cx, cy) with outer radius r."""
    if shape == 'circle':
        n, start = 32, 0.
    elif shape == 'square':
        n, start = 4, math.pi / 4 + angle
    elif shape == 'triangle':
        n, start = 3, -math.pi / 2 + angle
    elif shape == 'diamond':
        n, start = 4, angle
    elif shape == 'hexagon':
        n, start = 6, angle
    elif shape == 'rectangle':
        a = angle
        pts = np.array([[1.0, 0.5], [-1.0, 0.5], [-1.0, -0.5], [1.0, -0.5]]) * r * 0.85
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        return pts @ rot.T + np.array([cx, cy])
    else:  # pragma: no cover - names are checked in make_coco
        raise ValueError(shape)
    t = start + 2 * math.pi * np.arange(n) / n
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _check_classes(classes: Sequence[str]) -> Tuple[str, ...]:
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(',') if c.strip()]
    classes = tuple(classes)
    if not classes:
        raise ValueError(f'make_coco: classes is empty; choose from {SHAPES}')
    unknown = [c for c in classes if c not in SHAPES]
    if unknown:
        raise ValueError(f'make_coco: unknown classes {unknown}; the generator draws {SHAPES}')
    if len(set(classes)) != len(classes):
        raise ValueError(f'make_coco: classes {classes} has duplicates')
    return classes


def _make_image(rng: np.random.RandomState, height: int, width: int,
                classes: Sequence[str], max_objects: int):
    """Draw one image; returns (image BGR uint8, [(class index, polygon float (N, 2))])."""
    base = rng.randint(40, 200, size=3)
    img = np.clip(base[None, None] + rng.normal(0, 12, size=(height, width, 3)), 0, 255)
    img = img.astype(np.uint8)
    short = min(height, width)
    objects, boxes = [], []
    n = rng.randint(1, max_objects + 1)
    for _ in range(50 * n):  # rejection sampling of non-overlapping placements
        if len(objects) == n:
            break
        r = rng.uniform(0.09, 0.22) * short
        cx = rng.uniform(r + 1, width - r - 1)
        cy = rng.uniform(r + 1, height - r - 1)
        box = (cx - r - 2, cy - r - 2, cx + r + 2, cy + r + 2)
        if any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3]
               for b in boxes):
            continue
        label = rng.randint(len(classes))
        poly = _polygon(classes[label], cx, cy, r, rng.uniform(0, math.pi / 2))
        # a colour far from the background, so every shape is visible
        color = (base + rng.randint(70, 130, size=3) * rng.choice([-1, 1], size=3)) % 256
        pts = np.round(poly * (1 << _SHIFT)).astype(np.int32)
        cv2.fillPoly(img, [pts], color=[int(c) for c in color], lineType=cv2.LINE_8,
                     shift=_SHIFT)
        boxes.append(box)
        # cv2 puts pixel (i, j) at integer coordinates, COCO at [j, j+1) x [i, i+1)
        objects.append((label, pts.astype(np.float64) / (1 << _SHIFT) + 0.5))
    return img, objects


def _annotation(ann_id: int, image_id: int, category_id: int, poly: np.ndarray) -> Dict:
    x0, y0 = poly.min(axis=0)
    x1, y1 = poly.max(axis=0)
    xs, ys = poly[:, 0], poly[:, 1]
    area = 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))
    return dict(id=ann_id, image_id=image_id, category_id=category_id,
                segmentation=[[round(float(v), 2) for v in poly.reshape(-1)]],
                area=round(area, 2),
                bbox=[round(float(x0), 2), round(float(y0), 2),
                      round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
                iscrowd=0)


def make_coco(root: str, num_train: int = 16, num_val: int = 7,
              image_size: Tuple[int, int] = (128, 160), seed: int = 0,
              classes: Sequence[str] = DEFAULT_CLASSES, max_objects: int = 3) -> Dict:
    """Write a COCO-format instance segmentation dataset of synthetic shapes under ``root``.

    Args:
        root: output folder (created; files already there with the same names are
            overwritten).
        num_train, num_val: number of images per split (``num_val`` is odd by default, so
            that two evaluation processes get uneven shares).
        image_size: (height, width) of every image, at least 32 each.
        seed: everything drawn follows from it; the same seed writes the same files.
        classes: shape names, in category-id order (ids 1, 2, ...); any of
            :data:`SHAPES`.
        max_objects: at most this many shapes per image (at least one).

    Returns:
        dict with ``root``, ``classes``, ``image_size``, ``seed`` and per split (``train``,
        ``val``) the ``ann_file``, ``img_dir`` (absolute paths), ``img_prefix`` (relative to
        root), ``num_images`` and ``num_instances``.
    """
    classes = _check_classes(classes)
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    if height < 32 or width < 32:
        raise ValueError(f'make_coco: image_size {image_size} is too small; use at least '
                         '(32, 32) (mmdet filters out images under 32 pixels)')
    for name, n in (('num_train', num_train), ('num_val', num_val)):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f'make_coco: {name} must be a positive int, got {n!r}')
    if max_objects < 1:
        raise ValueError(f'make_coco: max_objects must be >= 1, got {max_objects}')

    root = osp.abspath(root)
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    categories = [dict(id=i + 1, name=c, supercategory='shape') for i, c in enumerate(classes)]
    info = dict(root=root, classes=list(classes), image_size=(height, width), seed=seed)
    for split_idx, ((split, folder), count) in enumerate(zip(SPLITS, (num_train, num_val))):
        # one generator per split: the val images do not change with num_train
        rng = np.random.RandomState([seed, split_idx])
        img_dir = osp.join(root, folder)
        os.makedirs(img_dir, exist_ok=True)
        images, annotations = [], []
        for image_id in range(1, count + 1):
            img, objects = _make_image(rng, height, width, classes, max_objects)
            file_name = f'{image_id:012d}.png'
            if not cv2.imwrite(osp.join(img_dir, file_name), img):
                raise OSError(f'make_coco: could not write {osp.join(img_dir, file_name)}')
            images.append(dict(id=image_id, file_name=file_name, height=height, width=width))
            for label, poly in objects:
                annotations.append(
                    _annotation(len(annotations) + 1, image_id, label + 1, poly))
        ann_file = osp.join(root, 'annotations', f'instances_{folder}.json')
        with open(ann_file, 'w') as f:
            json.dump(dict(info=dict(description=f'pale_mm synthetic shapes, seed {seed}'),
                           licenses=[], images=images, annotations=annotations,
                           categories=categories), f)
        info[split] = dict(ann_file=ann_file, img_dir=img_dir, img_prefix=folder + '/',
                           num_images=count, num_instances=len(annotations))
    return info


def mmdet_cfg_options(info: Dict) -> Dict:
    """Overrides (``Config.merge_from_dict`` keys) that point an mmdet COCO instance config
    at the data :func:`make_coco` wrote: data roots, files, class names for the three
    loaders and the two evaluators, and ``num_classes`` of Mask R-CNN's box and mask
    heads."""
    options = {}
    classes = tuple(info['classes'])
    for loader, split in (('train_dataloader', 'train'), ('val_dataloader', 'val'),
                          ('test_dataloader', 'val')):
        prefix = f'{loader}.dataset.'
        options[prefix + 'data_root'] = info['root'] + '/'
        options[prefix + 'ann_file'] = info[split]['ann_file']
        options[prefix + 'data_prefix.img'] = info[split]['img_prefix']
        options[prefix + 'metainfo.classes'] = classes
    for evaluator in ('val_evaluator', 'test_evaluator'):
        options[f'{evaluator}.ann_file'] = info['val']['ann_file']
    for head in ('bbox_head', 'mask_head'):
        options[f'model.roi_head.{head}.num_classes'] = len(classes)
    return options


def cli_cfg_options(info: Dict) -> List[str]:
    """:func:`mmdet_cfg_options` as ``KEY=VALUE`` strings for ``--cfg-options``."""
    return format_cfg_options(mmdet_cfg_options(info))
