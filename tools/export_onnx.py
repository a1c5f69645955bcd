"""Export the model a config builds to ONNX, checked in ONNX Runtime against PyTorch.

    python tools/export_onnx.py configs/upernet/pale_t_ade20k.py CKPT --shape 512 512
    python tools/export_onnx.py configs/imagenet/pale_t_in1k.py CKPT --shape 224 224
    python tools/export_onnx.py configs/mask_rcnn/pale_t_coco_1x.py CKPT --shape 800 1344
    python tools/export_onnx.py CONFIG CKPT --shape 512 512 --backbone   # the backbone alone

One file per input size (static shapes). The file is written only once ONNX Runtime gave
PyTorch's outputs on an image other than the one it was traced with; the tool prints the
largest differences. docs/deploy.md: what each file takes and gives, and the mmdeploy route.
Needs ``pip install "pale_mm[deploy]"``.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import DictAction

from pale_mm.errors import PaleError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file (mmseg, mmdet or mmpretrain scope)')
    parser.add_argument('checkpoint', help='checkpoint of the config\'s model')
    parser.add_argument('--shape', type=int, nargs=2, required=True, metavar=('H', 'W'),
                        help='the image size the file takes')
    parser.add_argument('-o', '--out', help='the .onnx file (default: beside the checkpoint, '
                        '<checkpoint>_<H>x<W>[_backbone].onnx)')
    parser.add_argument('--backbone', action='store_true',
                        help='export the backbone alone (normalised image -> feature maps)')
    parser.add_argument('--exporter', default='torchscript', choices=['torchscript', 'dynamo'],
                        help='torch\'s TorchScript exporter (every supported torch; what '
                        'mmdeploy drives) or torch.export (torch >= 2.5)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, key=value')
    return parser.parse_args(argv)


def default_output(checkpoint: str, shape, backbone: bool) -> str:
    stem = osp.splitext(checkpoint)[0]
    return f'{stem}_{shape[0]}x{shape[1]}{"_backbone" if backbone else ""}.onnx'


def main(argv=None):
    args = parse_args(argv)
    try:
        from pale_mm.deploy.onnx_export import build_graph, export_onnx
        out = args.out or default_output(args.checkpoint, args.shape, args.backbone)
        graph = build_graph(args.config, args.checkpoint, args.shape, args.backbone,
                            args.cfg_options)
        found = export_onnx(graph, out, args.exporter, args.config, args.checkpoint)
    except PaleError as e:
        sys.exit(f'export_onnx.py: error: {e.summary}')
    print(f'{graph.task} -> {out} (input image {graph.shape[0]}x{graph.shape[1]}, '
          f'outputs {", ".join(graph.output_names)})')
    print('ONNX Runtime against PyTorch, on an image other than the traced one:')
    for name, r in found.items():
        if 'agreement' in r:
            print(f'  {name}: {100 * r["agreement"]:.3f}% of entries agree')
        else:
            print(f'  {name}: largest difference {r["max_abs_diff"]:.3g} '
                  f'({r["relative"]:.2g} of the output\'s largest magnitude)')
    if graph.task == 'detector':
        print('The detector\'s post-processing (RPN proposals, RoI heads, masks) is not in the '
              'file: docs/deploy.md "Mask R-CNN" gives the route that exports it.')
    return found


if __name__ == '__main__':
    main()
