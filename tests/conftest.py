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
def device():
    """The device the model tests run on: ``PALE_TEST_DEVICE`` (default ``cpu``), e.g.
    ``PALE_TEST_DEVICE=cuda pytest tests/test_backbone.py`` as ``tools/gpu_check.sh`` does."""
    dev = torch.device(os.environ.get('PALE_TEST_DEVICE', 'cpu'))
    if dev.type == 'cuda' and not torch.cuda.is_available():
        pytest.skip(f'PALE_TEST_DEVICE={dev} but torch sees no CUDA device')
    return dev


@pytest.fixture
def needs_autocast():
    """``needs_autocast(device, dtype)`` skips the test where this torch has no ``dtype``
    autocast on ``device`` (torch 2.1's CPU autocast takes bfloat16 only: it warns and
    stays off for float16)."""
    import warnings

    def check(device, dtype):
        device_type = torch.device(device).type
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            try:
                with torch.autocast(device_type, dtype=dtype):
                    one = torch.ones(1, 1, device=device)
                    runs = one.mm(one).dtype == dtype
            except RuntimeError:
                runs = False
        if not runs:
            pytest.skip(f'torch {torch.__version__} has no {dtype} autocast on {device_type}')

    return check


@pytest.fixture
def tiny_arch():
    """A small custom arch: fast enough to run many times in the tests."""
    return dict(embed_dims=16, depths=(1, 1, 2, 1), num_heads=(2, 2, 4, 4))


@pytest.fixture(scope='module')
def one_torch_thread():
    """For modules that train tiny models: one thread is as fast on an idle machine and many
    times faster on a busy one (two threads wait on each other at every small op)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def optimizer_settings_of_each_parameter(model, optim_wrapper_cfg):
    """{parameter name: its param group's settings (lr, weight_decay, ...)} in the optimizer
    that ``optim_wrapper_cfg`` builds for ``model``."""
    from mmengine.optim import build_optim_wrapper
    wrapper = build_optim_wrapper(model, optim_wrapper_cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: {k: v for k, v in group.items() if k != 'params'}
            for group in wrapper.optimizer.param_groups for p in group['params']}
