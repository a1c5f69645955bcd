"""The fast PS-Attention against the slow dense reference with an explicit pale mask."""
import pytest
import torch

from pale_mm.models.pale_attention import pale_attention, pale_attention_reference, pale_mask

CASES = [
    # H, W, heads, C, pale size
    (14, 14, 2, 16, 7),      # divides by the pale size
    (28, 21, 4, 32, 7),      # divides, not square
    (10, 13, 4, 32, 7),      # does not divide: padded rows and columns, masked
    (16, 25, 8, 64, 7),      # stride-32 map of 512x800
    (3, 5, 2, 16, 7),        # smaller than the pale
    (9, 22, 6, 48, (4, 3)),  # separate row / column pale sizes, odd heads per half
    (1, 1, 2, 8, 7),
]


@pytest.mark.parametrize('H,W,heads,C,pale', CASES)
def test_fast_matches_reference(H, W, heads, C, pale, device):
    g = torch.Generator().manual_seed(H * 100 + W)
    q, k, v = (torch.randn(2, H, W, C, generator=g).to(device) for _ in range(3))
    fast = pale_attention(q, k, v, pale, heads)
    ref = pale_attention_reference(q, k, v, pale, heads)
    assert fast.shape == (2, H, W, C)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


def test_gradients_match_reference(device):
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(1, 10, 12, 16, generator=g).to(device).requires_grad_()
              for _ in range(3)]
    grads = []
    for fn in (pale_attention, pale_attention_reference):
        for x in inputs:
            x.grad = None
        (fn(*inputs, 7, 4) * torch.linspace(-1, 1, 16, device=device)).sum().backward()
        grads.append([x.grad.clone() for x in inputs])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_pale_mask_matches_paper_definition():
    # H = W = 14, pale size 7: 2 groups of 7 interlaced rows {i, i+2, i+4, ...}
    mask = pale_mask(14, 14, 7)
    n = lambda h, w: h * 14 + w  # noqa: E731
    rows, cols = mask
    assert rows[n(0, 0), n(2, 13)] and rows[n(0, 0), n(12, 5)]
    assert not rows[n(0, 0), n(1, 0)]
    assert cols[n(0, 0), n(13, 2)] and not cols[n(0, 0), n(0, 1)]
    # a token's pale holds s_r * W + s_c * H - s_r * s_c tokens
    pale = rows[n(3, 4)] | cols[n(3, 4)]
    assert int(pale.sum()) == 7 * 14 + 7 * 14 - 7 * 7


@pytest.mark.parametrize('heads,C,msg', [(3, 12, 'even'), (4, 10, 'divide')])
def test_bad_heads(heads, C, msg):
    x = torch.randn(1, 7, 7, C)
    with pytest.raises(ValueError, match=msg):
        pale_attention(x, x, x, 7, heads)


def test_every_group_layout_matches_reference(device):
    """Sides below, at and above the pale size, dividing or not (one or two bands of groups,
    e.g. 8 rows with pale 7: two groups of 4 rows), rows and columns alike."""
    g = torch.Generator().manual_seed(1)
    for pale in (7, (4, 3)):
        for H in (1, 2, 6, 7, 8, 13, 15, 22):
            for W in (1, 5, 8, 14):
                q, k, v = (torch.randn(1, H, W, 8, generator=g).to(device) for _ in range(3))
                torch.testing.assert_close(pale_attention(q, k, v, pale, 2),
                                           pale_attention_reference(q, k, v, pale, 2),
                                           atol=1e-5, rtol=1e-5, msg=f'{H}x{W} {pale}')
