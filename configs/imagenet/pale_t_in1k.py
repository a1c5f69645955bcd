# Pale-T image classifier on ImageNet-1K (mmpretrain): global average pooling of the last
# stage and a linear head. Its checkpoint is what the detection and segmentation configs
# load as `checkpoints/pale_t_in1k.pth` (the `backbone.` prefix is stripped on load):
#   bash tools/dist_train.sh configs/imagenet/pale_t_in1k.py 8          (8 x 128 = 1024)
#   cp work_dirs/pale_t_in1k/epoch_300.pth checkpoints/pale_t_in1k.pth
#   python tools/test.py configs/imagenet/pale_t_in1k.py checkpoints/pale_t_in1k.pth
# Paper (Wu et al., AAAI 2022, ImageNet-1K table): 300 epochs at 224x224, top-1 83.4.
# The paper gives no other hyper-parameter; everything else is the Swin/DeiT recipe, taken
# from mmpretrain's own Swin base configs, and marked "Swin/DeiT recipe" where it is set here:
#   data (imagenet_bs64_swin_224.py): RandomResizedCrop 224 (bicubic), flip, RandAugment
#     (2 ops, magnitude 9, std 0.5), random erasing 0.25; test: resize 256, centre crop 224
#   schedule (imagenet_bs1024_adamw_swin.py): AdamW, lr 1e-3 for batch 1024, weight decay
#     0.05, no decay on norms, biases and other 1-D parameters, linear warm-up for 20 epochs
#     from 1e-3 x lr, then cosine decay to 1e-5, 300 epochs
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['pale_mm'], allow_failed_imports=False)
# safe checkpoint loading, atomic checkpoints and last_checkpoint (pale_mm/hardening.py)
runner_type = 'HardenedRunner'

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='PaleTransformer',
        arch='tiny',  # C=64, depths 2-2-16-2, heads 2-4-8-16, pale size 7 (paper)
        drop_path_rate=0.2,  # Swin/DeiT recipe: stochastic depth 0.2 / 0.3 / 0.5 for T / S / B
        out_indices=(3, ),  # the classifier pools the last stage only
        init_cfg=None),  # from scratch (trunc-normal Linear, unit norms)
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=512,  # 8C
        init_cfg=None,  # the classifier's init_cfg below initialises the head
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1,  # Swin/DeiT recipe
                  mode='original'),
        cal_acc=False),
    init_cfg=[
        dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
        dict(type='Constant', layer='LayerNorm', val=1., bias=0.),
    ],
    # Swin/DeiT recipe: Mixup 0.8 and CutMix 1.0, one of the two per batch
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]),
)

optim_wrapper = dict(
    optimizer=dict(lr=1e-3),  # Swin/DeiT recipe: 1e-3 for a total batch of 1024
    # the conditional position encodings (depthwise 3x3 conv weights) get no weight decay,
    # like Swin's position embeddings and bias tables
    paramwise_cfg=dict(custom_keys={'.cpe.weight': dict(decay_mult=0.0)}),
    clip_grad=dict(max_norm=5.0))  # Swin/DeiT recipe

train_cfg = dict(by_epoch=True, max_epochs=300, val_interval=1)  # paper: 300 epochs

# a total batch of 1024 (Swin/DeiT recipe): 128 images per GPU on 8 GPUs;
# `--auto-scale-lr` rescales lr linearly for another total batch size
train_dataloader = dict(batch_size=128)
val_dataloader = dict(batch_size=128)
test_dataloader = val_dataloader
auto_scale_lr = dict(base_batch_size=1024)

default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3))
