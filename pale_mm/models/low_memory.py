"""Memory-lean autograd for Linear layers fed by cheap ops.

Autograd keeps every intermediate that a backward formula needs. In a Pale block most of
them are the outputs of cheap, memory-bound ops that feed a Linear layer:

* ``GELU -> fc2``: GELU keeps its input (4C per token) and fc2 keeps GELU's output (4C more);
* ``depthwise conv -> BatchNorm -> pointwise`` (Q, K, V): BatchNorm keeps the conv output and
  the pointwise layer keeps BatchNorm's output (2C per projection, 6C for the three);
* ``scatter of the attention's groups -> proj``: the attention keeps its grouped output and
  proj keeps the scattered copy (C).

:func:`recomputed_input_linear` computes ``F.linear(fn(*inputs), weight, bias)`` but keeps only
``inputs`` (which the caller usually keeps alive anyway) and the weight. Its backward
recomputes ``fn(*inputs)`` under autograd, does the Linear's backward by hand, and lets
autograd take the gradient through ``fn``; or, where the caller gives ``fn``'s backward
written out (:class:`HandBackward`), runs that instead of a nested autograd pass (no graph to
build and walk a second time; the same kernels run). :func:`gelu_linear` is the same for
``fn = GELU``, written out so that its backward reuses one buffer. The math is the same as the plain
modules'; only the cheap prefix runs twice. This is not gradient checkpointing of the block:
the matrix products and the attention run once, and BatchNorm's running statistics move once.

Under ``torch.autocast`` the forward runs in the caller's autocast state and the backward
recomputes ``fn`` in that same state, then does the Linear's products in the dtype the
forward's product ran in, returning gradients in each input's own dtype, as autocast's casts
do. Callers use the plain modules where nothing needs a gradient (inference, FLOP counting
by jit tracing, frozen layers): see :func:`needs_backward`.
"""
from typing import Callable, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable


def needs_backward(*tensors: Optional[Tensor]) -> bool:
    """Whether autograd will record ops on these inputs (so custom backward paths pay).

    False without grad mode, when none of them requires a gradient, and while tracing or
    compiling (tracers see the plain ops, which they know how to count and fuse).
    """
    if not torch.is_grad_enabled() or torch.jit.is_tracing() or \
            torch.compiler.is_compiling():
        return False
    return any(t is not None and t.requires_grad for t in tensors)


def _flat(x: Tensor) -> Tensor:
    """(..., n) -> (N, n)"""
    return x.reshape(-1, x.shape[-1])


class HandBackward(NamedTuple):
    """The cheap prefix ``fn`` of :func:`recomputed_input_linear` with its backward written
    out, used instead of a nested autograd pass when autocast is off.

    ``recompute(*inputs) -> (z, saved)``: ``fn``'s output again (the same values) and the
    intermediates the backward needs. ``backward(inputs, saved, grad_z, needs) -> grads``: one
    gradient per input, ``None`` where ``needs`` (one bool per input) is False.
    """
    recompute: Callable
    backward: Callable


class _RecomputedInputLinear(torch.autograd.Function):
    """y = F.linear(fn(*inputs), weight, bias), keeping ``inputs`` instead of ``fn(*inputs)``."""

    @staticmethod
    def forward(ctx, fn: Callable, recompute_fn: Callable, by_hand: Optional[HandBackward],
                weight: Tensor, bias: Optional[Tensor], *inputs: Optional[Tensor]) -> Tensor:
        z = fn(*inputs)  # (..., in)
        y = F.linear(z, weight, bias)  # (..., out); autocast may run it in lower precision
        device = z.device.type
        ctx.recompute_fn = recompute_fn
        ctx.by_hand = by_hand
        ctx.autocast = (device, torch.is_autocast_enabled(device),
                        torch.get_autocast_dtype(device))
        ctx.compute_dtype = y.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.save_for_backward(weight, *inputs)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor):
        weight, *inputs = ctx.saved_tensors
        needs = ctx.needs_input_grad[5:]
        device, autocast, autocast_dtype = ctx.autocast
        by_hand = None if autocast else ctx.by_hand
        if by_hand is not None:
            z, saved = by_hand.recompute(*inputs)  # (..., in), as in the forward
        else:
            leaves = [x.detach().requires_grad_(n) if x is not None else None
                      for x, n in zip(inputs, needs)]
            with torch.enable_grad(), torch.autocast(device, dtype=autocast_dtype,
                                                     enabled=autocast):
                z = ctx.recompute_fn(*leaves)  # (..., in), as in the forward
        # The Linear's backward, in the dtype its forward product ran in.
        dtype = ctx.compute_dtype
        grad_y = grad_y.to(dtype)
        grad_w = grad_b = None
        if ctx.needs_input_grad[3]:
            grad_w = _flat(grad_y).t().mm(_flat(z.detach().to(dtype))).to(weight.dtype)
        if ctx.needs_input_grad[4]:
            grad_b = _flat(grad_y).sum(0).to(ctx.bias_dtype)
        grads = [None] * len(inputs)
        wanted = [i for i, n in enumerate(needs) if n]
        if wanted:
            grad_z = grad_y.matmul(weight.to(dtype)).to(z.dtype)  # (..., in)
            if by_hand is not None:
                grads = [g if n else None for g, n in
                         zip(by_hand.backward(inputs, saved, grad_z, needs), needs)]
            else:
                found = torch.autograd.grad(z, [leaves[i] for i in wanted], grad_z,
                                            allow_unused=True)
                for i, g in zip(wanted, found):
                    grads[i] = g
        return (None, None, None, grad_w, grad_b, *grads)


