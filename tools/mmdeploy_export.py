"""A whole Pale detector or segmentor to ONNX through mmdeploy 1.3.1, checked in ONNX Runtime.

    python tools/mmdeploy_export.py configs/mask_rcnn/pale_t_coco_1x.py CKPT --shape 800 1344
    python tools/mmdeploy_export.py configs/upernet/pale_t_ade20k.py CKPT --shape 576 576

mmdeploy's file takes the normalised image ``input`` (1, 3, H, W) and gives ``dets`` (1, N, 5:
boxes and scores), ``labels`` (1, N) and ``masks`` (1, N, 28, 28, at the RoI: paste them as
mmdet does) for Mask R-CNN, ``output`` (1, 1, H, W) labels for a segmentor. The file is
written only once ONNX Runtime gave PyTorch's predictions on an image: PyTorch's 20
best detections each found in the file with the same label, a box within half a pixel, a
score within 1e-3, masks at a mean IoU of 0.95 (pale_mm.deploy.mmdeploy_route). mmdeploy
is not a requirement of pale_mm: docs/deploy.md says how to install it beside onnx.
"""
import argparse
import os
import os.path as osp
import sys
import tempfile

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import DictAction

from pale_mm.errors import PaleError

BOX_TOLERANCE = 0.5  # pixels
SCORE_TOLERANCE = 1e-3
MASK_IOU = 0.95  # mean over the detections: a few pixels at a small mask's edge may differ
LABEL_AGREEMENT = 0.999


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='mmdet or mmseg config')
    parser.add_argument('checkpoint', help='checkpoint of the config\'s model')
    parser.add_argument('--shape', type=int, nargs=2, required=True, metavar=('H', 'W'))
    parser.add_argument('-o', '--out', help='the .onnx file (default: beside the checkpoint, '
                        '<checkpoint>_<H>x<W>_mmdeploy.onnx)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, key=value')
    return parser.parse_args(argv)


def check(path, model, scope, shape):
    """Run the file in ONNX Runtime on a random image and compare with ``model``'s predict."""
    import numpy as np
    import torch

    from pale_mm.deploy.mmdeploy_route import compare_detections
    from pale_mm.deploy.onnx_runtime import require
    ort = require('onnxruntime')
    H, W = shape
    image = torch.randint(0, 256, (3, H, W), generator=torch.Generator().manual_seed(1))
    if scope == 'mmdet':
        from mmdet.structures import DetDataSample
        sample = DetDataSample(metainfo=dict(img_shape=(H, W), ori_shape=(H, W),
                                             scale_factor=(1., 1.)))
    else:
        from mmseg.structures import SegDataSample
        sample = SegDataSample(metainfo=dict(img_shape=(H, W), ori_shape=(H, W)))
    with torch.no_grad():
        data = model.data_preprocessor(dict(inputs=[image.float()], data_samples=[sample]),
                                       False)
        (pred, ) = model.predict(data['inputs'], data['data_samples'])
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    outs = session.run(None, {'input': data['inputs'].numpy()})
    if scope == 'mmdet':
        dets, labels, masks = (o[0] for o in outs)
        found = compare_detections(pred.pred_instances, dets, labels, masks, shape)
        ok = (found['compared'] > 0 and not found['unmatched']
              and found['max_box_diff'] <= BOX_TOLERANCE
              and found['max_score_diff'] <= SCORE_TOLERANCE
              and found['mean_mask_iou'] >= MASK_IOU)
    else:
        agree = float((outs[0].reshape(1, H, W) == pred.pred_sem_seg.data.numpy()).mean())
        found = dict(agreement=agree)
        ok = agree >= LABEL_AGREEMENT
    return found, bool(ok) and np.isfinite(list(found.values())).all()


def main(argv=None):
    args = parse_args(argv)
    try:
        from pale_mm.deploy.mmdeploy_route import (
            deploy_config,
            register_exact_pooling,
            torch_for_mmdeploy,
        )
        from pale_mm.deploy.onnx_export import build_graph
        from pale_mm.deploy.onnx_runtime import DeployError, require
        require('mmdeploy', 'docs/deploy.md "mmdeploy" says how to install it')
        from mmdeploy.apis import torch2onnx
        register_exact_pooling()
        import numpy as np
        graph = build_graph(args.config, args.checkpoint, args.shape,
                            cfg_options=args.cfg_options)
        cfg, model = graph.cfg, graph.model
        deploy_cfg = deploy_config(cfg.default_scope, cfg.model, args.shape)
        out = osp.abspath(args.out or '{}_{}x{}_mmdeploy.onnx'.format(
            osp.splitext(args.checkpoint)[0], *args.shape))
        os.makedirs(osp.dirname(out), exist_ok=True)
        image = np.random.default_rng(0).integers(0, 256, (*args.shape, 3), dtype=np.uint8)
        with tempfile.TemporaryDirectory(dir=osp.dirname(out), prefix='.mmdeploy.') as tmp:
            with torch_for_mmdeploy():
                torch2onnx(image, tmp, 'end2end.onnx', deploy_cfg, cfg, args.checkpoint, 'cpu')
            found, ok = check(osp.join(tmp, 'end2end.onnx'), model, cfg.default_scope,
                              args.shape)
            if not ok:
                raise DeployError(f'ONNX Runtime does not give PyTorch\'s predictions through '
                                  f'mmdeploy: {found}; nothing was written to {out}')
            os.replace(osp.join(tmp, 'end2end.onnx'), out)
    except PaleError as e:
        sys.exit(f'mmdeploy_export.py: error: {e.summary}')
    print(f'mmdeploy {cfg.default_scope} -> {out}: ONNX Runtime against PyTorch: {found}')
    return found


if __name__ == '__main__':
    main()
