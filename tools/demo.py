"""See Pale work end to end on a CPU in minutes (`make demo` runs this).

1. writes a small synthetic ADE20K-layout dataset into ``data/synthetic_ade`` (if absent),
2. trains ``configs/upernet/pale_demo_synthetic.py`` (a small Pale UperNet) on it through
   tools/train.py, with mmengine's usual logging, and evaluates it (mIoU) at the end,
3. draws, for each validation image, the image, its ground truth and the prediction side by
   side into ``work_dirs/demo/predictions/`` plus one overview picture,
4. prints where the pictures are, the final mIoU and what a constant prediction scores.
"""
import argparse
import glob
import json
import os
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, osp.join(ROOT, 'tools'))

CONFIG = osp.join(ROOT, 'configs/upernet/pale_demo_synthetic.py')
DATA = dict(num_train=64, num_val=9, image_size=(96, 96), seed=0, num_classes=6)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data-root', default='data/synthetic_ade')
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--iters', type=int, default=None,
                        help='training iterations (default: the config\'s)')
    args = parser.parse_args(argv)
    if args.iters is not None:
        from mmengine.config import Config
        warmup = Config.fromfile(CONFIG).param_scheduler[0]['end']
        if args.iters <= warmup:
            parser.error(f'--iters {args.iters}: the demo needs more than the {warmup} warm-up '
                         f'iterations of {CONFIG}; give --iters {warmup + 1} or more')
    return args


def ensure_data(root):
    """The dataset of DATA under ``root``: written once, reused while it matches."""
    from pale_mm.synthetic.ade import make_ade
    stamp = osp.join(root, 'synthetic_ade.json')
    if osp.isfile(stamp):
        with open(stamp) as f:
            info = json.load(f)
        if all(info.get(k) == (list(v) if isinstance(v, tuple) else v)
               for k, v in DATA.items()):
            print(f'demo: using the synthetic dataset in {root}')
            return info
    print(f'demo: writing a synthetic ADE20K-layout dataset into {root}')
    info = make_ade(root, **DATA)
    with open(stamp, 'w') as f:
        json.dump(info, f, indent=1)
    return json.loads(json.dumps(info))


def palette(n):
    import colorsys
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / n, 0.75, 0.95)) for i in range(n)]


def colorize(label, colors):
    """(H, W) class indices (255 = ignore) -> (H, W, 3) uint8 RGB; ignore is black."""
    import numpy as np
    out = np.zeros(label.shape + (3, ), np.uint8)
    for i, c in enumerate(colors):
        out[label == i] = c
    return out


def draw_predictions(cfg_path, checkpoint, info, out_dir):
    """image | ground truth | prediction for every validation image; returns the paths."""
    import cv2
    import numpy as np
    from mmseg.apis import inference_model, init_model

    from pale_mm.hardening import enable_safe_loading
    enable_safe_loading()  # mmseg's init_model loads through mmengine's loader
    model = init_model(cfg_path, checkpoint, device='cpu')
    colors = palette(info['num_classes'])
    img_dir = osp.join(info['root'], 'images', 'validation')
    ann_dir = osp.join(info['root'], 'annotations', 'validation')
    os.makedirs(out_dir, exist_ok=True)
    rows, paths = [], []
    for name in sorted(os.listdir(img_dir)):
        img = cv2.imread(osp.join(img_dir, name))
        gt = cv2.imread(osp.join(ann_dir, osp.splitext(name)[0] + '.png'), cv2.IMREAD_UNCHANGED)
        gt = np.where(gt == 0, 255, gt.astype(np.int64) - 1)  # reduce_zero_label
        pred = inference_model(model, img).pred_sem_seg.data[0].cpu().numpy()
        pad = np.full((img.shape[0], 4, 3), 255, np.uint8)
        row = np.concatenate([img, pad, colorize(gt, colors)[..., ::-1], pad,
                              colorize(pred, colors)[..., ::-1]], axis=1)
        path = osp.join(out_dir, osp.splitext(name)[0] + '.png')
        cv2.imwrite(path, row)
        rows.append(row)
        paths.append(path)
    # overview: three columns of (image | ground truth | prediction) rows, under a header
    gap = lambda h, w: np.full((h, w, 3), 255, np.uint8)  # noqa: E731
    rows += [np.zeros_like(rows[0])] * (-len(rows) % 3)
    columns = [np.concatenate(sum([[r, gap(4, r.shape[1])] for r in rows[i::3]], []))
               for i in range(3)]
    grid = np.concatenate(sum([[c, gap(c.shape[0], 12)] for c in columns], [])[:-1], axis=1)
    grid = cv2.resize(grid, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    header = gap(28, grid.shape[1])
    cv2.putText(header, 'image | ground truth | prediction (black: unlabelled)', (6, 20),
                cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    overview = osp.join(out_dir, 'overview.png')
    cv2.imwrite(overview, np.concatenate([header, grid]))
    return overview, paths


def main(argv=None):
    args = parse_args(argv)
    import train as train_tool

    from pale_mm.launch.work_dir import checkpoints_in
    info = ensure_data(args.data_root)
    options = [f'train_dataloader.dataset.data_root={args.data_root}',
               f'val_dataloader.dataset.data_root={args.data_root}',
               f'test_dataloader.dataset.data_root={args.data_root}']
    if args.iters:
        options += [f'train_cfg.max_iters={args.iters}', f'train_cfg.val_interval={args.iters}',
                    f'param_scheduler.1.end={args.iters}',
                    f'default_hooks.checkpoint.interval={args.iters}']
    # each demo starts afresh: the previous demo's checkpoints go (train.py refuses to
    # overwrite the checkpoints of an earlier run in its work dir)
    old = checkpoints_in(args.work_dir)
    for path in old + glob.glob(osp.join(args.work_dir, 'last_checkpoint')):
        os.remove(path)
    if old:
        print(f'demo: removed the previous demo\'s {len(old)} checkpoint(s) in {args.work_dir}')
    runner = train_tool.main([CONFIG, '--work-dir', args.work_dir, '--cfg-options', *options])
    miou = runner.message_hub.get_scalar('val/mIoU').current()
    checkpoint = osp.join(args.work_dir, f'iter_{runner.iter}.pth')
    overview, _ = draw_predictions(osp.join(args.work_dir, osp.basename(CONFIG)), checkpoint,
                                   info, osp.join(args.work_dir, 'predictions'))
    summary = dict(mIoU=float(miou), constant_prediction_mIoU=info['constant_miou'],
                   iters=runner.iter, checkpoint=checkpoint, pictures=overview)
    with open(osp.join(args.work_dir, 'demo_result.json'), 'w') as f:
        json.dump(summary, f, indent=1)
    print('\n' + '=' * 72)
    print(f'demo: a small Pale UperNet trained {runner.iter} iterations on '
          f'{info["num_train"]} synthetic images')
    print(f'demo: validation mIoU {miou:.2f} ({info["num_val"]} held-out images); predicting '
          f'the most frequent class everywhere scores {info["constant_miou"]:.2f}')
    print(f'demo: image | ground truth | prediction pictures: {overview}')
    print(f'demo: checkpoint {checkpoint}')
    print('=' * 72)
    return summary


if __name__ == '__main__':
    main()
