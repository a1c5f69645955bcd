"""A whole Pale Mask R-CNN and a Pale UperNet through mmdeploy 1.3.1 (tools/mmdeploy_export.py),
checked against PyTorch's predictions in ONNX Runtime.

mmdeploy is installed by scripts/setup_env.sh beside the environment
(``$VENV/mmdeploy-packages``, requirements/mmdeploy.txt); the tool runs with it on PYTHONPATH.
Tolerances (float32): PyTorch's 20 best detections each matched by a detection of the same
label with a box within 0.5 pixel and a score within 1e-3, mean mask IoU at least 0.95;
segmentation labels agree on 99.9% of the pixels (seen: all).
"""
import ast
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

pytest.importorskip('onnxruntime', reason='pale_mm[deploy] is not installed')

from pale_mm.deploy.onnx_export import build_graph  # noqa: E402

from det_common import ROOT, write_small_config  # noqa: E402

MMDEPLOY_PACKAGES = osp.join(sys.prefix, 'mmdeploy-packages')
SEG_CONFIG = osp.join(ROOT, 'configs', 'upernet', 'pale_demo_synthetic.py')

pytestmark = pytest.mark.slow


def run_tool(argv):
    assert osp.isdir(osp.join(MMDEPLOY_PACKAGES, 'mmdeploy')), (
        f'mmdeploy is not installed in {MMDEPLOY_PACKAGES}: run make env')
    env = dict(os.environ, PYTHONPATH=MMDEPLOY_PACKAGES, OMP_NUM_THREADS='2')
    proc = subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'mmdeploy_export.py'), *argv],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    last = proc.stdout.strip().splitlines()[-1]
    return ast.literal_eval(last.split('ONNX Runtime against PyTorch: ', 1)[1])


def test_mask_rcnn_through_mmdeploy_gives_pytorchs_detections(tmp_path):
    config = write_small_config(tmp_path)
    torch.manual_seed(0)
    model = build_graph(config, None, (128, 160)).model
    with torch.no_grad():
        # a random detector whose scores and masks are not all near ties: class logits and
        # mask logits spread, as a trained model's are
        model.roi_head.bbox_head.fc_cls.weight.mul_(3)
        model.roi_head.mask_head.conv_logits.weight.mul_(10)
    torch.save({'state_dict': model.state_dict()}, str(tmp_path / 'det.pth'))
    found = run_tool([config, str(tmp_path / 'det.pth'), '--shape', '128', '160'])
    assert found['count'] > 20 and found['onnx_count'] > 20  # the counts are not compared
    assert found['compared'] == 20 and found['unmatched'] == 0
    assert found['max_box_diff'] <= 0.5 and found['max_score_diff'] <= 1e-3, found
    assert found['mean_mask_iou'] >= 0.95, found
    assert osp.isfile(tmp_path / 'det_128x160_mmdeploy.onnx')


def test_upernet_through_mmdeploy_with_exact_pyramid_pooling(tmp_path):
    """160 x 160: the 1/32 map is 5 x 5, which 3 and 6 bins do not divide (mmdeploy's own
    rewrite of the pooling differs from torch's there)."""
    torch.manual_seed(0)
    model = build_graph(SEG_CONFIG, None, (160, 160)).model
    torch.save({'state_dict': model.state_dict()}, str(tmp_path / 'seg.pth'))
    found = run_tool([SEG_CONFIG, str(tmp_path / 'seg.pth'), '--shape', '160', '160',
                      '-o', str(tmp_path / 'upernet.onnx')])
    assert found['agreement'] >= 0.999
    assert osp.isfile(tmp_path / 'upernet.onnx')


def test_torch_bridges_are_undone_after_the_export():
    import torch.onnx.symbolic_opset9 as opset9

    from pale_mm.deploy.mmdeploy_route import torch_for_mmdeploy
    export, had_cast_long = torch.onnx.export, hasattr(opset9, '_cast_Long')
    with torch_for_mmdeploy():
        assert hasattr(opset9, '_cast_Long')
    assert torch.onnx.export is export
    assert hasattr(opset9, '_cast_Long') == had_cast_long
