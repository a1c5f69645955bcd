# The `make demo` model: a small Pale UperNet trained on the CPU in minutes on the synthetic
# ADE20K-layout dataset that `make demo` writes (or `python tools/make_synthetic_data.py ade
# data/synthetic_ade --size 96 96 --num-classes 6 --num-train 64 --num-val 9`). Everything
# else is configs/upernet/pale_t_ade20k.py.
#   python tools/train.py configs/upernet/pale_demo_synthetic.py --work-dir work_dirs/demo
_base_ = ['./pale_t_ade20k.py']

data_root = 'data/synthetic_ade'
# the synthetic classes are named after ADE20K's first ones (pale_mm/synthetic/ade.py)
classes = ('wall', 'building', 'sky', 'floor', 'tree', 'ceiling')
image_size = (96, 96)  # H, W of the synthetic images
crop_size = image_size

model = dict(
    data_preprocessor=dict(size=crop_size),
    # a small Pale: widths 32-64-128-256, one or two blocks a stage, pale size 7
    backbone=dict(arch=dict(_delete_=True, embed_dims=32, depths=[1, 1, 2, 1],
                            num_heads=[2, 2, 4, 4]),
                  drop_path_rate=0.0, init_cfg=None),  # trained from scratch
    decode_head=dict(in_channels=[32, 64, 128, 256], channels=64, num_classes=len(classes)),
    auxiliary_head=dict(in_channels=128, channels=32, num_classes=len(classes)))

# mmseg's ADE20K pipelines (mmseg::_base_/datasets/ade20k.py) at the synthetic image size
scale = image_size[::-1]  # mmseg scales are (w, h)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=scale, ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=scale, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale=scale, keep_ratio=True)],
        [dict(type='Resize', scale_factor=r, keep_ratio=True)
         for r in [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]],  # as pale_t_ade20k.py
        [dict(type='RandomFlip', prob=0., direction='horizontal'),
         dict(type='RandomFlip', prob=1., direction='horizontal')],
        [dict(type='LoadAnnotations', reduce_zero_label=True)],
        [dict(type='PackSegInputs')],
    ]),
]
dataset = dict(data_root=data_root, metainfo=dict(classes=classes))
train_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False,
                        dataset=dict(**dataset, pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(**dataset, pipeline=test_pipeline))
test_dataloader = val_dataloader

max_iters = 400
optim_wrapper = dict(optimizer=dict(lr=2e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=20),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=20, end=max_iters),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(logger=dict(interval=20),
                     checkpoint=dict(interval=max_iters, max_keep_ckpts=1))
randomness = dict(seed=0)
