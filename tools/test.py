"""Test (evaluate) a checkpoint with an mmdet, mmseg or mmpretrain config.

    python tools/test.py configs/upernet/pale_t_ade20k.py work_dirs/.../iter_160000.pth --tta
    bash tools/dist_test.sh configs/mask_rcnn/pale_t_coco_1x.py CKPT 8
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from pale_mm.engine.runner import build_runner
from pale_mm.errors import LaunchError, PaleError
from pale_mm.launch import distributed, preflight, result_files, run_config


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test a detector, segmentor or classifier')
    parser.add_argument('config', help='config file (mmdet, mmseg or mmpretrain scope)')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where the evaluation log goes')
    parser.add_argument('--out', help='mmdet / mmpretrain: dump the raw results to this .pkl '
                        'file; mmseg: write the predicted label maps into this directory')
    parser.add_argument('--show', action='store_true', help='show predictions in a window')
    parser.add_argument('--show-dir', help='save pictures of the predictions here')
    parser.add_argument('--wait-time', type=float, default=2, help='seconds per --show image')
    parser.add_argument('--tta', action='store_true',
                        help="test-time augmentation (the config's tta_model / tta_pipeline)")
    run_config.add_run_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # the process group (started by the launcher's set-up) is destroyed before exit
    with distributed.process_group_ends_with_the_run() as built:
        return _test(args, built)


def _test(args, built):
    swap = None  # mmseg's --out folder, moved into place after a complete test
    try:
        cfg = run_config.prepare_run(args, train=False)
        preflight.check_file(args.checkpoint, 'checkpoint')
        cfg.load_from = args.checkpoint
        if args.show or args.show_dir:
            run_config.enable_visualization(cfg, args.show, args.show_dir, args.wait_time)
        if args.tta:
            run_config.enable_tta(cfg)
        if args.out and cfg.default_scope == 'mmseg':
            cfg.test_evaluator['output_dir'] = args.out
            cfg.test_evaluator['keep_results'] = True
        elif args.out and not args.out.endswith(('.pkl', '.pickle')):
            raise LaunchError(f'--out must name a .pkl file, got {args.out}')
        preflight.check_datasets(cfg, ['test_dataloader'])

        runner = built.runner = build_runner(cfg)
        # outputs are written under temporary names and renamed once complete
        result_files.atomic_coco_results(runner)
        if args.out and cfg.default_scope == 'mmseg':
            swap = result_files.seg_output_dir_swap(runner, args.out)
        elif args.out:
            runner.test_evaluator.metrics.append(
                result_files.dump_metric(cfg.default_scope, args.out))
        metrics = runner.test()
    except PaleError as e:
        if swap is not None:
            swap.discard()
        sys.exit(f'test.py: error: {e.summary}')
    except BaseException:
        if swap is not None:
            swap.discard()
        raise
    if swap is not None:
        swap()  # waits for every process
    return metrics


if __name__ == '__main__':
    main()
