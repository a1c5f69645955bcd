"""The whole backbone in float64 against a plain reference written from the definition.

The reference below takes a PaleTransformer's state_dict and recomputes its forward with
plain torch ops and :func:`pale_attention_reference` (dense attention under the explicit
pale mask), following docs/model.md ("The definition") and ``pale_attention.py``'s docstring. It
calls none of the model's modules. Map sizes are chosen so that no stage's side is a
multiple of its pale size: the padded-and-masked definition is what the fast attention must
reproduce there.
"""
import pytest
import torch
import torch.nn.functional as F

from pale_mm.models import PaleTransformer, pale_attention_reference

ARCH = dict(embed_dims=16, depths=(1, 1, 2, 1), num_heads=(2, 2, 4, 4))
PALE = (4, 3, 2, 2)
# stage maps 15x12, 8x6, 4x3, 2x2: 15 rows (pale 4), 8 rows (pale 3) and 3 columns (pale 2)
# form groups of unequal length (two bands each)
IMAGE = (2, 3, 58, 46)
LN_EPS = BN_EPS = 1e-5  # nn.LayerNorm's and nn.BatchNorm2d's defaults
BN_MOMENTUM = 0.1


def layer_norm(x, p, name):
    return F.layer_norm(x, x.shape[-1:], p[f'{name}.norm.weight'], p[f'{name}.norm.bias'],
                        LN_EPS)


