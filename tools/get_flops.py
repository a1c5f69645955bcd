"""Parameters and multiply-accumulates (attention products included).

    python tools/get_flops.py --backbone tiny --shape 224 224

Counts with mmengine's FlopAnalyzer (one multiply-accumulate = one flop, as in the paper's
tables), with pale_mm's handle for ``scaled_dot_product_attention`` installed.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--backbone', required=True,
                        help="the backbone alone: 'tiny', 'small' or 'base'")
    parser.add_argument('--shape', type=int, nargs='+', default=[224, 224],
                        help='input height and width (one value for a square)')
    parser.add_argument('--by-operator', action='store_true',
                        help='also print the count of each operator')
    args = parser.parse_args(argv)
    if len(args.shape) == 1:
        args.shape = args.shape * 2
    if len(args.shape) != 2:
        parser.error(f'--shape takes H W (or one size), got {args.shape}')
    return args


def main(argv=None):
    args = parse_args(argv)
    import torch

    from pale_mm import PaleTransformer
    from pale_mm.analysis import complexity
    H, W = args.shape
    try:
        model = PaleTransformer(args.backbone).eval()
    except ValueError as e:
        sys.exit(f'get_flops.py: {e}')
    with torch.no_grad():
        result = complexity(model, torch.randn(1, 3, H, W))
    name = f'PaleTransformer({args.backbone!r}) backbone'
    print(f'model: {name}')
    print(f'input shape: 3x{H}x{W}')
    print(f"params: {result['params'] / 1e6:.2f} M")
    print(f"MACs: {result['macs'] / 1e9:.2f} G (attention products: "
          f"{result['by_operator'].get('scaled_dot_product_attention', 0) / 1e9:.2f} G)")
    if args.by_operator:
        for op, n in sorted(result['by_operator'].items(), key=lambda t: -t[1]):
            print(f'  {op}: {n / 1e9:.3f} G')
    return result


if __name__ == '__main__':
    main()
