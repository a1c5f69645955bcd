"""Train with an mmdet, mmseg or mmpretrain config (its ``default_scope`` decides).

    python tools/train.py configs/upernet/pale_t_ade20k.py
    bash tools/dist_train.sh configs/mask_rcnn/pale_t_coco_1x.py 8
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from pale_mm.engine.runner import build_runner
from pale_mm.errors import PaleError
from pale_mm.launch import distributed, preflight, run_config, work_dir


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a detector, segmentor or classifier')
    parser.add_argument('config', help='config file (mmdet, mmseg or mmpretrain scope)')
    parser.add_argument('--work-dir', help='where logs and checkpoints go')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate with the total batch size')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from this checkpoint, or (no value) from the latest '
                        'checkpoint in the work dir')
    run_config.add_run_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # the process group (started by the launcher's set-up) is destroyed before exit
    with distributed.process_group_ends_with_the_run() as built:
        return _train(args, built)


def _train(args, built):
    try:
        cfg = run_config.prepare_run(args, train=True)
        run_config.enable_preemption(cfg)  # SIGTERM/SIGUSR1: save, exit 75 (docs/cluster.md)
        if args.amp:
            run_config.enable_amp(cfg)
        if args.auto_scale_lr:
            run_config.enable_auto_scale_lr(cfg)
        work_dir.apply_resume_option(cfg, args.resume)
        preflight.check_datasets(cfg, ['train_dataloader'] +
                                 (['val_dataloader'] if cfg.get('val_cfg') else []))
        preflight.check_pretrained(cfg, resuming=bool(cfg.get('resume')))
        runner = built.runner = build_runner(cfg)
        runner.train()
    except PaleError as e:
        sys.exit(f'train.py: error: {e.summary}')
    return runner


if __name__ == '__main__':
    main()
