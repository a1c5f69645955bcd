"""Training memory: Linear layers that keep the input of the cheap ops before them.

Autograd keeps every intermediate that a backward formula needs. In a Pale block most of
them are outputs of cheap, memory-bound ops that feed a Linear layer:

* ``GELU -> fc2``: GELU keeps its input (4C per token) and fc2 keeps GELU's output (4C more);
* ``depthwise conv -> BatchNorm -> pointwise`` (Q, K, V): the conv output and BatchNorm's
  output (2C per projection, 6C for the three);
* ``scatter of the attention's groups -> proj``: the attention keeps its grouped output and
  proj keeps the scattered copy (C).

:func:`recomputed_input_linear` computes ``F.linear(fn(*inputs), weight, bias)`` but keeps only
``inputs`` and the weight; its backward recomputes ``fn`` and lets autograd differentiate it.
A Pale block then keeps about 13 C per token instead of 24 C. The products and the attention
run once; only the cheap ops run twice. The model uses it with ``memory_efficient=True``.
"""
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

# torch >= 2.4 answers autocast questions per device type; older torch has one function
# for CUDA and one for the CPU.
if hasattr(torch, 'get_autocast_dtype'):
    def autocast_state(device: str):
        """(enabled, dtype) of autocast for ``device`` ('cpu', 'cuda', ...)."""
        return torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)
else:
    def autocast_state(device: str):
        """(enabled, dtype) of autocast for ``device`` ('cpu', 'cuda', ...)."""
        if device == 'cpu':
            return torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
        if device == 'cuda':
            return torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
        return False, torch.float32


def _flat(x: Tensor) -> Tensor:
    """(..., n) -> (N, n)"""
    return x.reshape(-1, x.shape[-1])


class _RecomputedInputLinear(torch.autograd.Function):
    """y = F.linear(fn(*inputs), weight, bias), keeping ``inputs`` instead of ``fn(*inputs)``."""

    @staticmethod
    def forward(ctx, fn: Callable, recompute_fn: Callable, weight: Tensor,
                bias: Optional[Tensor], *inputs: Optional[Tensor]) -> Tensor:
        z = fn(*inputs)  # (..., in)
        y = F.linear(z, weight, bias)  # (..., out); autocast may run it in lower precision
        device = z.device.type
        ctx.recompute_fn = recompute_fn
        ctx.autocast = (device, *autocast_state(device))
        ctx.compute_dtype = y.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.save_for_backward(weight, *inputs)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor):
        weight, *inputs = ctx.saved_tensors
        needs = ctx.needs_input_grad[4:]
        device, autocast, autocast_dtype = ctx.autocast
        leaves = [x.detach().requires_grad_(n) if x is not None else None
                  for x, n in zip(inputs, needs)]
        # fn again, in the autocast state of the forward: the same values (a dtype only
        # where autocast was on: torch 2.1 refuses float16 on the CPU even when disabled)
        state = dict(enabled=True, dtype=autocast_dtype) if autocast else dict(enabled=False)
        with torch.enable_grad(), torch.autocast(device, **state):
            z = ctx.recompute_fn(*leaves)  # (..., in)
        # the Linear's backward, in the dtype its forward product ran in
        dtype = ctx.compute_dtype
        grad_y = grad_y.to(dtype)
        grad_w = grad_b = None
        if ctx.needs_input_grad[2]:
            grad_w = _flat(grad_y).t().mm(_flat(z.detach().to(dtype))).to(weight.dtype)
        if ctx.needs_input_grad[3]:
            grad_b = _flat(grad_y).sum(0).to(ctx.bias_dtype)
        grads = [None] * len(inputs)
        wanted = [i for i, n in enumerate(needs) if n]
        if wanted:
            if z.dtype == dtype and z.is_contiguous():
                # z's values are no longer needed (the backward of fn keeps its inputs, not
                # its output): its buffer takes the gradient, one (..., in) buffer fewer
                with torch.no_grad():
                    grad_z = torch.matmul(grad_y, weight.to(dtype), out=z)
            else:
                grad_z = grad_y.matmul(weight.to(dtype)).to(z.dtype)
            found = torch.autograd.grad(z, [leaves[i] for i in wanted], grad_z,
                                        allow_unused=True)
            for i, g in zip(wanted, found):
                grads[i] = g
        return (None, None, grad_w, grad_b, *grads)


def recomputed_input_linear(fn: Callable, inputs: Sequence[Optional[Tensor]], weight: Tensor,
                            bias: Optional[Tensor] = None,
                            recompute_fn: Optional[Callable] = None) -> Tensor:
    """``F.linear(fn(*inputs), weight, bias)`` that keeps ``inputs``, not ``fn(*inputs)``.

    Args:
        fn: cheap ops (elementwise, depthwise, norms, copies), run once in the forward. Its
            backward must not need its output (true of GELU, BatchNorm, convolutions and
            copies), since the backward reuses that buffer.
        inputs: the tensors ``fn`` takes (activations and parameters); gradients reach each
            that requires one. ``None`` entries are passed through.
        weight, bias: the Linear layer's, (out, in) and (out, ).
        recompute_fn: what the backward runs instead of ``fn``, where running ``fn`` again
            would differ (a BatchNorm must not update its running statistics twice). It must
            give the values ``fn`` gave. Default: ``fn``.

    Returns:
        (..., out)
    """
    return _RecomputedInputLinear.apply(fn, recompute_fn or fn, weight, bias, *inputs)
