import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Two cores on CI: keep torch from oversubscribing them.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tiny_arch():
    """A small custom arch: fast enough to run many times in the tests."""
    return dict(embed_dims=16, depths=(1, 1, 2, 1), num_heads=(2, 2, 4, 4))
