"""Pale-shaped self-attention (PS-Attention): the math, in one place.

A *pale* is ``s_r`` interlaced rows plus ``s_c`` interlaced columns of a feature map.
The paper's parallel implementation splits the heads (and their channels) in two halves:

* the first half attends inside *row groups*: the ``s_r`` rows
  ``{i, i + G, i + 2G, ...}`` with ``G = ceil(H / s_r)`` (``G`` groups of ``s_r * W`` tokens);
* the second half attends inside *column groups*, likewise along ``W``.

Feature maps whose side is not a multiple of the pale size are padded at the end up to
``G * s`` and the padded keys are masked out of the softmax, so padding never changes a real
token's output. Because every group ``i < G`` holds the real row ``i``, no softmax row is
ever fully masked. With ``H < s_r`` there is one group holding every row, exactly as if the
map were padded up to ``s_r``; the fast path then simply uses ``s_r = H`` and pads nothing.

Two implementations live here:

* :func:`pale_attention` -- the fast one: groups formed by reshapes (no gathers), attention
  by :func:`torch.nn.functional.scaled_dot_product_attention`.
* :func:`pale_attention_reference` -- slow and obviously correct: dense attention over all
  ``H * W`` tokens, restricted by an explicit pale mask built from the definition above.
  Tests hold the fast one to it.
"""
import math
from typing import Optional
import torch
import torch.nn.functional as F
from torch import Tensor


def num_groups(size: int, pale_size: int) -> int:
    """Number of interlaced groups along a side of ``size`` for pale size ``pale_size``."""
    return math.ceil(size / pale_size)


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, num_heads: int) -> None:
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            'pale attention expects q, k, v of one shape (B, H, W, C), got '
            f'{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}')
    channels = q.shape[-1]
    if num_heads < 2 or num_heads % 2:
        raise ValueError(
            f'pale attention needs an even number of heads (half for rows, half for '
            f'columns), got num_heads={num_heads}')
    if channels % num_heads:
        raise ValueError(
            f'pale attention: {channels} channels do not divide into {num_heads} heads')


def _ints(shape):
    """Sizes as Python ints (under jit tracing, as FLOP counters do, they can be tensors)."""
    return tuple(int(n) for n in shape)


def _to_groups(x: Tensor, s: int, G: int) -> Tensor:
    """Gather interlaced row groups with one strided copy, padding with zeros.

    x: (B, H, W, heads, d), any strides -> (B*G, heads, s*W, d); group i holds rows
    ``i, i + G, ..., i + (s-1) G`` and rows ``>= H`` are zeros.
    """
    B, H, W, heads, d = _ints(x.shape)
    full, rest = divmod(H, G)  # complete blocks of G rows; rows of the partial block
    out = x.new_empty(B, G, heads, s, W, d)
    # rows a * G + i for a < full: (B, full, G, W, heads, d) -> (B, G, heads, full, W, d)
    out[:, :, :, :full] = x[:, :full * G].unflatten(1, (full, G)).permute(0, 2, 4, 1, 3, 5)
    if rest:  # the partial block a = full: rows i < rest are real
        out[:, :rest, :, full] = x[:, full * G:].permute(0, 1, 3, 2, 4)
        out[:, rest:, :, full] = 0
    if full + bool(rest) < s:
        out[:, :, :, full + bool(rest):] = 0
    return out.view(B * G, heads, s * W, d)


def _from_groups(y: Tensor, dst: Tensor, s: int, G: int) -> None:
    """Inverse of :func:`_to_groups`: write (B*G, heads, s*W, d) into dst (B, H, W, heads, d)."""
    B, H, W, heads, d = _ints(dst.shape)
    full, rest = divmod(H, G)
    y = y.view(B, G, heads, s, W, d)
    dst[:, :full * G].unflatten(1, (full, G)).copy_(y[:, :, :, :full].permute(0, 3, 1, 4, 2, 5))
    if rest:
        dst[:, full * G:].copy_(y[:, :rest, :, full].permute(0, 1, 3, 2, 4))


def _key_mask(H: int, W: int, s: int, G: int, device) -> Optional[Tensor]:
    """(G, 1, s*W) bool, True for real keys; None when nothing is padded."""
    if s * G == H:
        return None
    # row h = a * G + i of group i is real iff h < H: (s, G) -> (G, s) -> (G, s * W)
    real = torch.arange(s * G, device=device).view(s, G).t() < H
    return real[:, None, :, None].expand(G, 1, s, W).reshape(G, 1, s * W)


