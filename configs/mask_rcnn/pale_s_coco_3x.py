# Mask R-CNN + FPN with a Pale-S backbone, COCO, 3x schedule (36 epochs), multi-scale
# training: the schedule and augmentation of pale_t_coco_3x.py, the model of
# pale_s_coco_1x.py (mmengine does not merge two bases that both set the model).
_base_ = './pale_t_coco_3x.py'

model = dict(
    backbone=dict(
        arch='small',  # C=96, depths 2-2-16-2, heads 4-8-16-32
        drop_path_rate=0.3,  # not in the paper; Swin-S's Mask R-CNN value
        init_cfg=dict(checkpoint='{{ fileDirname }}/../../checkpoints/pale_s_in1k.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
