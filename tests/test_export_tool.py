"""tools/export_onnx.py on the small models of the configs: a Pale UperNet (its label map
from ONNX Runtime is mmseg's own prediction), the part of a Pale Mask R-CNN that exports,
a Pale ImageNet classifier; and the errors for a checkpoint of another model.

Tolerance: float32; each output within 1e-4 of PyTorch's, relative to its largest value
(seen: about 2e-6), and every label the same.
"""
import os
import os.path as osp

import numpy as np
import pytest
import torch

pytest.importorskip('onnxruntime', reason='pale_mm[deploy] is not installed')

from pale_mm.deploy.onnx_export import build_graph  # noqa: E402
from pale_mm.deploy.onnx_runtime import OnnxModel  # noqa: E402

from det_common import ROOT, tool, write_small_config  # noqa: E402

SEG_CONFIG = osp.join(ROOT, 'configs', 'upernet', 'pale_demo_synthetic.py')
CLS_BASE = osp.join(ROOT, 'configs', 'imagenet', 'pale_t_in1k.py')
RTOL = 1e-4

pytestmark = pytest.mark.usefixtures('one_torch_thread')


def random_checkpoint(config, path, shape):
    """The config's model as initialised (seeded), saved as tools/train.py's checkpoints are."""
    torch.manual_seed(0)
    graph = build_graph(config, None, shape)
    torch.save({'meta': {}, 'state_dict': graph.model.state_dict()}, str(path))
    return graph.model


def export(argv):
    found = tool('export_onnx').main(argv)
    assert all(r['ok'] for r in found.values()), found
    for r in found.values():
        assert r.get('agreement', 1.0) == 1.0 and r.get('relative', 0.0) <= RTOL, found
    return found


def test_segmentor_labels_from_onnx_runtime_are_mmsegs_prediction(tmp_path):
    from mmseg.structures import SegDataSample
    H, W = 100, 76  # no stage's map a multiple of the pale size
    model = random_checkpoint(SEG_CONFIG, tmp_path / 'seg.pth', (H, W))
    out = tmp_path / 'seg.onnx'
    found = export([SEG_CONFIG, str(tmp_path / 'seg.pth'), '--shape', str(H), str(W),
                    '-o', str(out)])
    assert list(found) == ['logits', 'labels']

    image = torch.randint(0, 256, (3, H, W), generator=torch.Generator().manual_seed(3))
    sample = SegDataSample(metainfo=dict(img_shape=(H, W), ori_shape=(H, W)))
    with torch.no_grad():
        (pred, ) = model.eval().test_step(dict(inputs=[image.to(torch.uint8)],
                                               data_samples=[sample]))
    got = OnnxModel(str(out))(image[None].float().numpy())
    assert got['logits'].shape == (1, 6, H, W)
    np.testing.assert_array_equal(got['labels'], pred.pred_sem_seg.data.numpy())
    np.testing.assert_allclose(got['logits'][0], pred.seg_logits.data.numpy(),
                               atol=RTOL * np.abs(got['logits']).max(), rtol=0)


def test_detector_exports_its_features_and_rpn_maps(tmp_path, capsys):
    config = write_small_config(tmp_path)
    random_checkpoint(config, tmp_path / 'det.pth', (128, 160))
    found = export([config, str(tmp_path / 'det.pth'), '--shape', '128', '160'])
    assert list(found) == ([f'neck{i}' for i in range(5)] + [f'rpn_cls{i}' for i in range(5)]
                           + [f'rpn_bbox{i}' for i in range(5)])
    assert osp.isfile(tmp_path / 'det_128x160.onnx')  # the default name: beside the checkpoint
    assert 'post-processing' in capsys.readouterr().out


def test_classifier_exports_its_logits(tmp_path):
    config = tmp_path / 'pale_small_in1k.py'
    config.write_text(
        f'_base_ = {CLS_BASE!r}\n'
        'model = dict(backbone=dict(arch=dict(_delete_=True, embed_dims=16, '
        'depths=[1, 1, 1, 1], num_heads=[2, 2, 4, 4])), head=dict(in_channels=128))\n')
    random_checkpoint(str(config), tmp_path / 'cls.pth', (64, 64))
    found = export([str(config), str(tmp_path / 'cls.pth'), '--shape', '64', '64'])
    assert list(found) == ['logits']
    assert OnnxModel(str(tmp_path / 'cls_64x64.onnx')).info['input']['shape'] == [1, 3, 64, 64]


def test_checkpoint_of_another_model_is_refused_and_nothing_written(tmp_path):
    config = write_small_config(tmp_path)
    random_checkpoint(config, tmp_path / 'det.pth', (128, 160))
    # the same backbone, other heads
    with pytest.raises(SystemExit, match=r"export_onnx.py: error: checkpoint .*det.pth lacks "
                       r"\d+ of the model's entries \(decode_head"):
        tool('export_onnx').main([SEG_CONFIG, str(tmp_path / 'det.pth'), '--shape', '96', '96'])
    with pytest.raises(SystemExit, match=r'checkpoint file not found'):
        tool('export_onnx').main([SEG_CONFIG, str(tmp_path / 'none.pth'), '--shape', '96',
                                  '96'])
    assert not [f for f in os.listdir(tmp_path) if f.endswith('.onnx') or f.startswith('.')]
