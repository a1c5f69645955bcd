"""The environments the Makefile builds (one per file of requirements/stacks/): the versions
each pins, that installing pale_mm into one changes nothing else, and that a second set-up
does nothing."""
import json
import os
import re
import subprocess
import sys
from importlib import metadata

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def built_stack():
    """The stack scripts/setup_env.sh built this environment from, or None (an environment
    built some other way, a user's own)."""
    path = os.path.join(sys.prefix, '.pale_mm-stack')
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return f.read().strip()


def stack_pins(stack):
    """{distribution: version} of the ``name==version`` lines of a stack file."""
    pins = {}
    with open(os.path.join(ROOT, 'requirements', 'stacks', f'{stack}.txt')) as f:
        for line in f:
            m = re.match(r'^([A-Za-z0-9_.-]+)==([^\s#]+)', line)
            if m:
                pins[m.group(1)] = m.group(2)
    return pins


def test_versions_are_the_stacks():
    stack = built_stack()
    if stack is None:
        pytest.skip('not an environment built by scripts/setup_env.sh')
    pins = stack_pins(stack)
    assert pins, stack
    installed = {name: metadata.version(name).split('+')[0] for name in pins}
    assert installed == pins


def test_mmcv_has_compiled_ops():
    if built_stack() is not None and 'mmcv-lite' in stack_pins(built_stack()):
        pytest.skip('this stack has mmcv-lite, without compiled ops')
    import torch
    from mmcv.ops import RoIAlign, nms
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])
    _, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
    assert keep.tolist() == [0, 2]
    feats = torch.arange(16.).view(1, 1, 4, 4)
    out = RoIAlign((1, 1), 1.0, 0)(feats, torch.tensor([[0., 0., 0., 4., 4.]]))
    assert torch.allclose(out.flatten(), feats.mean().view(1))


def test_installing_pale_mm_changes_nothing_else():
    """pip's plan for ``pip install -e .`` in an environment inside the supported range:
    pale_mm and nothing else (no torch, mmcv, mmengine, mmdet, mmseg, numpy). pip builds
    the project's metadata without build isolation here, which changes what is built with,
    not what is installed."""
    res = subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '--dry-run', '--quiet', '--report', '-',
         '--no-build-isolation', '--no-index', '-e', ROOT],
        capture_output=True, text=True, cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != 'PIP_CONSTRAINT'})
    assert res.returncode == 0, res.stderr[-3000:]
    plan = [item['metadata']['name'] for item in json.loads(res.stdout)['install']]
    print('pip would install:', plan)
    # (the name as the installed setuptools writes it: pale_mm or pale-mm)
    assert [re.sub(r'[-_.]+', '-', name).lower() for name in plan] == ['pale-mm']


def test_second_setup_is_a_no_op():
    """With nothing changed, the set-up script finds its stamp and installs nothing."""
    stack = built_stack()
    if stack is None:
        pytest.skip('runs inside an environment that scripts/setup_env.sh built')
    env = {**os.environ, 'VENV': sys.prefix}
    check = subprocess.run(['bash', 'scripts/setup_env.sh', '--check', stack], cwd=ROOT,
                           capture_output=True, text=True, env=env)
    assert check.returncode == 0, check.stderr  # the stamp matches the requirement files
    res = subprocess.run(['bash', 'scripts/setup_env.sh', stack], cwd=ROOT,
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout == '' and res.stderr == ''


def test_library_base_configs_resolve():
    """`_base_ = ['mmdet::...']` needs pkg_resources (setuptools < 81) at run time."""
    from mmengine.config import Config
    cfg = Config.fromstring(
        "_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py']\n", '.py')
    assert cfg.model.type == 'MaskRCNN'
