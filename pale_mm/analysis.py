"""Complexity counting that includes PS-Attention's attention products.

mmengine's ``FlopAnalyzer`` (fvcore's jit-trace counter; one multiply-accumulate counts as
one flop) has no handle for ``aten::scaled_dot_product_attention``, so the two attention
products (QK^T and AV) would be silently left out. :func:`install` adds one to mmengine's
default handles, so every user of mmengine's counter (mmdet's and mmseg's ``get_flops``
scripts included) counts them once ``pale_mm`` is imported.
"""
from math import prod
from typing import Any, List

SDPA_OP = 'aten::scaled_dot_product_attention'


def sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """MACs of ``softmax(Q K^T) V``: q (..., L, E), k (..., S, E), v (..., S, Ev).

    Counts ``L * S * E`` for the scores and ``L * S * Ev`` for the weighted sum, per batch
    element (masked keys included: they are computed). The softmax is not counted, as for
    every other elementwise op.
    """
    from mmengine.analysis.jit_handles import get_shape
    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = prod(q[:-2])
    L, E = q[-2], q[-1]
    S, Ev = k[-2], v[-1]
    return batch * L * S * (E + Ev)


def install() -> None:
    """Make mmengine's FlopAnalyzer count ``scaled_dot_product_attention``."""
    from mmengine.analysis import complexity_analysis
    complexity_analysis._DEFAULT_SUPPORTED_FLOP_OPS.setdefault(SDPA_OP, sdpa_flop_jit)


def complexity(model, inputs) -> dict:
    """Parameters and multiply-accumulates of ``model(*inputs)``, attention included."""
    import torch
    from mmengine.analysis import FlopAnalyzer, parameter_count
    install()
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs, )
    analyzer = FlopAnalyzer(model, inputs)
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    return dict(params=parameter_count(model)[''], macs=analyzer.total(),
                by_operator=dict(analyzer.by_operator()),
                unsupported=dict(analyzer.unsupported_ops()))
