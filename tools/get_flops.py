"""Parameters and multiply-accumulates of a backbone or a whole model, attention included.

    python tools/get_flops.py --backbone tiny --shape 224 224
    python tools/get_flops.py configs/mask_rcnn/pale_t_coco_1x.py --shape 800 1280
    python tools/get_flops.py configs/upernet/pale_t_ade20k.py --shape 512 2048

Counts with mmengine's FlopAnalyzer (one multiply-accumulate = one FLOP, as in the paper's
tables), with pale_mm's handle for ``scaled_dot_product_attention`` installed, so the
attention products are counted. A whole model is counted in its ``tensor`` mode on one
random image of the given shape (H W): for a two-stage detector that is the backbone, the
neck, the RPN, and the RoI heads on the proposals the RPN keeps.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', nargs='?', help='an mmdet, mmseg or mmpretrain config')
    parser.add_argument('--backbone', help="count the backbone alone: 'tiny', 'small', 'base'")
    parser.add_argument('--shape', type=int, nargs='+', default=None,
                        help='input height and width (one value for a square); default '
                        '224 224 for a backbone or classifier, 800 1280 for a detector, '
                        '512 2048 for a segmentor')
    parser.add_argument('--cfg-options', nargs='+', default=None,
                        help='override config entries, key=value')
    parser.add_argument('--by-operator', action='store_true',
                        help='also print the count of each operator')
    args = parser.parse_args(argv)
    if (args.config is None) == (args.backbone is None):
        parser.error('give a CONFIG or --backbone ARCH (one of them)')
    if args.shape is not None:
        if len(args.shape) == 1:
            args.shape = args.shape * 2
        if len(args.shape) != 2:
            parser.error(f'--shape takes H W (or one size), got {args.shape}')
    return args


DEFAULT_SHAPES = {'mmdet': (800, 1280), 'mmseg': (512, 2048), 'mmpretrain': (224, 224)}


def _model_from_config(args):
    """(name, module whose forward takes one image batch, shape) for a config."""
    import torch
    from mmengine.config import DictAction  # noqa: F401

    from pale_mm.launch.run_config import load_config
    options = None
    if args.cfg_options:
        parser = argparse.ArgumentParser()
        parser.add_argument('--o', nargs='+', action=DictAction)
        options = parser.parse_args(['--o', *args.cfg_options]).o
    cfg = load_config(args.config, options)
    scope = cfg.default_scope
    H, W = args.shape or DEFAULT_SHAPES[scope]
    # The weights do not change the count: never load a pretrained checkpoint here.
    if isinstance(cfg.model.get('backbone'), dict):
        cfg.model.backbone.init_cfg = None
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    model = registry.build(cfg.model).eval()

    meta = dict(img_shape=(H, W), ori_shape=(H, W), pad_shape=(H, W),
                batch_input_shape=(H, W), scale_factor=(1.0, 1.0), img_path='',
                flip=False, flip_direction=None)
    if scope == 'mmdet':
        from mmdet.structures import DetDataSample as Sample
    elif scope == 'mmseg':
        from mmseg.structures import SegDataSample as Sample
    else:
        from mmpretrain.structures import DataSample as Sample
    samples = [Sample(metainfo=meta)]

    class TensorMode(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, inputs):
            return self.model(inputs, samples, mode='tensor')

    return osp.basename(args.config), TensorMode(model), (H, W)


def main(argv=None):
    args = parse_args(argv)
    import torch

    from pale_mm import PaleTransformer
    from pale_mm.errors import PaleError
    from pale_mm.flops import complexity
    # Weights and input are random: fix them, since a detector's count depends on how many
    # proposals its RPN keeps.
    torch.manual_seed(0)
    try:
        if args.backbone:
            H, W = args.shape or (224, 224)
            model = PaleTransformer(args.backbone).eval()
            name = f'PaleTransformer({args.backbone!r}) backbone'
        else:
            name, model, (H, W) = _model_from_config(args)
    except (ValueError, PaleError) as e:
        sys.exit(f'get_flops.py: error: {e}')
    with torch.no_grad():
        result = complexity(model, torch.randn(1, 3, H, W))
    print(f'model: {name}')
    print(f'input shape: 3x{H}x{W}')
    print(f"params: {result['params'] / 1e6:.2f} M")
    print(f"MACs: {result['macs'] / 1e9:.2f} G (attention products: "
          f"{result['by_operator'].get('scaled_dot_product_attention', 0) / 1e9:.2f} G)")
    if args.by_operator:
        for op, n in sorted(result['by_operator'].items(), key=lambda t: -t[1]):
            print(f'  {op}: {n / 1e9:.3f} G')
        if result['unsupported']:
            print(f"  not counted: {result['unsupported']}")
    return result


if __name__ == '__main__':
    main()
