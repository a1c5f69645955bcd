"""pale_mm.synthetic.coco: a small COCO instance dataset that mmdet reads as is."""
import filecmp
import json
import os
import os.path as osp

import numpy as np
import pytest

from pale_mm.synthetic.coco import SHAPES, cli_cfg_options, make_coco, mmdet_cfg_options

from det_common import HEIGHT, NUM_TRAIN, NUM_VAL, WIDTH, coco_data


def _load(path):
    with open(path) as f:
        return json.load(f)


def test_layout_counts_and_return_value(tmp_path_factory):
    info = coco_data(tmp_path_factory)
    root = info['root']
    assert info['classes'] == ['square', 'circle', 'triangle']
    for split, folder, count in (('train', 'train2017', NUM_TRAIN), ('val', 'val2017', NUM_VAL)):
        ann_file = osp.join(root, 'annotations', f'instances_{folder}.json')
        assert info[split]['ann_file'] == ann_file
        assert info[split]['img_dir'] == osp.join(root, folder)
        coco = _load(ann_file)
        assert [c['name'] for c in coco['categories']] == info['classes']
        assert [c['id'] for c in coco['categories']] == [1, 2, 3]
        assert len(coco['images']) == count == info[split]['num_images']
        assert len(coco['annotations']) == info[split]['num_instances'] >= count
        assert len({a['id'] for a in coco['annotations']}) == len(coco['annotations'])
        for img in coco['images']:
            assert osp.isfile(osp.join(root, folder, img['file_name']))
            assert (img['height'], img['width']) == (HEIGHT, WIDTH)
        for a in coco['annotations']:
            x, y, w, h = a['bbox']
            assert 0 <= x and 0 <= y and x + w <= WIDTH + 1 and y + h <= HEIGHT + 1
            assert w > 4 and h > 4 and a['iscrowd'] == 0 and a['category_id'] in (1, 2, 3)
    assert NUM_VAL % 2 == 1  # the distributed evaluation test needs uneven shares


def test_masks_are_the_drawn_shapes(tmp_path_factory):
    """Each polygon covers pixels of one colour that differs from the background."""
    import cv2
    from pycocotools.coco import COCO
    info = coco_data(tmp_path_factory)
    coco = COCO(info['val']['ann_file'])
    for img_info in coco.loadImgs(coco.getImgIds()):
        img = cv2.imread(osp.join(info['val']['img_dir'], img_info['file_name']))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_info['id']]))
        union = np.zeros(img.shape[:2], bool)
        for a in anns:
            mask = coco.annToMask(a).astype(bool)
            assert abs(mask.sum() - a['area']) <= 0.05 * a['area'] + 8
            colours = np.unique(img[mask].reshape(-1, 3), axis=0)
            assert len(colours) == 1, 'a mask spills over its shape'
            assert not (union & mask).any(), 'shapes overlap'
            union |= mask
            ys, xs = np.nonzero(mask)
            x, y, w, h = a['bbox']
            assert abs(xs.min() - x) <= 1.5 and abs(xs.max() + 1 - (x + w)) <= 1.5
            assert abs(ys.min() - y) <= 1.5 and abs(ys.max() + 1 - (y + h)) <= 1.5


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    a = make_coco(tmp_path / 'a', num_train=2, num_val=1, image_size=(48, 64), seed=3)
    b = make_coco(tmp_path / 'b', num_train=2, num_val=1, image_size=(48, 64), seed=3)
    c = make_coco(tmp_path / 'c', num_train=2, num_val=1, image_size=(48, 64), seed=4)
    for split in ('train', 'val'):
        assert _load(a[split]['ann_file']) == _load(b[split]['ann_file'])
        assert _load(a[split]['ann_file']) != _load(c[split]['ann_file'])
        for name in sorted(os.listdir(a[split]['img_dir'])):
            assert filecmp.cmp(osp.join(a[split]['img_dir'], name),
                               osp.join(b[split]['img_dir'], name), shallow=False)
    # the val split does not depend on the number of train images
    d = make_coco(tmp_path / 'd', num_train=5, num_val=1, image_size=(48, 64), seed=3)
    assert _load(d['val']['ann_file']) == _load(a['val']['ann_file'])


def test_other_classes(tmp_path):
    info = make_coco(tmp_path, num_train=1, num_val=1, image_size=(64, 64),
                     classes=('hexagon', 'diamond'), max_objects=4)
    names = [c['name'] for c in _load(info['train']['ann_file'])['categories']]
    assert names == ['hexagon', 'diamond'] == info['classes']
    options = mmdet_cfg_options(info)
    assert options['model.roi_head.bbox_head.num_classes'] == 2
    assert options['test_dataloader.dataset.metainfo.classes'] == ('hexagon', 'diamond')


@pytest.mark.parametrize('kwargs, match', [
    (dict(classes=('square', 'star')), r"unknown classes \['star'\]"),
    (dict(classes=()), 'classes is empty'),
    (dict(classes=('circle', 'circle')), 'duplicates'),
    (dict(image_size=(16, 64)), 'too small'),
    (dict(num_val=0), 'num_val must be a positive int'),
])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_coco(tmp_path, **kwargs)
    assert set(SHAPES) >= {'square', 'circle', 'triangle'}


def test_cfg_options_parse_back(tmp_path_factory):
    """The --cfg-options strings give back the same values through mmengine's DictAction."""
    import argparse

    from mmengine.config import DictAction
    info = coco_data(tmp_path_factory)
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    parsed = parser.parse_args(['--cfg-options', *cli_cfg_options(info)]).cfg_options
    assert parsed == mmdet_cfg_options(info)


def test_ground_truth_scores_full_marks_with_coco_metric(tmp_path_factory):
    """mmdet's CocoMetric (pycocotools), fed the ground truth of the val split as
    predictions, gives bbox and segm mAP 1.0: boxes, polygons and the dataset mmdet builds
    from the json agree."""
    import torch
    from mmdet.datasets import CocoDataset
    from mmdet.evaluation import CocoMetric
    from pycocotools import mask as mask_utils
    info = coco_data(tmp_path_factory)
    dataset = CocoDataset(data_root=info['root'], ann_file=info['val']['ann_file'],
                          data_prefix=dict(img='val2017/'), test_mode=True,
                          metainfo=dict(classes=tuple(info['classes'])), pipeline=[])
    assert len(dataset) == NUM_VAL
    metric = CocoMetric(ann_file=info['val']['ann_file'], metric=['bbox', 'segm'])
    metric.dataset_meta = dataset.metainfo
    coco = _load(info['val']['ann_file'])
    for i in range(len(dataset)):
        data = dataset.get_data_info(i)
        anns = [a for a in coco['annotations'] if a['image_id'] == data['img_id']]
        rles = [mask_utils.merge(mask_utils.frPyObjects(a['segmentation'], HEIGHT, WIDTH))
                for a in anns]
        masks = np.stack([mask_utils.decode(r) for r in rles]).astype(bool)
        inst = data['instances']
        pred = dict(bboxes=torch.tensor([x['bbox'] for x in inst], dtype=torch.float32),
                    labels=torch.tensor([x['bbox_label'] for x in inst]),
                    scores=torch.ones(len(inst)), masks=torch.from_numpy(masks))
        metric.process({}, [dict(img_id=data['img_id'], ori_shape=(HEIGHT, WIDTH),
                                 pred_instances=pred)])
    results = metric.evaluate(len(dataset))
    assert results['coco/bbox_mAP'] == 1.0
    assert results['coco/segm_mAP'] == 1.0
