"""PaleTransformer: shapes, sizes, freezing, memory options, autocast and input errors."""
import pytest
import torch

from pale_mm import PaleTransformer

# Paper's 22M / 48M / 85M with a 1000-class head; the backbone with its four output norms:
PARAMS = {'tiny': 21.3e6, 'small': 47.6e6, 'base': 84.3e6}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('arch', sorted(PARAMS))
def test_param_count(arch):
    model = PaleTransformer(arch)
    assert abs(n_params(model) - PARAMS[arch]) <= 0.01 * PARAMS[arch]


@pytest.mark.parametrize('H,W', [(224, 224), (512, 512), (800, 1333), (111, 137)])
def test_pyramid_shapes(H, W, device):
    model = PaleTransformer('tiny', drop_path_rate=0.).to(device).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, H, W, device=device))
    assert len(outs) == 4
    h, w = H, W
    for i, out in enumerate(outs):
        h, w = (h + 3) // 4 if i == 0 else (h + 1) // 2, (w + 3) // 4 if i == 0 else (w + 1) // 2
        assert out.shape == (1, 64 * 2**i, h, w), (i, out.shape)
        assert torch.isfinite(out).all()
        # normed per output: LayerNorm over channels -> mean ~0 at each position
        assert out.mean(dim=1).abs().max() < 1e-3


def test_out_indices_subset(tiny_arch, device):
    model = PaleTransformer(tiny_arch, out_indices=(1, 3)).to(device).eval()
    outs = model(torch.randn(2, 3, 64, 64, device=device))
    assert [o.shape[1] for o in outs] == [32, 128]
    assert not hasattr(model, 'norm0') and hasattr(model, 'norm3')


def test_frozen_stages_from_construction(tiny_arch, device):
    model = PaleTransformer(tiny_arch, frozen_stages=2).to(device)
    frozen = [model.stem, model.stages[0], model.stages[1], model.norm0, model.norm1]
    for m in frozen:
        assert all(not p.requires_grad for p in m.parameters())
        assert not m.training  # eval from construction on
    model.train()
    for m in frozen:
        assert not any(x.training for x in m.modules())
    assert model.stages[2].training and model.norm2.training
    # every parameter that still trains gets a gradient: DDP sees no unused parameters
    outs = model(torch.randn(2, 3, 64, 64, device=device))
    sum(o.sum() for o in outs).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    # and the frozen BatchNorm statistics did not move
    bn = model.stages[0].blocks[0].attn.q.bn
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))


def test_norm_eval(tiny_arch):
    model = PaleTransformer(tiny_arch, norm_eval=True).train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert model.stages[0].blocks[0].training


@pytest.mark.parametrize('options', [dict(with_cp=True), dict(memory_efficient=False),
                                     dict(with_cp=True, memory_efficient=False)])
def test_memory_options_same_outputs_and_grads(tiny_arch, options, device):
    """with_cp and memory_efficient change what is kept for the backward, not the result;
    the state_dict is the same (checkpoints load either way)."""
    torch.manual_seed(0)
    ref = PaleTransformer(tiny_arch, drop_path_rate=0.)
    ref.init_weights()
    other = PaleTransformer(tiny_arch, drop_path_rate=0., **options)
    other.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 72, 56, device=device)
    results = []
    for model in (ref.to(device), other.to(device)):
        model.train()
        outs = model(x)
        loss = sum(o.pow(2).mean() for o in outs)
        loss.backward()
        results.append((outs, {n: p.grad.clone() for n, p in model.named_parameters()}))
    for a, b in zip(results[0][0], results[1][0]):
        torch.testing.assert_close(a, b)
    assert results[0][1].keys() == results[1][1].keys()
    for n in results[0][1]:
        torch.testing.assert_close(results[0][1][n], results[1][1][n], atol=1e-5, rtol=1e-4)


def test_eval_is_deterministic(tiny_arch, device):
    model = PaleTransformer(tiny_arch, drop_rate=0.1, attn_drop_rate=0.1,
                            drop_path_rate=0.3).to(device).eval()
    x = torch.randn(1, 3, 96, 80, device=device)
    a, b = model(x), model(x)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


def test_autocast_bfloat16_inference(tiny_arch, device):
    model = PaleTransformer(tiny_arch, drop_path_rate=0.)
    model.init_weights()
    model = model.to(device).eval()
    x = torch.randn(1, 3, 100, 90, device=device)
    with torch.no_grad():
        full = model(x)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            half = model(x)
    for f, h in zip(full, half):
        assert h.dtype == torch.bfloat16 and h.shape == f.shape
        assert torch.isfinite(h.float()).all()
        err = (h.float() - f).norm() / f.norm()
        assert err < 0.05, err


