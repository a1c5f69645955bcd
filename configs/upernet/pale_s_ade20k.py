# UperNet + auxiliary FCN head with a Pale-S backbone on ADE20K; everything else as Pale-T.
# Paper (ADE20K table): mIoU 51.2 single-scale, 52.2 multi-scale.
_base_ = ['./pale_t_ade20k.py']
model = dict(
    backbone=dict(
        arch='small',  # C=96, depths 2-2-16-2, heads 4-8-16-32
        drop_path_rate=0.3,  # not given by the paper: Swin's ADE20K recipe (0.3 for T/S/B)
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/pale_s_in1k.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