def _row_group_attention(q: Tensor, k: Tensor, v: Tensor, out: Tensor, pale_size: int,
                         heads: int, dropout_p: float) -> None:
    """Attention inside interlaced row groups. q, k, v, out: (B, H, W, c) views; writes out."""
    B, H, W, c = _ints(q.shape)
    d = c // heads
    s = min(pale_size, H)
    G = num_groups(H, s)
    q, k, v = (_to_groups(x.unflatten(-1, (heads, d)), s, G) for x in (q, k, v))
    mask = _key_mask(H, W, s, G, q.device)
    if mask is not None:  # (G, 1, N) -> (B*G, 1, 1, N), broadcast over heads and queries
        mask = mask.unsqueeze(0).expand(B, G, 1, s * W).reshape(B * G, 1, 1, s * W)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    _from_groups(y, out.unflatten(-1, (heads, d)), s, G)


def pale_attention(q: Tensor, k: Tensor, v: Tensor, pale_size, num_heads: int,
                   dropout_p: float = 0.0) -> Tensor:
    """Fast PS-Attention.

    Args:
        q, k, v: (B, H, W, C) channels-last projections. Channels ``[:C/2]`` (heads
            ``[:num_heads/2]``) attend in row groups, the rest in column groups.
        pale_size: ``s`` or ``(s_r, s_c)``.
        num_heads: total heads, even.
        dropout_p: attention dropout (pass 0 in eval).

    Returns:
        (B, H, W, C)
    """
    _check_inputs(q, k, v, num_heads)
    s_r, s_c = (pale_size, pale_size) if isinstance(pale_size, int) else pale_size
    half = q.shape[-1] // 2
    heads = num_heads // 2
    out = q.new_empty(q.shape)
    rows, cols = slice(None, half), slice(half, None)
    _row_group_attention(q[..., rows], k[..., rows], v[..., rows], out[..., rows], s_r, heads,
                         dropout_p)
    # columns: the same computation on the transposed map (B, W, H, c), all views
    _row_group_attention(*(x[..., cols].transpose(1, 2) for x in (q, k, v, out)), s_c, heads,
                         dropout_p)
    return out


def pale_mask(H: int, W: int, pale_size, device=None) -> Tensor:
    """Explicit masks of the two halves over all ``H * W`` tokens, from the definition.

    Returns:
        (2, H*W, H*W) bool: ``[0]`` row groups (token (h, w) sees (h', w') iff
        ``h = h' (mod G_r)``), ``[1]`` column groups (iff ``w = w' (mod G_c)``).
    """
    s_r, s_c = (pale_size, pale_size) if isinstance(pale_size, int) else pale_size
    hh, ww = torch.meshgrid(torch.arange(H, device=device), torch.arange(W, device=device),
                            indexing='ij')
    row_group = (hh % num_groups(H, s_r)).flatten()
    col_group = (ww % num_groups(W, s_c)).flatten()
    return torch.stack([row_group[:, None] == row_group[None, :],
                        col_group[:, None] == col_group[None, :]])


def pale_attention_reference(q: Tensor, k: Tensor, v: Tensor, pale_size,
                             num_heads: int) -> Tensor:
    """Slow, obviously correct PS-Attention: dense softmax attention over every token,
    restricted by :func:`pale_mask`. Same arguments and result as :func:`pale_attention`."""
    _check_inputs(q, k, v, num_heads)
    B, H, W, C = q.shape
    d = C // num_heads
    mask = pale_mask(H, W, pale_size, q.device)  # (2, N, N)
    # which half each head belongs to: (num_heads, N, N)
    head_mask = mask.repeat_interleave(num_heads // 2, dim=0)

    def heads(x: Tensor) -> Tensor:  # (B, H, W, C) -> (B, heads, N, d)
        return x.reshape(B, H * W, num_heads, d).transpose(1, 2)

    scores = heads(q) @ heads(k).transpose(-2, -1) / math.sqrt(d)  # (B, heads, N, N)
    scores = scores.masked_fill(~head_mask, float('-inf'))
    out = scores.softmax(dim=-1) @ heads(v)  # (B, heads, N, d)
    return out.transpose(1, 2).reshape(B, H, W, C)

