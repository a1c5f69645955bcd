"""memory_efficient=True against the plain modules: outputs, gradients, BatchNorm statistics,
autocast, and how much a block keeps for its backward."""
import copy
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from pale_mm.models.memory_efficient import recomputed_input_linear
from pale_mm.models.pale_attention import PaleLayout
from pale_mm.models.pale_transformer import Mlp, PaleAttention, PaleBlock, SepConvProjection


def grads_of(out, tensors, seed=0):
    """Gradients of a fixed random projection of ``out`` with respect to ``tensors``."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(out.shape, generator=g).to(out.device, out.dtype)
    return torch.autograd.grad((out * weight).float().sum(), tensors, allow_unused=True,
                               retain_graph=True)


def assert_same(a, b, **tol):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        if v is None:
            assert u is None
            continue
        assert u.dtype == v.dtype and u.shape == v.shape
        torch.testing.assert_close(u, v, **tol)


def saved_bytes(fn, *args):
    """Bytes autograd keeps for the backward of ``fn(*args)``, each storage counted once."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    return out, sum(storages.values())


def lean_and_plain(module_type, *args, **kwargs):
    """The module with memory_efficient on, and a copy with the same weights with it off."""
    torch.manual_seed(0)
    lean = module_type(*args, **kwargs, memory_efficient=True)
    plain = module_type(*args, **kwargs, memory_efficient=False)
    plain.load_state_dict(lean.state_dict())
    return lean, plain


# ------------------------------------------------------------------ the Function
def _scaled_gelu(x, scale):  # an fn with a parameter of its own
    return F.gelu(x * scale)


