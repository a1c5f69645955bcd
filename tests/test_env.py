"""The environment the Makefile builds: what it pins, and that a second run does nothing."""
import os
import subprocess
import sys

import mmcv
import mmdet
import mmengine
import mmpretrain
import mmseg
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_versions():
    assert torch.__version__.startswith('2.14.1')
    assert mmcv.__version__ == '2.1.0'
    assert mmengine.__version__ == '0.10.7'
    assert mmdet.__version__ == '3.3.0'
    assert mmseg.__version__ == '1.2.2'
    assert mmpretrain.__version__ == '1.2.0'


def test_mmcv_has_compiled_ops():
    from mmcv.ops import RoIAlign, nms
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])
    _, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
    assert keep.tolist() == [0, 2]
    feats = torch.arange(16.).view(1, 1, 4, 4)
    out = RoIAlign((1, 1), 1.0, 0)(feats, torch.tensor([[0., 0., 0., 4., 4.]]))
    assert torch.allclose(out.flatten(), feats.mean().view(1))


def test_second_setup_is_a_no_op():
    """With nothing changed, the set-up script finds its stamp and installs nothing."""
    venv = os.path.join(ROOT, '.venv')
    if os.path.realpath(sys.prefix) != os.path.realpath(venv):
        pytest.skip('runs inside the .venv that `make test` builds')
    env = {**os.environ, 'VENV': venv}
    check = subprocess.run(['bash', 'scripts/setup_env.sh', '--check'], cwd=ROOT,
                           capture_output=True, text=True, env=env)
    assert check.returncode == 0, check.stderr  # the stamp matches the requirement files
    res = subprocess.run(['bash', 'scripts/setup_env.sh'], cwd=ROOT, capture_output=True,
                         text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout == '' and res.stderr == ''


def test_library_base_configs_resolve():
    """`_base_ = ['mmdet::...']` needs pkg_resources (setuptools < 81) at run time."""
    from mmengine.config import Config
    cfg = Config.fromstring(
        "_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py']\n", '.py')
    assert cfg.model.type == 'MaskRCNN'