def test_training_step_reduces_loss(tiny_arch, device):
    torch.manual_seed(0)
    model = PaleTransformer(tiny_arch, out_indices=(3, ))
    model.init_weights()
    model.to(device)
    head = torch.nn.Linear(128, 2).to(device)
    opt = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=1e-3)
    x = torch.randn(4, 3, 64, 64, device=device)
    y = torch.tensor([0, 1, 0, 1], device=device)
    losses = []
    for _ in range(8):
        logits = head(model(x)[0].mean((2, 3)))
        loss = torch.nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize('memory_efficient', [True, False])
def test_gradients_have_the_layout_of_their_parameters(tiny_arch, device, memory_efficient):
    """DDP copies a gradient whose strides differ from its parameter's into its bucket at
    every step and warns ("Grad strides do not match bucket view strides"); the depthwise
    convs' weights, fed channels-last maps, used to be such parameters."""
    torch.manual_seed(0)
    model = PaleTransformer(tiny_arch, memory_efficient=memory_efficient)
    model.init_weights()
    model.to(device).train()
    sum(o.mean() for o in model(torch.randn(2, 3, 64, 64, device=device))).backward()
    mismatched = {name: (tuple(p.stride()), tuple(p.grad.stride()))
                  for name, p in model.named_parameters() if p.grad.stride() != p.stride()}
    assert mismatched == {}
    # .to() keeps the layout (a copy to another dtype or device)
    assert model.stages[0].blocks[0].cpe.weight.half().stride() == (9, 1, 3, 1)


# ------------------------------------------------------------------ errors that name the fix
@pytest.mark.parametrize('kwargs,match', [
    (dict(arch='huge'), r"unknown arch 'huge'.*\['base', 'small', 'tiny'\]"),
    (dict(arch=dict(embed_dims=32, depths=(1, 1), num_heads=(2, 2, 4))), 'one entry per stage'),
    (dict(arch=dict(embed_dims=32, depths=(1, 1))), 'lacks'),
    (dict(arch=dict(embed_dims=30, depths=(1, 1), num_heads=(4, 8))), 'divide the channels'),
    (dict(arch=dict(embed_dims=32, depths=(1, 1), num_heads=(3, 4))), 'even'),
    (dict(pale_size=0), 'pale_size must be a positive int'),
    (dict(pale_size=(7, 7)), 'one value per stage'),
    (dict(out_indices=(0, 4)), 'out_indices'),
    (dict(frozen_stages=5), 'frozen_stages'),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PaleTransformer(**kwargs)


def test_wrong_input_channels(tiny_arch, device):
    model = PaleTransformer(tiny_arch).to(device)
    with pytest.raises(ValueError, match=r'in_channels=3 but the input has 1 channels.*'
                       r'set in_channels=1'):
        model(torch.randn(1, 1, 64, 64, device=device))


@pytest.mark.parametrize('x', [torch.randn(3, 64, 64), torch.randn(1, 1, 3, 64, 64), 'img'])
def test_not_a_4d_tensor(tiny_arch, x):
    model = PaleTransformer(tiny_arch)
    with pytest.raises(ValueError, match='4-D image batch'):
        model(x)


def test_single_channel_model(tiny_arch, device):
    model = PaleTransformer(tiny_arch, in_channels=1).to(device).eval()
    assert model(torch.randn(1, 1, 32, 32, device=device))[0].shape == (1, 16, 8, 8)


def test_state_dict_keys_of_a_block():
    """The names checkpoints are saved under: unchanged, so earlier checkpoints load."""
    model = PaleTransformer(dict(embed_dims=16, depths=(1, 1), num_heads=(2, 2)),
                            out_indices=(0, 1))
    block = {k.split('blocks.0.', 1)[1] for k in model.state_dict()
             if k.startswith('stages.1.blocks.0.')}
    projection = {f'{t}.{k}' for t in 'qkv' for k in (
        'dw.weight', 'bn.weight', 'bn.bias', 'bn.running_mean', 'bn.running_var',
        'bn.num_batches_tracked', 'pw.weight', 'pw.bias')}
    assert block == {'cpe.weight', 'cpe.bias', 'norm1.norm.weight', 'norm1.norm.bias',
                     'attn.proj.weight', 'attn.proj.bias', 'norm2.norm.weight',
                     'norm2.norm.bias', 'mlp.fc1.weight', 'mlp.fc1.bias', 'mlp.fc2.weight',
                     'mlp.fc2.bias'} | {f'attn.{k}' for k in projection}
    assert {k for k in model.state_dict() if 'blocks' not in k} == {
        'stem.proj.weight', 'stem.proj.bias', 'stem.norm.norm.weight', 'stem.norm.norm.bias',
        'stages.1.downsample.proj.weight', 'stages.1.downsample.proj.bias',
        'stages.1.downsample.norm.norm.weight', 'stages.1.downsample.norm.norm.bias',
        'norm0.norm.weight', 'norm0.norm.bias', 'norm1.norm.weight', 'norm1.norm.bias'}
