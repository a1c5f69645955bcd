# Mask R-CNN + FPN with a Pale-S backbone, COCO, 1x schedule (12 epochs).
# Paper: box mAP 48.4, mask mAP 43.7, 432G FLOPs at 1280x800.
_base_ = './pale_t_coco_1x.py'

model = dict(
    backbone=dict(
        arch='small',  # C=96, depths 2-2-16-2, heads 4-8-16-32
        drop_path_rate=0.3,  # not in the paper; Swin-S's Mask R-CNN value
        init_cfg=dict(checkpoint='{{ fileDirname }}/../../checkpoints/pale_s_in1k.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
