"""Parameters and multiply-accumulates of a model, PS-Attention's attention products included.

mmengine's ``FlopAnalyzer`` (fvcore's jit-trace counter; one multiply-accumulate counts as
one flop) has no handle for ``aten::scaled_dot_product_attention`` and leaves attention out
of every count (mmdet's and mmseg's own ``get_flops`` scripts too); :func:`complexity`, which
``tools/get_flops.py`` calls, gives its analyzer one (:func:`sdpa_flop_jit`).
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


def complexity(model, inputs) -> dict:
    """Parameters and multiply-accumulates of ``model(*inputs)``, attention included."""
    import torch
    from mmengine.analysis import FlopAnalyzer, parameter_count
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs, )
    analyzer = FlopAnalyzer(model, inputs).set_op_handle(SDPA_OP, sdpa_flop_jit)
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    return dict(params=parameter_count(model)[''], macs=analyzer.total(),
                by_operator=dict(analyzer.by_operator()),
                unsupported=dict(analyzer.unsupported_ops()))
