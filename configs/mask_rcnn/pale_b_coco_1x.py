# Mask R-CNN + FPN with a Pale-B backbone, COCO, 1x schedule (12 epochs).
# Paper: box mAP 49.3, mask mAP 44.2, 595G FLOPs at 1280x800.
_base_ = './pale_t_coco_1x.py'

model = dict(
    backbone=dict(
        arch='base',  # C=128, depths 2-2-16-2, heads 4-8-16-32
        drop_path_rate=0.3,  # not in the paper; Swin-B's Mask R-CNN value
        init_cfg=dict(checkpoint='{{ fileDirname }}/../../checkpoints/pale_b_in1k.pth')),
    neck=dict(in_channels=[128, 256, 512, 1024]))