def recomputed_input_linear(fn: Callable, inputs: Sequence[Optional[Tensor]], weight: Tensor,
                            bias: Optional[Tensor] = None,
                            recompute_fn: Optional[Callable] = None,
                            by_hand: Optional[HandBackward] = None) -> Tensor:
    """``F.linear(fn(*inputs), weight, bias)`` that keeps ``inputs``, not ``fn(*inputs)``.

    Args:
        fn: cheap ops (elementwise, depthwise, norms), run once in the forward.
        inputs: the tensors ``fn`` takes (activations and parameters); gradients reach each
            that requires one. ``None`` entries are passed through.
        weight, bias: the Linear layer's, (out, in) and (out, ).
        recompute_fn: what the backward runs instead of ``fn``, when running ``fn`` again
            would differ (a BatchNorm must not update its running statistics twice). It must
            give the same values as ``fn`` did in the forward. Default: ``fn``.
        by_hand: ``fn``'s recomputation and backward written out; used instead of
            ``recompute_fn`` and autograd when autocast was off in the forward.

    Returns:
        (..., out)
    """
    return _RecomputedInputLinear.apply(fn, recompute_fn or fn, by_hand, weight, bias, *inputs)


# Rows per chunk of the hidden (GELU) activations: about 4 MiB of float32 at a time. A chunk
# stays in cache between the GELU and the product that reads it, and its buffer is reused by
# the allocator, where a whole-map buffer (33 MiB for Pale-T's first stage at 512x512, batch 2)
# is a fresh mapping every time, paid for with page faults. Timed once on 2 CPU cores: the
# inference MLP of Pale-T's first stage at 512x512 takes 27 ms instead of 43 ms.
CHUNK_BYTES = 4 << 20


def chunk_rows(hidden: int, element_size: int = 4) -> int:
    """Rows of a (rows, hidden) chunk of about :data:`CHUNK_BYTES` (at least 256)."""
    return max(256, CHUNK_BYTES // max(1, hidden * element_size))


def chunked_mlp(x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor],
                approximate: str = 'none') -> Tensor:
    """``F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)`` for inference, a chunk of rows at a
    time (no whole-map hidden buffer). (..., in) -> (..., out)."""
    x2 = _flat(x)
    n = x2.shape[0]
    out = x2.new_empty(n, w2.shape[0])
    rows = chunk_rows(w1.shape[0], x2.element_size())
    w1t, w2t = w1.t(), w2.t()
    for i in range(0, n, rows):
        xi = x2[i:i + rows]
        h = torch.mm(xi, w1t) if b1 is None else torch.addmm(b1, xi, w1t)
        torch.ops.aten.gelu_(h, approximate=approximate)
        if b2 is None:
            torch.mm(h, w2t, out=out[i:i + rows])
        else:
            torch.addmm(b2, h, w2t, out=out[i:i + rows])
    return out.view(*x.shape[:-1], w2.shape[0])


class _GeluLinear(torch.autograd.Function):
    """y = F.linear(F.gelu(h), weight, bias), keeping h but not GELU's output.

    GELU runs on chunks of rows (:data:`CHUNK_BYTES`), in the forward and again in the
    backward, so no whole-map buffer of GELU's output exists at any time.
    """

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Optional[Tensor],
                approximate: str) -> Tensor:
        h2 = _flat(h)
        n = h2.shape[0]
        y = None
        rows = chunk_rows(h2.shape[1], h2.element_size())
        for i in range(0, n, rows):
            yi = F.linear(F.gelu(h2[i:i + rows], approximate=approximate), weight, bias)
            if y is None:  # the product's dtype (autocast may lower it)
                y = yi.new_empty(n, yi.shape[1])
            y[i:i + rows] = yi
        ctx.approximate = approximate
        ctx.compute_dtype = y.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.save_for_backward(h, weight)
        return y.view(*h.shape[:-1], y.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor):
        h, weight = ctx.saved_tensors
        dtype = ctx.compute_dtype
        grad_y = _flat(grad_y.to(dtype))  # (N, out)
        h2 = _flat(h)  # (N, hidden)
        want_h, want_w, want_b = ctx.needs_input_grad[:3]
        w = weight.to(dtype)
        grad_h = h2.new_empty(h2.shape) if want_h else None
        grad_w = None  # summed over the chunks in at least float32
        rows = chunk_rows(h2.shape[1], h2.element_size())
        for i in range(0, h2.shape[0], rows):
            hi, gi = h2[i:i + rows], grad_y[i:i + rows]
            if want_w:
                gelu = F.gelu(hi, approximate=ctx.approximate)  # GELU's output again
                part = gi.t().mm(gelu.to(dtype))
                if grad_w is None:
                    grad_w = part.to(torch.promote_types(part.dtype, torch.float32))
                else:
                    grad_w.add_(part)
            if want_h:
                buf = gi.mm(w).to(h.dtype)  # gradient at GELU's output, then its input
                torch.ops.aten.gelu_backward.grad_input(
                    buf, hi, approximate=ctx.approximate, grad_input=grad_h[i:i + rows])
        grad_b = grad_y.sum(0).to(ctx.bias_dtype) if want_b else None
        return (None if grad_h is None else grad_h.view(h.shape),
                None if grad_w is None else grad_w.to(weight.dtype), grad_b, None)


def gelu_linear(h: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                approximate: str = 'none') -> Tensor:
    """``F.linear(F.gelu(h, approximate=approximate), weight, bias)`` that keeps ``h`` only.

    Args:
        h: (..., hidden), e.g. the first Linear's output in an MLP.
        weight, bias: (out, hidden) and (out, ).

    Returns:
        (..., out)
    """
    return _GeluLinear.apply(h, weight, bias, approximate)
