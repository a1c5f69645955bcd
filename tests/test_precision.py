"""Mixed precision and compilation: a training step under torch.autocast in float16 and
bfloat16 against float32, and torch.compile against eager."""
import contextlib

import pytest
import torch

from pale_mm.models import PaleTransformer

ARCH = dict(embed_dims=16, depths=(1, 1, 2, 1), num_heads=(2, 2, 4, 4))

# Relative error of all gradients together, ||g - g32|| / ||g32||. One rounding to a 16-bit
# format errs by up to 2^-11 (float16) or 2^-8 (bfloat16) of the value; a step rounds the
# products' inputs and outputs of some 20 layers forward and back, and these errors add up
# roughly like a random walk: a few times 2^-8 = 0.4% for bfloat16. The bounds are about
# three times what this test measured (float16 0.5%, bfloat16 3%), and far below what a
# wrong gradient gives (of order 100%).
GRAD_TOLERANCE = {torch.float16: 0.02, torch.bfloat16: 0.1}


def training_step(model, x, dtype):
    """Loss and the gradients of every parameter and of the input after one step."""
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    # (float32: no autocast context at all; torch 2.1 refuses float32 as its dtype)
    autocast = (contextlib.nullcontext() if dtype is torch.float32 else
                torch.autocast(x.device.type, dtype=dtype))
    with autocast:
        outs = model(x)
        loss = sum((o.float() * torch.linspace(-1, 1, o.shape[1], device=x.device)
                    .view(1, -1, 1, 1)).mean() for o in outs)
    loss.backward()
    return outs, torch.cat([x.grad.flatten()] + [p.grad.flatten()
                                                  for p in model.parameters()])


@pytest.mark.parametrize('memory_efficient', [True, False])
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_autocast_training_step(dtype, memory_efficient, device, needs_autocast):
    needs_autocast(device, dtype)
    torch.manual_seed(0)
    model = PaleTransformer(ARCH, drop_path_rate=0., memory_efficient=memory_efficient)
    model.init_weights()
    model = model.to(device).train()
    x = torch.randn(2, 3, 61, 53, device=device)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    _, g32 = training_step(model, x, torch.float32)
    model.load_state_dict(state)  # the same running statistics for the second step
    outs, g = training_step(model, x, dtype)
    assert all(o.dtype == dtype for o in outs)  # the output norms ran under autocast
    assert g.dtype == torch.float32 and torch.isfinite(g).all()
    err = ((g - g32).norm() / g32.norm()).item()
    assert err < GRAD_TOLERANCE[dtype], err


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_default_model_trains_a_step(dtype, device, needs_autocast):
    """``PaleTransformer()`` as users build it (Pale-T, memory_efficient): one finite
    training step, in float32 and under bfloat16 autocast, with a gradient for every
    parameter."""
    if dtype is not torch.float32:
        needs_autocast(device, dtype)
    torch.manual_seed(0)
    model = PaleTransformer()
    model.init_weights()
    model = model.to(device).train()
    outs, grads = training_step(model, torch.randn(2, 3, 64, 64, device=device), dtype)
    assert [o.shape[1] for o in outs] == [64, 128, 256, 512]
    assert torch.isfinite(grads).all()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.slow  # compiles a backbone
def test_compiled_backbone_matches_eager(device):
    """torch.compile with the ``aot_eager`` backend: Dynamo captures the graph and
    AOTAutograd traces forward and backward, as for the default backend, but the graph runs
    as eager ATen ops instead of generated kernels; Inductor's C++ compilation of a whole
    backbone takes minutes on a 2-core machine, too long for the test suite. With
    ``memory_efficient=False`` (docs/model.md: the route for compiled training) the whole
    backbone is one graph: ``fullgraph=True`` fails on any graph break. (With the
    memory-efficient Function, Dynamo falls back to eager at each of its calls: the eager
    code the other tests check; compiling it so takes four times as long.)"""
    if device.type == 'cuda':
        pytest.skip('compiling is slow; the CPU run of this test covers it')
    torch.manual_seed(0)
    model = PaleTransformer(ARCH, drop_path_rate=0., memory_efficient=False)
    model.init_weights()
    model.train()
    x = torch.randn(2, 3, 61, 53, device=device)
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    eager_outs, eager_grads = training_step(model, x, torch.float32)
    eager_stats = {k: v.clone() for k, v in model.state_dict().items() if 'running' in k}
    model.load_state_dict(state)
    outs, grads = training_step(compiled, x, torch.float32)
    for o, e in zip(outs, eager_outs):
        torch.testing.assert_close(o, e, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads, eager_grads, atol=1e-5, rtol=1e-4)
    # the compiled step moved the BatchNorm statistics once, as the eager one did
    for name, t in eager_stats.items():
        torch.testing.assert_close(model.state_dict()[name], t, msg=name)
