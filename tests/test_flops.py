"""Complexity: the paper's FLOPs (multiply-accumulates) at 224x224, attention included."""
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_GMACS = {'tiny': 4.2, 'small': 9.0, 'base': 15.6}


@pytest.mark.parametrize('arch', sorted(PAPER_GMACS))
def test_get_flops_backbone_matches_paper(arch, get_flops):
    lines = get_flops('--backbone', arch, '--shape', 224, 224)
    gmacs = float(lines['MACs'].split()[0])
    assert abs(gmacs - PAPER_GMACS[arch]) <= 0.03 * PAPER_GMACS[arch], lines
    attn = float(lines['MACs'].split('attention products:')[1].split()[0])
    assert attn > 0.05 * gmacs  # the attention products are counted


def test_sdpa_handle_counts_both_products():
    """The handle's count for one SDPA call equals L*S*(E+Ev) per batch element."""
    from pale_mm.flops import complexity

    class Attn(torch.nn.Module):
        def forward(self, q, k, v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    q = torch.randn(2, 3, 10, 8)
    k = torch.randn(2, 3, 12, 8)
    v = torch.randn(2, 3, 12, 5)
    res = complexity(Attn(), (q, k, v))
    assert res['macs'] == 2 * 3 * 10 * 12 * (8 + 5)
    assert not res['unsupported']


# Whole models from the configs, as in the paper's tables: Mask R-CNN at 1280x800 (H=800),
# UperNet at 2048x512 (H=512); within 5%.
CONFIG_GMACS = [
    ('configs/mask_rcnn/pale_t_coco_1x.py', (800, 1280), 306),
    ('configs/mask_rcnn/pale_s_coco_1x.py', (800, 1280), 432),
    ('configs/mask_rcnn/pale_b_coco_1x.py', (800, 1280), 595),
    ('configs/upernet/pale_t_ade20k.py', (512, 2048), 996),
    ('configs/upernet/pale_s_ade20k.py', (512, 2048), 1135),
    ('configs/upernet/pale_b_ade20k.py', (512, 2048), 1311),
]


@pytest.mark.slow  # traces six whole detectors/segmentors
@pytest.mark.parametrize('config,shape,paper', CONFIG_GMACS)
def test_get_flops_config_matches_paper(config, shape, paper, get_flops):
    lines = get_flops(config, '--shape', *shape)
    gmacs = float(lines['MACs'].split()[0])
    assert abs(gmacs - paper) <= 0.05 * paper, lines
    assert float(lines['params'].split()[0]) > 0
    assert float(lines['MACs'].split('attention products:')[1].split()[0]) > 0


def test_get_flops_command_line():
    """The command itself (the other tests run its main in-process): a count, then bad
    input as one line without a traceback."""
    res = subprocess.run([sys.executable, 'tools/get_flops.py', '--backbone', 'tiny',
                          '--shape', '64', '--by-operator'],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "model: PaleTransformer('tiny') backbone" in res.stdout
    assert 'input shape: 3x64x64' in res.stdout and 'scaled_dot_product_attention:' in res.stdout
    res = subprocess.run([sys.executable, 'tools/get_flops.py', '--backbone', 'huge'],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode != 0 and "unknown arch 'huge'" in res.stderr
    assert 'Traceback' not in res.stderr
    res = subprocess.run([sys.executable, 'tools/get_flops.py', 'configs/nope.py'],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode != 0 and 'config file not found' in res.stderr
    assert 'Traceback' not in res.stderr
