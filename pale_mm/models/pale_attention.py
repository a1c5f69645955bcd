"""Pale-shaped self-attention (PS-Attention): the math, in one place.

A *pale* is ``s_r`` interlaced rows plus ``s_c`` interlaced columns of a feature map.
The paper's parallel implementation splits the heads (and their channels) in two halves:

* the first half attends inside *row groups*: the ``s_r`` rows
  ``{i, i + G, i + 2G, ...}`` with ``G = ceil(H / s_r)`` (``G`` groups of ``s_r * W`` tokens);
* the second half attends inside *column groups*, likewise along ``W``.

Feature maps whose side is not a multiple of the pale size are, by definition, padded at
the end up to ``G * s`` with the padded keys masked out of the softmax, so padding never
changes a real token's output. Because every group ``i < G`` holds the real row ``i``, no
softmax row is ever fully masked. With ``H < s_r`` there is one group holding every row,
exactly as if the map were padded up to ``s_r``.

Two implementations live here:

* :func:`pale_attention` -- the fast one. It computes exactly the padded-and-masked result
  without the padding: groups ``i < H mod G`` hold one real row more than the others, so
  the groups form at most two *bands* of equal groups, and each band is one batch of
  :func:`torch.nn.functional.scaled_dot_product_attention` over real tokens only (no mask,
  no padded queries or keys). Groups are formed by reshapes, permutes and concatenations
  (no index tensors, no padding), and autograd differentiates them as they are.
* :func:`pale_attention_reference` -- slow and obviously correct: dense attention over all
  ``H * W`` tokens, restricted by an explicit pale mask built from the definition above.
  Tests hold the fast one to it.
"""
import math
from typing import List, NamedTuple, Sequence, Tuple

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


class _Bands(NamedTuple):
    """The interlaced groups along one side of ``size`` rows, for pale size ``s``.

    ``G = ceil(size / s)`` groups (``s`` is first capped at ``size``); group ``i`` holds rows
    ``i, i + G, i + 2G, ...`` below ``size``: ``full + 1`` rows for ``i < rest``, ``full``
    rows for the others. Each set of equal groups is one *band*, one batch of attention.
    """
    G: int
    full: int
    rest: int

    @classmethod
    def of(cls, size: int, s: int) -> '_Bands':
        G = num_groups(size, min(s, size))
        return cls(G, *divmod(size, G))


class PaleLayout(NamedTuple):
    """Where each token of a (B, H, W, C) map goes in the groups of both halves.

    Channels ``[:C/2]`` (``heads`` heads of ``d`` channels) form row groups, the others
    column groups. :meth:`gather` gives the bands of both halves, rows first, each
    (groups * B, heads, tokens per group, d); :meth:`scatter` is its inverse.
    """
    B: int
    H: int
    W: int
    C: int
    heads: int  # per half
    rows: _Bands
    cols: _Bands

    @classmethod
    def of(cls, x: Tensor, pale_size, num_heads: int) -> 'PaleLayout':
        s_r, s_c = (pale_size, pale_size) if isinstance(pale_size, int) else pale_size
        B, H, W, C = _ints(x.shape)
        return cls(B, H, W, C, num_heads // 2, _Bands.of(H, s_r), _Bands.of(W, s_c))

    def _halves(self, x: Tensor):
        """(B, H, W, C) -> row half (B, H, W, heads, d), column half (B, W, H, heads, d)."""
        B, H, W, C, heads = self[:5]
        d = C // 2 // heads
        # every size given (not unflatten): an exporter of a traced graph needs the rank
        return (x[..., :C // 2].reshape(B, H, W, heads, d),
                x[..., C // 2:].transpose(1, 2).reshape(B, W, H, heads, d))

    def gather(self, x: Tensor) -> Tuple[Tensor, ...]:
        """(B, H, W, C) -> the bands of the row half, then those of the column half."""
        rows, cols = self._halves(x)
        return (*_gather_bands(rows, self.rows), *_gather_bands(cols, self.cols))

    def scatter(self, *bands: Tensor) -> Tensor:
        """The bands of :meth:`gather` -> (B, H, W, C)."""
        n = 1 + bool(self.rows.rest)  # bands of the row half
        rows = _scatter_bands(bands[:n], self.rows, self.B, self.H, self.W)  # (B, H, W, C/2)
        cols = _scatter_bands(bands[n:], self.cols, self.B, self.W, self.H)  # (B, W, H, C/2)
        return torch.cat([rows, cols.transpose(1, 2)], dim=-1)


def _gather_bands(x: Tensor, bands: _Bands) -> List[Tensor]:
    """Rows of x (B, H, W, heads, d), any strides, grouped: one copy per band.

    -> [(B*rest, heads, (full+1)*W, d) if rest], (B*(G-rest), heads, full*W, d)
    """
    B, H, W, heads, d = _ints(x.shape)
    G, full, rest = bands
    # (B, G, heads, full, W, d): row a*G + i of x is [:, i, :, a]
    blocks = x[:, :full * G].reshape(B, full, G, W, heads, d).permute(0, 2, 4, 1, 3, 5)
    out = []
    if rest:  # groups i < rest also hold row full*G + i
        last = x[:, full * G:].permute(0, 1, 3, 2, 4).unsqueeze(3)  # (B, rest, heads, 1, W, d)
        long = torch.cat([blocks[:, :rest], last], dim=3)
        out.append(long.reshape(B * rest, heads, (full + 1) * W, d))
    out.append(blocks[:, rest:].reshape(B * (G - rest), heads, full * W, d))
    return out


def _scatter_bands(ys: Sequence[Tensor], bands: _Bands, B: int, H: int, W: int) -> Tensor:
    """Inverse of :func:`_gather_bands`: the bands -> (B, H, W, heads * d)."""
    G, full, rest = bands
    heads, d = _ints(ys[-1].shape[1:2] + ys[-1].shape[3:])
    short = ys[-1].reshape(B, G - rest, heads, full, W, d)
    if not rest:
        return short.permute(0, 3, 1, 4, 2, 5).reshape(B, H, W, heads * d)
    long = ys[0].reshape(B, rest, heads, full + 1, W, d)
    blocks = torch.cat([long[:, :, :, :full], short], dim=1)  # (B, G, heads, full, W, d)
    top = blocks.permute(0, 3, 1, 4, 2, 5).reshape(B, full * G, W, heads * d)
    last = long[:, :, :, full].permute(0, 1, 3, 2, 4).reshape(B, rest, W, heads * d)
    return torch.cat([top, last], dim=1)


def pale_attention_bands(q: Tensor, k: Tensor, v: Tensor, pale_size, num_heads: int,
                         dropout_p: float = 0.0) -> Tuple[Tuple[Tensor, ...], PaleLayout]:
    """PS-Attention up to the grouped result: ``layout.scatter(*bands)`` is
    :func:`pale_attention`'s output. Lets a caller fuse the scatter into what follows."""
    _check_inputs(q, k, v, num_heads)
    layout = PaleLayout.of(q, pale_size, num_heads)
    out = tuple(
        F.scaled_dot_product_attention(qb, kb, vb, dropout_p=dropout_p)
        for qb, kb, vb in zip(layout.gather(q), layout.gather(k), layout.gather(v)))
    return out, layout


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
    bands, layout = pale_attention_bands(q, k, v, pale_size, num_heads, dropout_p)
    return layout.scatter(*bands)


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
