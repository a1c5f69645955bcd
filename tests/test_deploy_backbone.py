"""ONNX export of the backbone and running the file in ONNX Runtime (pale_mm.deploy), with
no OpenMMLab library beyond mmengine and mmcv: this file also runs on the oldest torch.

Tolerance: float32, a tiny random Pale; ONNX Runtime's feature maps within 1e-4 of
PyTorch's (seen: about 2e-6).
"""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip('onnxruntime', reason='pale_mm[deploy] is not installed')

from pale_mm.deploy import onnx_export  # noqa: E402
from pale_mm.deploy.onnx_export import (  # noqa: E402
    BackboneGraph,
    adaptive_pool_matrix,
    example_image,
    export_onnx,
    exporter_available,
)
from pale_mm.deploy.onnx_runtime import DeployError, OnnxModel  # noqa: E402
from pale_mm.models import PaleTransformer  # noqa: E402

ATOL = 1e-4


def backbone_graph(tiny_arch, shape):
    torch.manual_seed(0)
    return BackboneGraph.of(PaleTransformer(arch=tiny_arch), shape)


@pytest.mark.parametrize('shape,exporter', [
    ((224, 224), 'torchscript'),  # every stage's map a multiple of the pale size 7
    ((100, 76), 'torchscript'),  # none is: the groups of unequal length (two bands)
    ((100, 76), 'dynamo'),
])
def test_backbone_exports_and_onnx_runtime_gives_pytorchs_maps(tiny_arch, shape, exporter,
                                                               tmp_path):
    if not exporter_available(exporter):
        pytest.skip(f'torch {torch.__version__} has no {exporter} ONNX exporter')
    graph = backbone_graph(tiny_arch, shape)
    path = tmp_path / 'pale.onnx'
    found = export_onnx(graph, str(path), exporter)
    assert list(found) == ['feat0', 'feat1', 'feat2', 'feat3']
    assert all(r['ok'] and r['max_abs_diff'] <= ATOL for r in found.values()), found
    # the model is left in eval mode (the exporters restore the wrapper's mode)
    assert not any(m.training for m in graph.modules())

    model = OnnxModel(str(path))
    assert model.info['task'] == 'backbone'
    assert model.info['input']['shape'] == [1, 3, *shape]
    image = torch.randn(1, 3, *shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = graph.model.backbone(image)
    got = model(image.numpy())
    for name, want in zip(model.output_names, expected):
        assert got[name].shape == tuple(want.shape)
        np.testing.assert_allclose(got[name], want.numpy(), atol=ATOL, rtol=0)
    assert sorted(os.listdir(tmp_path)) == ['pale.onnx']  # no temporary file left


def test_another_size_gets_a_message_not_a_runtime_shape_error(tiny_arch, tmp_path):
    path = tmp_path / 'pale.onnx'
    export_onnx(backbone_graph(tiny_arch, (64, 96)), str(path))
    model = OnnxModel(str(path))
    with pytest.raises(DeployError, match=r'64x96.*resize or pad it.*tools/export_onnx.py'):
        model(np.zeros((1, 3, 96, 64), np.float32))
    with pytest.raises(DeployError, match=r'add the batch dimension'):
        model(np.zeros((3, 64, 96), np.float32))


def test_a_file_that_differs_from_pytorch_is_not_written(tiny_arch, tmp_path, monkeypatch):
    path = tmp_path / 'pale.onnx'
    path.write_bytes(b'the previous file')

    def differs(model, graph, image):
        return {'feat0': dict(max_abs_diff=1.0, relative=0.5, ok=False)}

    monkeypatch.setattr(onnx_export, 'compare', differs)
    with pytest.raises(DeployError, match=r'does not give PyTorch.s feat0.*nothing was written'):
        export_onnx(backbone_graph(tiny_arch, (64, 64)), str(path))
    assert path.read_bytes() == b'the previous file'
    assert sorted(os.listdir(tmp_path)) == ['pale.onnx']


def test_missing_onnxruntime_names_the_extra(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # import onnxruntime fails
    with pytest.raises(DeployError, match=r'pip install "pale_mm\[deploy\]"'):
        OnnxModel('any.onnx')


@pytest.mark.parametrize('size,out', [(16, 6), (16, 3), (16, 1), (7, 2), (12, 6), (5, 5)])
def test_adaptive_pool_matrix_is_torchs_adaptive_average(size, out):
    """The TorchScript export's replacement of adaptive_avg_pool2d (UperNet's pyramid
    pooling) computes torch's bins."""
    x = torch.randn(2, 3, size, size + 3, dtype=torch.float64)
    rows, cols = adaptive_pool_matrix(size, out), adaptive_pool_matrix(size + 3, out + 1)
    torch.testing.assert_close(rows @ x @ cols.t(), F.adaptive_avg_pool2d(x, (out, out + 1)))


def test_example_images_differ_between_export_and_check(tiny_arch):
    """The file is checked on another image than the one it was traced with: a value the
    trace baked in would show."""
    graph = backbone_graph(tiny_arch, (32, 32))
    assert not torch.equal(example_image(graph), example_image(graph, seed=1))


def test_building_the_graph_leaves_the_weights_and_statistics_alone(tiny_arch):
    torch.manual_seed(0)
    backbone = PaleTransformer(arch=tiny_arch)  # train mode, as a registry builds it
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    BackboneGraph.of(backbone, (64, 64))
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
