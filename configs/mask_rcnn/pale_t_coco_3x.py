# Mask R-CNN + FPN with a Pale-T backbone, COCO, 3x schedule (36 epochs), multi-scale
# training. The paper reports the 1x row only; this schedule and its augmentation are the
# Swin/CSWin 3x recipe (shorter side 480-800, longer side at most 1333, and in half the
# samples a random crop first, as in their DETR-style pipeline), used where the paper is silent.
_base_ = './pale_t_coco_1x.py'

# shorter sides 480, 512, ..., 800 (Swin/CSWin recipe)
multi_scales = [(1333, short) for short in range(480, 801, 32)]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=multi_scales, keep_ratio=True)],
            [
                dict(type='RandomChoiceResize',
                     scales=[(1333, 400), (1333, 500), (1333, 600)], keep_ratio=True),
                dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600),
                     allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=multi_scales, keep_ratio=True),
            ],
        ]),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    # linear warm-up over 1000 iterations (Swin/CSWin recipe)
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    # steps at epochs 27 and 33 (Swin/CSWin recipe)
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33],
         gamma=0.1),
]
