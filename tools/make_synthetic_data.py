"""Write a small synthetic dataset in the COCO, ADE20K or ImageNet layout, deterministic from
a seed, and print the ``--cfg-options`` that point this project's configs at it.

    python tools/make_synthetic_data.py coco data/synthetic_coco
    python tools/train.py configs/mask_rcnn/pale_t_coco_1x.py --cfg-options <printed options>
    python tools/make_synthetic_data.py ade data/synthetic_ade --size 96 96 --num-classes 6
    python tools/make_synthetic_data.py imagenet data/synthetic_imagenet --num-classes 5
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='layout', required=True)
    coco = sub.add_parser('coco', help='COCO instance segmentation (boxes and polygon masks)')
    ade = sub.add_parser('ade', help='ADE20K semantic segmentation (label PNGs)')
    inet = sub.add_parser('imagenet', help='ImageNet classification (class folders and '
                          'meta/{train,val}.txt; --num-train/--num-val per class)')
    for p, train, val, size in ((coco, 16, 7, 128), (ade, 16, 5, 64), (inet, 8, 4, 80)):
        p.add_argument('root', help='output folder (the configs\' data_root)')
        p.add_argument('--num-train', type=int, default=train)
        p.add_argument('--num-val', type=int, default=val)
        p.add_argument('--size', type=int, nargs=2, default=[size, size], metavar=('H', 'W'))
        p.add_argument('--seed', type=int, default=0)
    coco.add_argument('--classes', nargs='+', default=None,
                      help='shape names (default: the generator\'s)')
    ade.add_argument('--num-classes', type=int, default=5,
                     help='classes including the background')
    inet.add_argument('--num-classes', type=int, default=5)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    common = dict(num_train=args.num_train, num_val=args.num_val, image_size=tuple(args.size),
                  seed=args.seed)
    from pale_mm.synthetic.cfg_options import format_cfg_options
    try:
        if args.layout == 'coco':
            from pale_mm.synthetic.coco import cli_cfg_options, make_coco
            if args.classes:
                common['classes'] = args.classes
            info = make_coco(args.root, **common)
            options = cli_cfg_options(info)
            config = 'configs/mask_rcnn/pale_t_coco_1x.py'
        elif args.layout == 'ade':
            from pale_mm.synthetic.ade import ade_cfg_options, make_ade
            info = make_ade(args.root, num_classes=args.num_classes, **common)
            options = format_cfg_options(ade_cfg_options(info))
            config = 'configs/upernet/pale_t_ade20k.py'
        else:
            from pale_mm.synthetic.imagenet import imagenet_cfg_options, make_imagenet
            info = make_imagenet(args.root, num_classes=args.num_classes, **common)
            options = format_cfg_options(imagenet_cfg_options(info)) + [
                # 2 epochs: 1 of warm-up, 1 of cosine decay
                'train_cfg.max_epochs=2', 'param_scheduler.0.end=1',
                'param_scheduler.1.begin=1']
            config = 'configs/imagenet/pale_t_in1k.py'
    except ValueError as e:
        sys.exit(f'make_synthetic_data.py: error: {e}')
    print(json.dumps(info, indent=1, default=str))
    print('\nTrain a config on it (from scratch) with:\n'
          f'  python tools/train.py {config} --cfg-options model.backbone.init_cfg=None '
          + ' '.join(options))
    return info, options


if __name__ == '__main__':
    main()
