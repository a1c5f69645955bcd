"""Whole detectors and segmentors through mmdeploy 1.3.1, checked in ONNX Runtime.

mmdeploy rewrites mmdet's and mmseg's post-processing for export (proposals and per-class
NMS as ``NonMaxSuppression``, ``RoiAlign``, masks at the RoI size) and drives torch's
TorchScript exporter; Pale needs no rewriter of its own. Its last release (2023) predates
two changes of torch that :func:`torch_for_mmdeploy` bridges for the time of an export,
where the installed torch has them:

* torch >= 2.9 exports with ``torch.export`` unless told ``dynamo=False``: mmdeploy's rewriters
  (symbolics of the TorchScript exporter) then do not apply and the export fails;
* torch's ``symbolic_opset9._cast_Long``, which mmdeploy's ``RoIAlign`` symbolic imports, is gone.

and one rewrite of mmdeploy's is replaced: it exports ``adaptive_avg_pool2d`` as ``avg_pool2d``
with kernel ``floor(size / bins)``, which is torch's pooling only where the bins divide the
map (UperNet's pyramid pooling at 512 x 512: 16 x 16 into 3 and 6 bins; 10% of the label
map differed): :func:`register_exact_pooling` puts :func:`exact_adaptive_avg_pool2d`, torch's
bins, in its place.

:func:`deploy_config` writes mmdeploy's deploy config for a static size, with the model's own
test-time thresholds, so that the file's detections are the PyTorch model's.
"""
import contextlib
import functools
import inspect
from typing import Dict, Tuple

import numpy as np
import torch

from .onnx_runtime import DeployError

MMDEPLOY_VERSION = '1.3.1'


def exact_adaptive_avg_pool2d(input, output_size):
    """``adaptive_avg_pool2d`` as two products with torch's bin matrices (static sizes)."""
    from torch.nn.modules.utils import _pair

    from .onnx_export import adaptive_pool_matrix
    H, W = (int(n) for n in input.shape[-2:])
    out = [n if n is not None else s for n, s in zip(_pair(output_size), (H, W))]
    rows = adaptive_pool_matrix(H, out[0]).to(input)
    cols = adaptive_pool_matrix(W, out[1]).to(input)
    return rows @ input @ cols.t()


_REWRITER_REGISTERED = []


def register_exact_pooling() -> None:
    """mmdeploy's rewriter registry: ONNX Runtime's ``adaptive_avg_pool2d`` is
    :func:`exact_adaptive_avg_pool2d` (a backend's rewrite wins over the default one)."""
    if _REWRITER_REGISTERED:
        return
    from mmdeploy.core import FUNCTION_REWRITER
    FUNCTION_REWRITER.register_rewriter(
        func_name='torch.nn.functional.adaptive_avg_pool2d',
        backend='onnxruntime')(exact_adaptive_avg_pool2d)
    _REWRITER_REGISTERED.append(True)


@contextlib.contextmanager
def torch_for_mmdeploy():
    """Within the block, ``torch.onnx.export`` uses the TorchScript exporter unless told
    otherwise, and ``symbolic_opset9._cast_Long`` exists: only where this torch differs."""
    import torch.onnx.symbolic_opset9 as opset9
    export = torch.onnx.export
    patched = []
    params = inspect.signature(export).parameters
    if 'dynamo' in params and params['dynamo'].default is not False:
        torch.onnx.export = functools.partial(export, dynamo=False)
        patched.append(lambda: setattr(torch.onnx, 'export', export))
    if not hasattr(opset9, '_cast_Long'):
        def _cast_long(g, x, non_blocking=False):
            return g.op('Cast', x, to_i=7)  # TensorProto.INT64
        opset9._cast_Long = _cast_long
        patched.append(lambda: delattr(opset9, '_cast_Long'))
    try:
        yield
    finally:
        for undo in patched:
            undo()


