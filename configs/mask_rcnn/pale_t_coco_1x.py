# Mask R-CNN + FPN with a Pale-T backbone, COCO, 1x schedule (12 epochs).
# Paper (arXiv 2112.14000, COCO val2017): box mAP 47.4, mask mAP 42.7, 306G FLOPs at 1280x800.
# The paper names the schedule only; the values marked "Swin/CSWin recipe" follow the
# published Swin/CSWin Mask R-CNN configs where the paper is silent.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',  # 1333x800, flip; batch 2 per GPU
    'mmdet::_base_/schedules/schedule_1x.py',  # 12 epochs, steps at epochs 8 and 11
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['pale_mm'], allow_failed_imports=False)
# safe checkpoint loading, atomic checkpoints and last_checkpoint (pale_mm/hardening.py)
runner_type = 'HardenedRunner'

model = dict(
    backbone=dict(
        _delete_=True,
        type='PaleTransformer',
        arch='tiny',  # C=64, depths 2-2-16-2, heads 2-4-8-16
        pale_size=7,
        drop_path_rate=0.2,  # not in the paper; Swin-T's Mask R-CNN value
        out_indices=(0, 1, 2, 3),
        with_cp=False,
        # ImageNet-1K weights, relative to the repo root (whatever the working directory);
        # without them: --cfg-options model.backbone.init_cfg=None
        init_cfg=dict(type='Pretrained',
                      checkpoint='{{ fileDirname }}/../../checkpoints/pale_t_in1k.pth')),
    neck=dict(in_channels=[64, 128, 256, 512]))

# batch 16 = 2 images x 8 GPUs (Swin/CSWin recipe); the base config has 2 per GPU
auto_scale_lr = dict(enable=False, base_batch_size=16)

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(
        _delete_=True,
        type='AdamW',
        lr=1e-4,  # Swin/CSWin recipe
        betas=(0.9, 0.999),
        weight_decay=0.05),  # Swin/CSWin recipe
    paramwise_cfg=dict(
        norm_decay_mult=0.,  # no decay on norms (LayerNorm and the Q/K/V BatchNorms)
        custom_keys={'.cpe.': dict(decay_mult=0.)}))  # nor on the conv position encodings
# Layer-wise lr decay instead (optional: not in the paper, not tuned here), in a config that
# inherits this one:
#   optim_wrapper = dict(constructor='PaleLayerDecayOptimizerConstructor',
#                        paramwise_cfg=dict(_delete_=True, decay_rate=0.9))
# One layer id per block (22): the stem trains at 0.9^23 = 0.09 x lr (mmdet's ConvNeXt-T
# recipe gives its stem 0.7^7 = 0.08), the last block at 0.9 x lr, the output norms, FPN and
# heads at lr; still no weight decay on norms, biases and cpe. decay_type='stage_wise' and
# num_layers as in mmdet's LearningRateDecayOptimizerConstructor (docs/your_config.md).

param_scheduler = [
    # linear warm-up over 1000 iterations (Swin/CSWin recipe; mmdet's 1x has 500)
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
