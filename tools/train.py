"""Train with an mmdet, mmseg or mmpretrain config (its ``default_scope`` decides).

    python tools/train.py configs/upernet/pale_t_ade20k.py
    bash tools/dist_train.sh configs/mask_rcnn/pale_t_coco_1x.py 8
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def parse_args(argv=None):
    from pale_mm import launch
    parser = argparse.ArgumentParser(description='Train a detector, segmentor or classifier')
    parser.add_argument('config', help='config file (mmdet, mmseg or mmpretrain scope)')
    parser.add_argument('--work-dir', help='where logs and checkpoints go')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate with the total batch size')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from this checkpoint, or (no value) from the latest '
                        'checkpoint in the work dir')
    launch.add_run_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None):
    from pale_mm import launch
    args = parse_args(argv)
    try:
        cfg = launch.prepare_run(args, train=True)
        if args.amp:
            launch.enable_amp(cfg)
        if args.auto_scale_lr:
            if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
                raise launch.LaunchError(
                    '--auto-scale-lr needs auto_scale_lr=dict(base_batch_size=N) in the config')
            cfg.auto_scale_lr.enable = True
        if args.resume == 'auto':
            # the newest complete checkpoint of the work dir; none: start from scratch
            found = launch.find_resume_checkpoint(cfg.work_dir)
            if found:
                cfg.resume, cfg.load_from = True, found
            else:
                print(f'train.py: --resume: no checkpoint in {cfg.work_dir}; starting from '
                      'scratch', file=sys.stderr)
                cfg.resume = False
        elif args.resume is not None:
            launch.check_file(args.resume, '--resume checkpoint')
            cfg.resume, cfg.load_from = True, args.resume
        else:
            launch.guard_work_dir(cfg.work_dir)
            if cfg.get('load_from'):
                launch.check_file(cfg.load_from, 'load_from checkpoint')
        launch.check_datasets(cfg, ['train_dataloader'] +
                              (['val_dataloader'] if cfg.get('val_cfg') else []))
        launch.check_pretrained(cfg, resuming=bool(cfg.get('resume')))
    except (launch.LaunchError, *launch.run_errors()) as e:
        sys.exit(f'train.py: error: {launch.error_text(e)}')
    try:
        runner = launch.build_runner(cfg)
        runner.train()
    except launch.run_errors() as e:
        sys.exit(f'train.py: error: {launch.error_text(e)}')
    return runner


if __name__ == '__main__':
    main()
