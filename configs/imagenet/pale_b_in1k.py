# Pale-B image classifier on ImageNet-1K; everything but the model size as in
# pale_t_in1k.py (read its header for the recipe and where each value comes from).
# Paper (Wu et al., AAAI 2022, ImageNet-1K table): 300 epochs at 224x224, top-1 84.9.
#   bash tools/dist_train.sh configs/imagenet/pale_b_in1k.py 8
#   cp work_dirs/pale_b_in1k/epoch_300.pth checkpoints/pale_b_in1k.pth
_base_ = ['./pale_t_in1k.py']

model = dict(
    backbone=dict(
        arch='base',  # C=128, depths 2-2-16-2, heads 4-8-16-32, pale size 7 (paper)
        drop_path_rate=0.5),  # Swin/DeiT recipe: stochastic depth 0.2 / 0.3 / 0.5 for T / S / B
    head=dict(in_channels=1024))  # 8C