def conv_embed(x, p, name, stride):
    """(B, H, W, C_in) -> strided conv (padding k // 2) -> LayerNorm -> (B, H', W', C)."""
    w = p[f'{name}.proj.weight']
    y = F.conv2d(x.permute(0, 3, 1, 2), w, p[f'{name}.proj.bias'], stride,
                 w.shape[-1] // 2).permute(0, 2, 3, 1)
    return layer_norm(y, p, f'{name}.norm')


def sep_conv(x, p, name, train, stats):
    """Depthwise 3x3 (no bias) -> BatchNorm -> pointwise; x (B, H, W, C)."""
    w = p[f'{name}.dw.weight']
    d = F.conv2d(x.permute(0, 3, 1, 2), w, None, 1, 1, groups=w.shape[0])
    mean, var = p[f'{name}.bn.running_mean'], p[f'{name}.bn.running_var']
    if train:  # batch statistics (biased variance) normalise; running ones move
        n = d.numel() / d.shape[1]
        batch_mean = d.mean((0, 2, 3))
        batch_var = d.var((0, 2, 3), unbiased=False)
        stats[f'{name}.bn.running_mean'] = (1 - BN_MOMENTUM) * mean + BN_MOMENTUM * batch_mean
        stats[f'{name}.bn.running_var'] = (1 - BN_MOMENTUM) * var + \
            BN_MOMENTUM * batch_var * n / (n - 1)
        mean, var = batch_mean, batch_var
    shape = (1, -1, 1, 1)
    d = (d - mean.view(shape)) / torch.sqrt(var.view(shape) + BN_EPS)
    d = d * p[f'{name}.bn.weight'].view(shape) + p[f'{name}.bn.bias'].view(shape)
    return F.linear(d.permute(0, 2, 3, 1), p[f'{name}.pw.weight'], p[f'{name}.pw.bias'])


def block(x, p, name, heads, pale, train, stats):
    """x += DWConv3x3(x); x += PSAttn(LN(x)); x += MLP(LN(x)) (docs/model.md: "Block")."""
    w = p[f'{name}.cpe.weight']
    x = x + F.conv2d(x.permute(0, 3, 1, 2), w, p[f'{name}.cpe.bias'], 1, 1,
                     groups=w.shape[0]).permute(0, 2, 3, 1)
    y = layer_norm(x, p, f'{name}.norm1')
    q, k, v = (sep_conv(y, p, f'{name}.attn.{t}', train, stats) for t in 'qkv')
    a = pale_attention_reference(q, k, v, pale, heads)
    x = x + F.linear(a, p[f'{name}.attn.proj.weight'], p[f'{name}.attn.proj.bias'])
    h = F.linear(layer_norm(x, p, f'{name}.norm2'), p[f'{name}.mlp.fc1.weight'],
                 p[f'{name}.mlp.fc1.bias'])
    return x + F.linear(F.gelu(h), p[f'{name}.mlp.fc2.weight'], p[f'{name}.mlp.fc2.bias'])


def reference_forward(p, image, train):
    """The backbone from its parameters ``p`` (a state_dict): the four normed maps
    (B, C_i, H_i, W_i), and the BatchNorm running statistics after the step."""
    stats = {}
    x = conv_embed(image.permute(0, 2, 3, 1), p, 'stem', 4)  # 7x7, stride 4
    outs = []
    for i, depth in enumerate(ARCH['depths']):
        if i:
            x = conv_embed(x, p, f'stages.{i}.downsample', 2)  # 3x3, stride 2
        for j in range(depth):
            x = block(x, p, f'stages.{i}.blocks.{j}', ARCH['num_heads'][i], PALE[i], train,
                      stats)
        outs.append(layer_norm(x, p, f'norm{i}').permute(0, 3, 1, 2))
    return outs, stats


def random_model(memory_efficient, device):
    torch.manual_seed(0)
    model = PaleTransformer(ARCH, pale_size=PALE, drop_path_rate=0.,
                            memory_efficient=memory_efficient)
    with torch.no_grad():  # every parameter and statistic away from its initial value
        for name, t in model.state_dict().items():
            if name.endswith('running_var'):
                t.uniform_(0.5, 2.)
            elif t.is_floating_point():
                t.normal_(0., 0.3 if t.dim() > 1 else 1.)
    return model.double().to(device)


@pytest.mark.parametrize('memory_efficient', [True, False])
@pytest.mark.parametrize('train', [True, False])
def test_backbone_matches_plain_reference(memory_efficient, train, device):
    model = random_model(memory_efficient, device).train(train)
    params = {n: t.detach().clone().requires_grad_(t.is_floating_point() and 'running' not in n)
              for n, t in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    image = torch.randn(IMAGE, generator=g, dtype=torch.float64).to(device)
    weights = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(device)
               for o in reference_forward(params, image, False)[0]]
    # stage sides not divisible by the pale size: padding and masking are exercised
    sides = [(o.shape[2], o.shape[3]) for o in weights]
    assert any(h % s or w % s for (h, w), s in zip(sides, PALE))

    x_model = image.clone().requires_grad_()
    x_ref = image.clone().requires_grad_()
    outs = model(x_model)
    ref, ref_stats = reference_forward(params, x_ref, train)
    assert len(outs) == len(ref) == 4
    for o, r in zip(outs, ref):
        assert o.dtype == torch.float64 and o.shape == r.shape
        torch.testing.assert_close(o, r, atol=1e-10, rtol=0)

    loss = sum((o * w).sum() for o, w in zip(outs, weights))
    ref_loss = sum((r * w).sum() for r, w in zip(ref, weights))
    loss.backward()
    leaves = {n: t for n, t in params.items() if t.requires_grad}
    ref_grads = torch.autograd.grad(ref_loss, [x_ref, *leaves.values()])
    torch.testing.assert_close(x_model.grad, ref_grads[0], atol=1e-10, rtol=0)
    model_params = dict(model.named_parameters())
    assert set(model_params) == set(leaves)
    for (name, _), r in zip(leaves.items(), ref_grads[1:]):
        torch.testing.assert_close(model_params[name].grad, r, atol=1e-10, rtol=0, msg=name)

    # BatchNorm statistics: moved once by the step in training, untouched in eval
    buffers = dict(model.named_buffers())
    expected = ref_stats if train else {}
    for name, before in params.items():
        if 'running' in name:
            torch.testing.assert_close(buffers[name], expected.get(name, before), atol=1e-12,
                                       rtol=0, msg=name)
