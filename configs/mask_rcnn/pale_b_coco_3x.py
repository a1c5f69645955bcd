# Mask R-CNN + FPN with a Pale-B backbone, COCO, 3x schedule (36 epochs), multi-scale
# training: the schedule and augmentation of pale_t_coco_3x.py, the model of
# pale_b_coco_1x.py (mmengine does not merge two bases that both set the model).
_base_ = './pale_t_coco_3x.py'

model = dict(
    backbone=dict(
        arch='base',  # C=128, depths 2-2-16-2, heads 4-8-16-32
        drop_path_rate=0.3,  # not in the paper; Swin-B's Mask R-CNN value
        init_cfg=dict(checkpoint='{{ fileDirname }}/../../checkpoints/pale_b_in1k.pth')),
    neck=dict(in_channels=[128, 256, 512, 1024]))
