"""The memory-lean autograd paths against plain PyTorch: outputs, gradients, BatchNorm
statistics, autocast, and how much a block keeps for its backward."""
import copy
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from pale_mm.models.low_memory import gelu_linear, recomputed_input_linear
from pale_mm.models.pale_attention import PaleLayout, pale_attention
from pale_mm.models.pale_transformer import Mlp, PaleAttention, PaleBlock, SepConvProjection


def grads_of(out, tensors, seed=0):
    """Gradients of a fixed random projection of ``out`` with respect to ``tensors``."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(out.shape, generator=g).to(out.dtype)
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


# ------------------------------------------------------------------ the generic Function
def _scaled_tanh(x, scale):  # an fn with a parameter of its own
    return torch.tanh(x * scale)


@pytest.mark.parametrize('fn,shape,bias', [
    (F.gelu, (2, 5, 7, 16), True),
    (partial(F.gelu, approximate='tanh'), (40, 16), True),
    (_scaled_tanh, (3, 6, 16), False),
])
def test_recomputed_input_linear_matches_linear(fn, shape, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, requires_grad=True)
    extra = [torch.rand(16, generator=g, requires_grad=True)] if fn is _scaled_tanh else []
    w = torch.randn(24, 16, generator=g, requires_grad=True)
    b = torch.randn(24, generator=g, requires_grad=True) if bias else None
    leaves = [x, w, *extra] + ([b] if bias else [])

    plain = F.linear(fn(x, *extra), w, b)
    lean, kept = saved_bytes(recomputed_input_linear, fn, (x, *extra), w, b)
    torch.testing.assert_close(lean, plain, atol=0, rtol=0)
    assert_same(grads_of(lean, leaves), grads_of(plain, leaves), atol=1e-6, rtol=1e-5)
    # it keeps x, the weight and fn's parameters; not fn(x)
    assert kept == sum(t.numel() * 4 for t in leaves if t is not b)


def test_recomputed_input_linear_under_autocast():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 9, 32, generator=g, requires_grad=True)
    w1 = torch.randn(48, 32, generator=g, requires_grad=True)
    w = torch.randn(64, 48, generator=g, requires_grad=True)
    b = torch.randn(64, generator=g, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        h = F.linear(x, w1)  # bfloat16, as fc1's output
        plain = F.linear(F.gelu(h), w, b)
        lean = recomputed_input_linear(F.gelu, (h, ), w, b)
    assert lean.dtype == plain.dtype == torch.bfloat16
    torch.testing.assert_close(lean, plain, atol=0, rtol=0)
    gl, gp = grads_of(lean, (x, w1, w, b)), grads_of(plain, (x, w1, w, b))
    assert [t.dtype for t in gl] == [torch.float32] * 4
    assert_same(gl, gp, atol=1e-2, rtol=1e-2)


def test_only_what_needs_a_gradient_gets_one():
    x = torch.randn(6, 8, requires_grad=True)
    w = torch.randn(5, 8)  # frozen
    out = recomputed_input_linear(F.gelu, (x, ), w, None)
    (gx, ) = torch.autograd.grad(out.sum(), (x, ))
    torch.testing.assert_close(gx, torch.autograd.grad(F.linear(F.gelu(x), w).sum(), x)[0])


@pytest.mark.parametrize('approximate', ['none', 'tanh'])
@pytest.mark.parametrize('autocast', [False, True])
def test_gelu_linear_matches_plain(approximate, autocast):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 5, 16, generator=g, requires_grad=True)
    w1 = torch.randn(64, 16, generator=g, requires_grad=True)
    w = torch.randn(16, 64, generator=g, requires_grad=True)
    b = torch.randn(16, generator=g, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        h = F.linear(x, w1)  # fc1's output
        plain = F.linear(F.gelu(h, approximate=approximate), w, b)
        lean, kept = saved_bytes(gelu_linear, h, w, b, approximate)
    assert lean.dtype == plain.dtype
    torch.testing.assert_close(lean, plain, atol=0, rtol=0)
    tol = dict(atol=1e-2, rtol=1e-2) if autocast else dict(atol=1e-6, rtol=1e-5)
    assert_same(grads_of(lean, (x, w1, w, b)), grads_of(plain, (x, w1, w, b)), **tol)
    assert kept == h.numel() * h.element_size() + w.numel() * 4  # h and the weight


@pytest.mark.parametrize('autocast', [False, True])
def test_gelu_linear_in_chunks_matches_plain(autocast, monkeypatch):
    """Several chunks of rows (the last one short), forward and backward."""
    import pale_mm.models.low_memory as lm
    monkeypatch.setattr(lm, 'CHUNK_BYTES', 64)  # 256 rows per chunk
    g = torch.Generator().manual_seed(3)
    h = torch.randn(3, 250, 32, generator=g, requires_grad=True)  # 750 rows: 3 chunks
    w = torch.randn(16, 32, generator=g, requires_grad=True)
    b = torch.randn(16, generator=g, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        plain = F.linear(F.gelu(h), w, b)
        lean = gelu_linear(h, w, b)
    assert lean.shape == plain.shape and lean.dtype == plain.dtype
    torch.testing.assert_close(lean, plain, atol=0, rtol=0)
    if not autocast:  # the weight gradient sums the rows chunk by chunk: float rounding
        assert_same(grads_of(lean, (h, w, b)), grads_of(plain, (h, w, b)), atol=1e-4,
                    rtol=1e-4)
        return
    # bfloat16: each chunk's weight-gradient product is rounded to bfloat16 before the
    # (float32) sum; held to a float64 reference, the error stays that of bfloat16 rounding
    exact = F.linear(F.gelu(h.double()), w.double(), b.double())
    for got, plain_g, ref in zip(grads_of(lean, (h, w, b)), grads_of(plain, (h, w, b)),
                                 grads_of(exact, (h, w, b))):
        err, plain_err = (got.double() - ref).abs().max(), (plain_g.double() - ref).abs().max()
        assert err <= 3 * plain_err + 1e-3 * ref.abs().max(), (err, plain_err)


def test_chunked_mlp_matches_plain(monkeypatch):
    import pale_mm.models.low_memory as lm
    monkeypatch.setattr(lm, 'CHUNK_BYTES', 64)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 7, 41, 16, generator=g)  # 574 rows: chunks of 256, 256, 62
    w1, b1 = torch.randn(64, 16, generator=g), torch.randn(64, generator=g)
    w2, b2 = torch.randn(16, 64, generator=g), torch.randn(16, generator=g)
    for bias1, bias2 in ((b1, b2), (None, None)):
        out = lm.chunked_mlp(x, w1, bias1, w2, bias2)
        torch.testing.assert_close(out, F.linear(F.gelu(F.linear(x, w1, bias1)), w2, bias2),
                                   atol=1e-5, rtol=1e-5)
        assert out.shape == x.shape


def test_mlp_module_inference_uses_chunks_and_matches(monkeypatch):
    """The Mlp module takes the chunked path at inference on the CPU, same values."""
    import pale_mm.models.low_memory as lm
    from pale_mm.models import pale_transformer as pt
    calls = []
    monkeypatch.setattr(pt, 'chunked_mlp', lambda *a, **k: calls.append(1) or
                        lm.chunked_mlp(*a, **k))
    mlp = pt.Mlp(16, 64, dict(type='GELU')).eval()
    x = torch.randn(2, 9, 9, 16)
    with torch.no_grad():
        out = mlp(x)
        plain = mlp.fc2(F.gelu(mlp.fc1(x)))
    assert calls == [1]
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-5)


def test_gelu_linear_frozen_weight():
    h = torch.randn(7, 12, requires_grad=True)
    w = torch.randn(5, 12)
    out = gelu_linear(h, w)
    torch.testing.assert_close(torch.autograd.grad(out.sum(), h)[0],
                               torch.autograd.grad(F.linear(F.gelu(h), w).sum(), h)[0])


# ------------------------------------------------------------------ the modules
def plain_sepconv(m, x):
    return m.pw(m.bn(m.dw(x)).permute(0, 2, 3, 1))


@pytest.mark.parametrize('mode', ['train', 'eval', 'eval_no_grad', 'momentum_none',
                                  'frozen_bn', 'frozen_dw'])
def test_sepconv_projection_matches_plain(mode):
    torch.manual_seed(0)
    lean = SepConvProjection(16)
    with torch.no_grad():  # statistics and affine parameters away from their defaults
        lean.bn.running_mean.normal_()
        lean.bn.running_var.uniform_(0.5, 2)
        lean.bn.weight.uniform_(0.5, 1.5)
        lean.bn.bias.normal_()
    if mode == 'momentum_none':
        lean.bn.momentum = None
    frozen = {'frozen_bn': lean.bn, 'frozen_dw': lean.dw}.get(mode)
    if frozen is not None:  # only some inputs of the hand-written backward need gradients
        frozen.requires_grad_(False)
    lean.train(mode != 'eval' and mode != 'eval_no_grad')
    plain = copy.deepcopy(lean)
    x = torch.randn(2, 11, 9, 16).permute(0, 3, 1, 2).requires_grad_()  # channels-last

    if mode == 'eval_no_grad':  # BatchNorm folded into the conv
        with torch.no_grad():
            torch.testing.assert_close(lean(x), plain_sepconv(plain, x), atol=1e-5, rtol=1e-5)
        return
    out_lean, out_plain = lean(x), plain_sepconv(plain, x)
    torch.testing.assert_close(out_lean, out_plain, atol=0, rtol=0)
    params = lambda m: [x] + [p for p in m.parameters() if p.requires_grad]  # noqa: E731
    assert_same(grads_of(out_lean, params(lean)), grads_of(out_plain, params(plain)),
                atol=1e-5, rtol=1e-5)
    # running statistics moved once, as the plain BatchNorm's did (or not at all in eval)
    for (name, a), (_, b) in zip(lean.bn.named_buffers(), plain.bn.named_buffers()):
        assert torch.equal(a, b), name


def test_hand_written_backwards_run_without_nested_autograd(monkeypatch):
    """In float32 the projections' and the output projection's backward are the hand-written
    ones (HandBackward), not a nested autograd pass; they match plain autograd above."""
    m = PaleAttention(32, 4, pale_size=7).train()
    x = torch.randn(2, 10, 16, 32, requires_grad=True)
    out = m(x)

    def nested(*args, **kwargs):
        raise AssertionError('nested autograd pass in a hand-written backward')
    monkeypatch.setattr(torch.autograd, 'grad', nested)
    out.sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in m.parameters())


def test_sepconv_projection_keeps_less():
    m = SepConvProjection(16).train()
    x = torch.randn(2, 12, 10, 16).permute(0, 3, 1, 2).requires_grad_()
    _, lean = saved_bytes(m, x)
    _, plain = saved_bytes(plain_sepconv, m, x)
    assert plain - lean >= 2 * x.numel() * 4  # neither the conv's nor the BN's output


@pytest.mark.parametrize('approximate', ['none', 'tanh'])
def test_mlp_matches_plain(approximate):
    torch.manual_seed(0)
    lean = Mlp(16, 64, dict(type='GELU', approximate=approximate)).train()
    plain = copy.deepcopy(lean)
    x = torch.randn(2, 7, 5, 16, requires_grad=True)
    (out_lean, kept_lean) = saved_bytes(lean, x)
    (out_plain, kept_plain) = saved_bytes(lambda x: plain.fc2(plain.act(plain.fc1(x))), x)
    torch.testing.assert_close(out_lean, out_plain, atol=0, rtol=0)
    assert_same(grads_of(out_lean, [x, *lean.parameters()]),
                grads_of(out_plain, [x, *plain.parameters()]), atol=1e-5, rtol=1e-5)
    assert kept_plain - kept_lean == x.numel() * 4 * 4  # GELU's output: 4C per token


def test_mlp_with_dropout_or_other_activation_stays_plain():
    x = torch.randn(3, 16, requires_grad=True)
    for m in (Mlp(16, 32, dict(type='GELU'), drop=0.5), Mlp(16, 32, dict(type='ReLU'))):
        torch.manual_seed(0)
        out = m.train()(x)
        torch.manual_seed(0)
        ref = m.drop(m.fc2(m.drop(m.act(m.fc1(x)))))
        torch.testing.assert_close(out, ref)


def test_attention_module_matches_plain():
    torch.manual_seed(0)
    m = PaleAttention(32, 4, pale_size=7).train()
    p = copy.deepcopy(m)
    x = torch.randn(2, 10, 16, 32, requires_grad=True)  # 10 rows: unequal row groups

    def plain(x):
        xc = x.permute(0, 3, 1, 2)
        q, k, v = (plain_sepconv(s, xc) for s in (p.q, p.k, p.v))
        return p.proj(pale_attention(q, k, v, 7, 4))

    lean_out, lean_kept = saved_bytes(m, x)
    plain_out, plain_kept = saved_bytes(plain, x)
    torch.testing.assert_close(lean_out, plain_out, atol=1e-6, rtol=1e-5)
    assert_same(grads_of(lean_out, [x, *m.parameters()]),
                grads_of(plain_out, [x, *p.parameters()]), atol=1e-5, rtol=1e-4)
    # 6C in the Q/K/V projections and C in the output projection's input
    assert plain_kept - lean_kept >= 7 * x.numel() * 4
    for a, b in zip(m.buffers(), p.buffers()):  # statistics moved once, alike
        assert torch.equal(a, b)


def test_block_keeps_at_most_14_channels_per_token():
    """Activations a PaleBlock keeps for the backward, per token, in units of its width C.
    The plain modules kept 24 C; see pale_mm/models/low_memory.py for what goes."""
    block = PaleBlock(32, 4).train()
    x = torch.randn(2, 14, 21, 32, requires_grad=True)
    _, kept = saved_bytes(block, x)
    assert kept / (x.numel() * 4) < 14


@pytest.mark.parametrize('with_cp', [False, True])
def test_block_autocast_matches_plain_ops(with_cp):
    """Under bfloat16 autocast the lean paths give what the plain modules give."""
    torch.manual_seed(0)
    block = PaleBlock(32, 4, with_cp=with_cp).train()
    x = torch.randn(2, 9, 12, 32, requires_grad=True)

    def plain(x):
        b = block
        x = x + b.cpe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        y = b.norm1(x).permute(0, 3, 1, 2)
        q, k, v = (plain_sepconv(p, y) for p in (b.attn.q, b.attn.k, b.attn.v))
        x = x + b.attn.proj(pale_attention(q, k, v, 7, 4))
        return x + b.mlp.fc2(b.mlp.act(b.mlp.fc1(b.norm2(x))))

    with torch.autocast('cpu', dtype=torch.bfloat16):
        lean = block(x)
        ref = plain(x)
    assert lean.dtype == ref.dtype
    torch.testing.assert_close(lean, ref, atol=1e-2, rtol=1e-2)
    leaves = [x, *block.parameters()]
    # compare on the gradients' own scale: bfloat16 products
    for a, b in zip(grads_of(lean, leaves), grads_of(ref, leaves)):
        assert a.dtype == b.dtype == torch.float32
        assert (a - b).abs().max() <= 2e-2 * b.abs().max() + 1e-6


# ------------------------------------------------------------------ grouping
@pytest.mark.parametrize('H,W,pale', [(14, 14, 7), (10, 13, 7), (8, 3, 7), (9, 22, (4, 3))])
def test_gather_scatter_are_inverse_and_adjoint(H, W, pale):
    x = torch.randn(2, H, W, 12, requires_grad=True)
    layout = PaleLayout.of(x, pale, 6)
    bands = layout.gather(x)
    # rows: B * G groups in all; no padded token anywhere
    assert sum(b.shape[0] * b.shape[2] for b in bands[:layout.num_row_bands]) == 2 * H * W
    assert sum(b.numel() for b in bands) == x.numel()
    assert torch.equal(layout.scatter(*bands), x)
    # each one's backward (the other one) equals autograd's through the plain copies
    ys = [torch.randn_like(b) for b in bands]
    assert_same(torch.autograd.grad(bands, x, ys),
                torch.autograd.grad(layout._gather(x), x, ys), atol=0, rtol=0)
    bands = [b.detach().requires_grad_() for b in bands]
    y = torch.randn_like(x)
    assert_same(torch.autograd.grad(layout.scatter(*bands), bands, y),
                torch.autograd.grad(layout._scatter(bands), bands, y), atol=0, rtol=0)


# ------------------------------------------------------------------ counting and tracing
def test_flop_count_unchanged_with_grad_enabled(tiny_arch):
    """Tracing falls back to the plain ops, so the counter sees every product."""
    from pale_mm import PaleTransformer
    from pale_mm.analysis import complexity
    model = PaleTransformer(tiny_arch).train()
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        expected = complexity(model, x)
    got = complexity(model, x)
    assert got['macs'] == expected['macs'] > 0
    assert got['by_operator'] == expected['by_operator']