@pytest.mark.parametrize('fn,shape,bias', [
    (F.gelu, (2, 5, 7, 16), True),
    (partial(F.gelu, approximate='tanh'), (40, 16), True),
    (_scaled_gelu, (3, 6, 16), False),
])
def test_recomputed_input_linear_matches_linear(fn, shape, bias, device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(device).requires_grad_()
    extra = [torch.rand(16, generator=g).to(device).requires_grad_()] \
        if fn is _scaled_gelu else []
    w = torch.randn(24, 16, generator=g).to(device).requires_grad_()
    b = torch.randn(24, generator=g).to(device).requires_grad_() if bias else None
    leaves = [x, w, *extra] + ([b] if bias else [])

    plain = F.linear(fn(x, *extra), w, b)
    lean, kept = saved_bytes(recomputed_input_linear, fn, (x, *extra), w, b)
    torch.testing.assert_close(lean, plain, atol=0, rtol=0)
    assert_same(grads_of(lean, leaves), grads_of(plain, leaves), atol=1e-6, rtol=1e-5)
    # it keeps x, the weight and fn's parameters; not fn(x)
    assert kept == sum(t.numel() * 4 for t in leaves if t is not b)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_recomputed_input_linear_under_autocast(dtype, device, needs_autocast):
    needs_autocast(device, dtype)
    g = torch.Generator().manual_seed(1)
    x, w1, w, b = (torch.randn(*s, generator=g).to(device).requires_grad_()
                   for s in ((4, 9, 32), (48, 32), (64, 48), (64, )))
    with torch.autocast(device.type, dtype=dtype):
        h = F.linear(x, w1)  # low precision, as fc1's output
        plain = F.linear(F.gelu(h), w, b)
        lean = recomputed_input_linear(F.gelu, (h, ), w, b)
    assert lean.dtype == plain.dtype == dtype
    torch.testing.assert_close(lean, plain, atol=0, rtol=0)
    gl, gp = grads_of(lean, (x, w1, w, b)), grads_of(plain, (x, w1, w, b))
    assert [t.dtype for t in gl] == [torch.float32] * 4
    assert_same(gl, gp, atol=1e-2, rtol=1e-2)


def test_only_what_needs_a_gradient_gets_one(device):
    x = torch.randn(6, 8, device=device, requires_grad=True)
    w = torch.randn(5, 8, device=device)  # frozen
    out = recomputed_input_linear(F.gelu, (x, ), w, None)
    (gx, ) = torch.autograd.grad(out.sum(), (x, ))
    torch.testing.assert_close(gx, torch.autograd.grad(F.linear(F.gelu(x), w).sum(), x)[0])


# ------------------------------------------------------------------ the modules
@pytest.mark.parametrize('mode', ['train', 'norm_eval', 'momentum_none', 'frozen_bn',
                                  'frozen_dw'])
def test_sepconv_projection_matches_plain(mode, device):
    torch.manual_seed(0)
    lean = SepConvProjection(16, memory_efficient=True)
    with torch.no_grad():  # statistics and affine parameters away from their defaults
        lean.bn.running_mean.normal_()
        lean.bn.running_var.uniform_(0.5, 2)
        lean.bn.weight.uniform_(0.5, 1.5)
        lean.bn.bias.normal_()
    if mode == 'momentum_none':
        lean.bn.momentum = None
    plain = copy.deepcopy(lean)
    plain.memory_efficient = False
    frozen = {'frozen_bn': 'bn', 'frozen_dw': 'dw'}.get(mode)
    for m in (lean, plain):
        if frozen is not None:  # only some inputs of the Function need gradients
            getattr(m, frozen).requires_grad_(False)
        m.to(device).train()
        if mode == 'norm_eval':  # a training step with frozen statistics (norm_eval=True)
            m.bn.eval()
    x = torch.randn(2, 11, 9, 16, device=device).permute(0, 3, 1, 2).requires_grad_()

    out_lean, out_plain = lean(x), plain(x)
    torch.testing.assert_close(out_lean, out_plain, atol=0, rtol=0)
    params = lambda m: [x] + [p for p in m.parameters() if p.requires_grad]  # noqa: E731
    assert_same(grads_of(out_lean, params(lean)), grads_of(out_plain, params(plain)),
                atol=1e-5, rtol=1e-5)
    # running statistics moved once, as the plain BatchNorm's did (or not at all: norm_eval)
    for (name, a), (_, b) in zip(lean.bn.named_buffers(), plain.bn.named_buffers()):
        assert torch.equal(a, b), name


def test_sepconv_projection_keeps_less(device):
    lean, plain = lean_and_plain(SepConvProjection, 16)
    x = torch.randn(2, 12, 10, 16, device=device).permute(0, 3, 1, 2).requires_grad_()
    _, kept_lean = saved_bytes(lean.to(device).train(), x)
    _, kept_plain = saved_bytes(plain.to(device).train(), x)
    assert kept_plain - kept_lean >= 2 * x.numel() * 4  # neither the conv's nor the BN's output


@pytest.mark.parametrize('approximate', ['none', 'tanh'])
def test_mlp_matches_plain(approximate, device):
    lean, plain = lean_and_plain(Mlp, 16, 64, dict(type='GELU', approximate=approximate))
    lean, plain = lean.to(device).train(), plain.to(device).train()
    x = torch.randn(2, 7, 5, 16, device=device, requires_grad=True)
    out_lean, kept_lean = saved_bytes(lean, x)
    out_plain, kept_plain = saved_bytes(plain, x)
    torch.testing.assert_close(out_lean, out_plain, atol=0, rtol=0)
    assert_same(grads_of(out_lean, [x, *lean.parameters()]),
                grads_of(out_plain, [x, *plain.parameters()]), atol=1e-5, rtol=1e-5)
    assert kept_plain - kept_lean == x.numel() * 4 * 4  # GELU's output: 4C per token


def test_mlp_with_dropout_or_other_activation_stays_plain(device):
    x = torch.randn(3, 16, device=device, requires_grad=True)
    for cfg, drop in ((dict(type='GELU'), 0.5), (dict(type='ReLU'), 0.)):
        lean, plain = lean_and_plain(Mlp, 16, 32, cfg, drop)
        outs = []
        for m in (lean, plain):
            torch.manual_seed(0)
            outs.append(m.to(device).train()(x))
        torch.testing.assert_close(outs[0], outs[1])
        assert_same(grads_of(outs[0], [x]), grads_of(outs[1], [x]))


def test_attention_module_matches_plain(device):
    lean, plain = lean_and_plain(PaleAttention, 32, 4, pale_size=7)
    lean, plain = lean.to(device).train(), plain.to(device).train()
    x = torch.randn(2, 10, 16, 32, device=device, requires_grad=True)  # unequal row groups
    lean_out, lean_kept = saved_bytes(lean, x)
    plain_out, plain_kept = saved_bytes(plain, x)
    torch.testing.assert_close(lean_out, plain_out, atol=1e-6, rtol=1e-5)
    assert_same(grads_of(lean_out, [x, *lean.parameters()]),
                grads_of(plain_out, [x, *plain.parameters()]), atol=1e-5, rtol=1e-4)
    # 6C in the Q/K/V projections and C in the output projection's input
    assert plain_kept - lean_kept >= 7 * x.numel() * 4
    for a, b in zip(lean.buffers(), plain.buffers()):  # statistics moved once, alike
        assert torch.equal(a, b)


def test_block_keeps_at_most_14_channels_per_token(device):
    """Activations a PaleBlock keeps for the backward, per token, in units of its width C:
    about 13 C with memory_efficient (see pale_mm/models/memory_efficient.py), 24 C
    without."""
    lean, plain = lean_and_plain(PaleBlock, 32, 4)
    x = torch.randn(2, 14, 21, 32, device=device, requires_grad=True)
    _, kept_lean = saved_bytes(lean.to(device).train(), x)
    _, kept_plain = saved_bytes(plain.to(device).train(), x)
    assert kept_lean / (x.numel() * 4) < 14
    assert kept_plain / (x.numel() * 4) > 23


@pytest.mark.parametrize('with_cp', [False, True])
def test_block_autocast_matches_plain(with_cp, device):
    """Under bfloat16 autocast memory_efficient gives what the plain modules give."""
    lean, plain = lean_and_plain(PaleBlock, 32, 4, with_cp=with_cp)
    lean, plain = lean.to(device).train(), plain.to(device).train()
    x = torch.randn(2, 9, 12, 32, device=device, requires_grad=True)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out_lean = lean(x)
        out_plain = plain(x)
    assert out_lean.dtype == out_plain.dtype
    torch.testing.assert_close(out_lean, out_plain, atol=1e-2, rtol=1e-2)
    # compared on the gradients' own scale: bfloat16 products
    for a, b in zip(grads_of(out_lean, [x, *lean.parameters()]),
                    grads_of(out_plain, [x, *plain.parameters()])):
        assert a.dtype == b.dtype == torch.float32
        assert (a - b).abs().max() <= 2e-2 * b.abs().max() + 1e-6


def test_sync_batchnorm_takes_the_plain_path(device):
    """After conversion to SyncBatchNorm (DDP with sync_bn) the projection runs its modules
    as they are: the recompute is written for BatchNorm2d only."""
    m = SepConvProjection(8, memory_efficient=True).to(device).eval()
    m.bn = torch.nn.SyncBatchNorm.convert_sync_batchnorm(m).bn  # eval: no process group used
    x = torch.randn(1, 8, 5, 6, device=device, requires_grad=True)
    out, kept = saved_bytes(m, x)
    assert kept >= 2 * x.numel() * 4  # the conv's and BatchNorm's outputs, as plain autograd
    torch.testing.assert_close(out, m.pw(m.bn(m.dw(x)).permute(0, 2, 3, 1)))


# ------------------------------------------------------------------ grouping
@pytest.mark.parametrize('H,W,pale', [(14, 14, 7), (10, 13, 7), (8, 3, 7), (9, 22, (4, 3))])
def test_gather_scatter_are_inverse_and_adjoint(H, W, pale, device):
    x = torch.randn(2, H, W, 12, device=device, dtype=torch.float64)
    layout = PaleLayout.of(x, pale, 6)
    bands = layout.gather(x)
    # rows: B * G groups in all; no padded token anywhere
    assert sum(b.shape[0] * b.shape[2] for b in bands[:1 + bool(layout.rows.rest)]) == 2 * H * W
    assert sum(b.numel() for b in bands) == x.numel()
    assert torch.equal(layout.scatter(*bands), x)
    # a permutation of the tokens: <gather(x), y> = <x, scatter(y)>
    ys = [torch.randn_like(b) for b in bands]
    lhs = sum((b * y).sum() for b, y in zip(bands, ys))
    torch.testing.assert_close(lhs, (x * layout.scatter(*ys)).sum())


def test_eval_mode_runs_the_plain_modules(device):
    """In eval mode (inference; the ONNX exporters trace in eval mode and cannot trace an
    autograd Function) a memory-efficient block keeps what the plain block keeps, even with
    autograd on."""
    lean, plain = lean_and_plain(PaleBlock, 32, 4)
    lean, plain = lean.to(device).eval(), plain.to(device).eval()
    x = torch.randn(1, 9, 12, 32, device=device, requires_grad=True)
    (out_lean, kept_lean), (out_plain, kept_plain) = saved_bytes(lean, x), saved_bytes(plain, x)
    assert kept_lean == kept_plain
    torch.testing.assert_close(out_lean, out_plain, atol=0, rtol=0)
    # and in train mode it keeps less: the switch is the mode
    assert saved_bytes(lean.train(), x)[1] < saved_bytes(plain.train(), x)[1]
