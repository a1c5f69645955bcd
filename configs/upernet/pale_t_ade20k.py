# UperNet + auxiliary FCN head with a Pale-T backbone on ADE20K (150 classes).
# Paper (Wu et al., AAAI 2022, ADE20K table): 160k iterations, 512x512 crops, batch 16;
# mIoU 50.4 single-scale, 51.2 multi-scale.
#   python tools/train.py configs/upernet/pale_t_ade20k.py                  (1 process)
#   bash tools/dist_train.sh configs/upernet/pale_t_ade20k.py 8              (the paper's 8x2)
#   python tools/test.py configs/upernet/pale_t_ade20k.py CKPT [--tta]       (--tta: multi-scale)
# Everything not named below comes from mmseg's own base configs: the UperNet head (512
# channels, pool scales 1/2/3/6) and the FCN auxiliary head on stage 3 with loss weight 0.4
# (upernet_swin.py), the ADE20K pipeline (random resize of 2048x512 by 0.5-2.0, 512x512 crop,
# flip, photometric distortion; test at 2048x512 as a whole image), the 160k iteration loop
# with validation and checkpoints every 16k iterations, and the runtime.
_base_ = [
    'mmseg::_base_/models/upernet_swin.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
custom_imports = dict(imports=['pale_mm'], allow_failed_imports=False)
# safe checkpoint loading, atomic checkpoints and last_checkpoint (pale_mm/hardening.py)
runner_type = 'HardenedRunner'

crop_size = (512, 512)  # paper
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        _delete_=True,
        type='PaleTransformer',
        arch='tiny',  # C=64, depths 2-2-16-2, heads 2-4-8-16, pale size 7
        drop_path_rate=0.3,  # not given by the paper: Swin's ADE20K recipe (0.3 for T/S/B)
        out_indices=(0, 1, 2, 3),
        # ImageNet-1K weights, relative to the repository root (configs/imagenet trains them)
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/pale_t_in1k.pth')),
    decode_head=dict(in_channels=[64, 128, 256, 512], channels=512, num_classes=150),
    auxiliary_head=dict(in_channels=256, in_index=2, num_classes=150,
                        loss_decode=dict(loss_weight=0.4)))

# The paper names the schedule only; the optimiser follows the Swin/CSWin ADE20K recipe.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999),  # Swin/CSWin recipe
                   weight_decay=0.01),  # Swin/CSWin recipe
    paramwise_cfg=dict(custom_keys={
        # no weight decay on the LayerNorms and the conditional position encodings (the
        # Swin recipe exempts its norms and position embeddings / bias tables likewise)
        'norm': dict(decay_mult=0.),
        'cpe': dict(decay_mult=0.),
    }))
# Layer-wise lr decay instead (optional: not in the paper, not tuned here), in a config that
# inherits this one:
#   optim_wrapper = dict(constructor='PaleLayerDecayOptimizerConstructor',
#                        paramwise_cfg=dict(_delete_=True, decay_rate=0.9))
# One layer id per block (22): the stem trains at 0.9^23 = 0.09 x lr, the last block at
# 0.9 x lr, the output norms and both heads at lr; still no weight decay on norms, biases and
# cpe. mmseg's ConvNeXt recipe (decay_type='stage_wise', num_layers=12, decay_rate=0.9) works
# the same way (docs/your_config.md).
param_scheduler = [
    # Swin/CSWin recipe: linear warm-up over 1500 iterations, then poly decay (power 1)
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=1500, end=160000),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=160000, val_interval=16000)  # paper

# batch 16 in total as in the paper: 2 images per GPU on 8 GPUs
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
# `--auto-scale-lr` rescales lr for another total batch size
auto_scale_lr = dict(enable=False, base_batch_size=16)

# Multi-scale + flip test (`tools/test.py ... --tta`), ratios 0.5-1.75 of the single-scale
# test size 2048x512 as in the Swin/CSWin protocol (mmseg 0.x MultiScaleFlipAug with
# img_scale=(2048, 512)). mmseg 1.x's own ade20k tta_pipeline scales the raw image instead;
# here each view is first brought to the single-scale size (as test_pipeline does), then
# scaled by the ratio, so changing the test scale moves the multi-scale views with it.
img_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(
        type='TestTimeAug',
        transforms=[
            [dict(type='Resize', scale=(2048, 512), keep_ratio=True)],
            [dict(type='Resize', scale_factor=r, keep_ratio=True) for r in img_ratios],
            [dict(type='RandomFlip', prob=0., direction='horizontal'),
             dict(type='RandomFlip', prob=1., direction='horizontal')],
            [dict(type='LoadAnnotations', reduce_zero_label=True)],
            [dict(type='PackSegInputs')],
        ]),
]
tta_model = dict(type='SegTTAModel')
