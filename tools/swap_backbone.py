"""Put a Pale backbone into an mmdet or mmseg config.

    python tools/swap_backbone.py mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py \\
        --arch tiny --pretrained checkpoints/pale_t_in1k.pth -o work_dirs/fcos_pale_t.py

writes a config that inherits CONFIG (``_base_``), puts ``PaleTransformer`` in and sets what
follows from it (out_indices, the neck's and heads' in_channels / in_index, RGB ImageNet
normalisation, no segmentor-level ``pretrained``, ``paramwise_cfg`` keys for Pale's
parameters, Pale's layer-decay constructor), and prints each change with its reason
(:mod:`pale_mm.swap`). CONFIG is a file or a library's config as ``mmdet::path`` /
``mmseg::path``. A config it cannot rewrite safely is refused with the key to set by hand.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import Config

from pale_mm.errors import PaleError
from pale_mm.fileio import written_atomically
from pale_mm.swap import SwapError, render_config, resolve_config, swap_backbone


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Put a Pale backbone into an mmdet or mmseg '
                                     'config')
    parser.add_argument('config', help='the config (a file, or mmdet::path / mmseg::path)')
    parser.add_argument('--arch', choices=['tiny', 'small', 'base'], default='tiny',
                        help='Pale variant (default: tiny)')
    parser.add_argument('--pretrained', metavar='PATH_OR_URL',
                        help="Pale's ImageNet checkpoint for the backbone's init_cfg (a path "
                        'or a URL: https://, open-mmlab://, ...); without it Pale trains from '
                        'scratch')
    parser.add_argument('--out-indices', type=int, nargs='+', metavar='STAGE',
                        help="the Pale stage (0..3, strides 4..32) for each of the old "
                        "backbone's outputs, for backbones the tool cannot place itself")
    parser.add_argument('-o', '--out', required=True, help='the config file to write')
    return parser.parse_args(argv)


def check_builds(path: str) -> None:
    """Build the model of the written config (no weights are loaded)."""
    from mmengine.registry import MODELS, init_default_scope
    cfg = Config.fromfile(path)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    try:
        MODELS.build(cfg.model)
    except Exception as e:  # whatever the library raises: reported as one line
        raise SwapError(f'the rewritten config does not build its model ({type(e).__name__}: '
                        f'{e}); nothing was written') from None


def main(argv=None):
    args = parse_args(argv)
    out = osp.abspath(args.out)
    command = 'python tools/swap_backbone.py ' + ' '.join(argv if argv is not None
                                                           else sys.argv[1:])
    try:
        config = resolve_config(args.config)
        if Config._is_lazy_import(config):
            raise SwapError(
                f'{args.config} is a pure-Python config (imports, no _base_), which an old-style '
                'config cannot inherit; swap it in Python: cfg = Config.fromfile(path); '
                "pale_mm.swap.apply_swap(cfg, arch='tiny') (docs/your_config.md)")
        swap = swap_backbone(config, args.arch, args.pretrained, args.out_indices)
        # Config.fromfile reads the file by its suffix; replaces ``out`` once it builds
        with written_atomically(out, suffix='.py') as tmp:
            with open(tmp, 'w') as f:
                f.write(render_config(args.config if '::' in args.config else config, swap,
                                      out, command))
            check_builds(tmp)
    except PaleError as e:
        sys.exit(f'swap_backbone.py: error: {e}')
    print(f'wrote {args.out} (inherits {args.config}); changes:')
    for line in swap.changes:
        print(f'  - {line}')
    return out


if __name__ == '__main__':
    main()