def deploy_config(scope: str, model_cfg, shape: Tuple[int, int]):
    """mmdeploy's deploy config: ONNX Runtime, static ``shape`` (H, W), opset 17 (Pale's
    LayerNorm; mmdeploy's configs say 11), the model's test-time thresholds."""
    from mmengine.config import Config
    H, W = shape
    onnx_config = dict(type='onnx', export_params=True, keep_initializers_as_inputs=False,
                       opset_version=17, save_file='end2end.onnx', input_names=['input'],
                       input_shape=[W, H], optimize=True)
    if scope == 'mmseg':
        onnx_config['output_names'] = ['output']
        codebase = dict(type='mmseg', task='Segmentation', with_argmax=True)
    elif scope == 'mmdet':
        rcnn = model_cfg.test_cfg.rcnn
        onnx_config['output_names'] = ['dets', 'labels', 'masks']
        codebase = dict(type='mmdet', task='ObjectDetection', model_type='end2end',
                        post_processing=dict(
                            score_threshold=rcnn.score_thr,
                            confidence_threshold=0.005,
                            iou_threshold=rcnn.nms.iou_threshold,
                            max_output_boxes_per_class=max(200, rcnn.max_per_img), pre_top_k=5000,
                            keep_top_k=rcnn.max_per_img, background_label_id=-1,
                            export_postprocess_mask=False))
    else:
        raise DeployError(f'the mmdeploy route here is for mmdet and mmseg configs, not '
                          f'{scope!r}: use tools/export_onnx.py')
    return Config(dict(onnx_config=onnx_config, codebase_config=codebase,
                       backend_config=dict(type='onnxruntime')))


def compare_detections(pred, dets: np.ndarray, labels: np.ndarray, masks: np.ndarray,
                       shape: Tuple[int, int], top: int = 20) -> Dict:
    """mmdeploy's outputs for one image (``dets`` (N, 5) boxes and scores, ``labels`` (N, ),
    ``masks`` (N, 28, 28) at the RoI) against mmdet's ``pred_instances`` of the same image.

    PyTorch's ``top`` highest-scored detections are each matched to the file's detection of
    the same label with the nearest box: the largest box and score differences, the masks
    (pasted as mmdet pastes them) by IoU. The counts are reported, not compared: near the
    score threshold, and among boxes of near-equal scores in NMS, float32 differences of
    1e-4 may keep a detection on one side and drop it on the other."""
    from mmdet.models.roi_heads.mask_heads.fcn_mask_head import _do_paste_mask
    keep = dets[:, 4] > 0  # mmdeploy pads with zero-score rows
    dets, labels, masks = dets[keep], labels[keep], masks[keep]
    order = np.argsort(-pred.scores.numpy(), kind='stable')[:top]
    found = dict(count=int(len(pred.labels)), onnx_count=int(len(labels)),
                 compared=int(len(order)), unmatched=0, max_box_diff=0.0,
                 max_score_diff=0.0, min_mask_iou=1.0, mean_mask_iou=1.0)
    if not len(order) or not len(labels):
        found['unmatched'] = int(len(order))
        return found
    pasted, _ = _do_paste_mask(torch.from_numpy(masks)[:, None], torch.from_numpy(dets[:, :4]),
                               *shape, skip_empty=False)
    pasted = (pasted >= 0.5).numpy()
    ious = []
    for i in order:
        box, label = pred.bboxes[i].numpy(), int(pred.labels[i])
        same = np.flatnonzero(labels == label)
        if not len(same):
            found['unmatched'] += 1
            continue
        diffs = np.abs(dets[same, :4] - box).max(axis=1)
        j = same[diffs.argmin()]
        found['max_box_diff'] = max(found['max_box_diff'], float(diffs.min()))
        found['max_score_diff'] = max(found['max_score_diff'],
                                      float(abs(dets[j, 4] - pred.scores[i])))
        mask = pred.masks[i].numpy()
        union = np.logical_or(pasted[j], mask).sum()
        ious.append(float(np.logical_and(pasted[j], mask).sum() / union) if union else 1.0)
    if ious:
        found.update(min_mask_iou=min(ious), mean_mask_iou=float(np.mean(ious)))
    return found
