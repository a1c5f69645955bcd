# UperNet + auxiliary FCN head with a Pale-B backbone on ADE20K; everything else as Pale-T.
# Paper (ADE20K table): mIoU 52.2 single-scale, 53.0 multi-scale.
_base_ = ['./pale_t_ade20k.py']
model = dict(
    backbone=dict(
        arch='base',  # C=128, depths 2-2-16-2, heads 4-8-16-32
        drop_path_rate=0.3,  # not given by the paper: Swin's ADE20K recipe (0.3 for T/S/B)
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/pale_b_in1k.pth')),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
