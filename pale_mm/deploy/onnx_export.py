"""ONNX export of the model a config builds, checked in ONNX Runtime before it is written.

What a file computes is one of the graphs below, each a small ``nn.Module`` around the model
that the config builds (the library's own modules, run in eval mode):

* :class:`SegmentorGraph` (mmseg): one raw image -> ``logits`` (1, K, H, W) and ``labels``
  (1, H, W), as the segmentor's ``predict`` gives them for an image of the exported size;
* :class:`ClassifierGraph` (mmpretrain): one raw image -> ``logits`` (1, K);
* :class:`DetectorGraph` (mmdet): one raw image -> the FPN maps and the RPN head's maps, the
  part of a two-stage detector that exports; the post-processing after them (proposals
  by NMS, RoI heads, mask pasting) does not export with torch's exporters (docs/deploy.md);
* :class:`BackboneGraph` (any config, ``--backbone``): a normalised image -> the backbone's
  feature maps.

"Raw image": float32 pixel values in the channel order the config's pipeline loads (BGR
with mmcv's loading); the data preprocessor's channel flip, normalisation and padding are
in the graph. Static shapes: Pale's groups are laid out from each map's size at export time,
one file per input size (as mmdeploy's static configs).

The TorchScript exporter (the one mmdeploy drives) is the default: it exports Pale on every
supported torch; ``exporter='dynamo'`` uses ``torch.export`` where torch has it (>= 2.5).
"""
import contextlib
import inspect
import json
import os.path as osp
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from ..checkpoint import (
    check_checkpoint_fits,
    extract_state_dict,
    match_state_dict,
    safe_load,
    strip_ddp_prefix,
)
from ..fileio import written_atomically
from ..launch.run_config import load_config
from .onnx_runtime import METADATA_KEY, DeployError, OnnxModel, require

# the opset of each exporter: LayerNormalization is an op from 17 (SDPA needs >= 14), and
# the dynamo exporter writes 18 (it converts to another opset after the fact, and fails to)
OPSETS = dict(torchscript=17, dynamo=18)
OPSET = OPSETS['torchscript']
EXPORTERS = tuple(OPSETS)
# the largest difference from PyTorch a file may show, relative to the output's magnitude,
# and the share of label-map pixels that must agree (a near tie may flip in float32)
RELATIVE_TOLERANCE = 1e-3
LABEL_AGREEMENT = 0.999


# ------------------------------------------------------------------------------- graphs
class _Graph(nn.Module):
    """One image (1, 3, H, W) -> the task's outputs (:attr:`output_names`)."""

    raw_pixels = True  # the data preprocessor is in the graph
    task = ''

    def __init__(self, model: nn.Module, shape: Tuple[int, int]):
        super().__init__()
        model.eval()  # before any forward: BatchNorm statistics stay the checkpoint's
        self.model = model
        self.shape = tuple(int(n) for n in shape)
        self.eval()

    @property
    def output_names(self) -> List[str]:
        raise NotImplementedError

    def preprocess(self, image: Tensor, sample):
        """The model's data preprocessor on one image, in test mode."""
        data = self.model.data_preprocessor(dict(inputs=[image[0]], data_samples=[sample]),
                                            False)
        return data['inputs'], data['data_samples']


class SegmentorGraph(_Graph):
    """mmseg segmentor: raw image -> ``logits`` (1, K, H, W), ``labels`` (1, H, W) int64."""

    task = 'segmentor'
    output_names = ['logits', 'labels']

    def forward(self, image: Tensor):
        from mmseg.structures import SegDataSample
        H, W = self.shape
        sample = SegDataSample(metainfo=dict(img_shape=(H, W), ori_shape=(H, W)))
        inputs, samples = self.preprocess(image, sample)
        # the segmentor's own inference ('whole' or 'slide', as its test_cfg says); a padded
        # input (test_cfg size or size_divisor) pads at the bottom and right: cropped off
        logits = self.model.inference(inputs, [s.metainfo for s in samples])[..., :H, :W]
        head = self.model.decode_head
        if head.out_channels == 1:  # binary: a threshold on the one channel, as predict
            labels = (logits.sigmoid() > head.threshold)[:, 0].long()
        else:
            labels = logits.argmax(dim=1)
        return logits, labels


class ClassifierGraph(_Graph):
    """mmpretrain classifier: raw image -> ``logits`` (1, K) (before the softmax)."""

    task = 'classifier'
    output_names = ['logits']

    def forward(self, image: Tensor):
        inputs = self.model.data_preprocessor(dict(inputs=image), False)['inputs']
        return self.model(inputs, mode='tensor')


class DetectorGraph(_Graph):
    """mmdet detector, the part that exports: raw image -> ``neck0..`` (the FPN maps, 1, C,
    h, w each) and, with an RPN, ``rpn_cls0..`` and ``rpn_bbox0..`` (its maps per level)."""

    task = 'detector'

    def __init__(self, model: nn.Module, shape: Tuple[int, int]):
        super().__init__(model, shape)
        with torch.no_grad():
            self.levels = len(self._features(example_image(self)))

    @property
    def output_names(self) -> List[str]:
        names = [f'neck{i}' for i in range(self.levels)]
        if getattr(self.model, 'with_rpn', False):
            names += [f'rpn_cls{i}' for i in range(self.levels)]
            names += [f'rpn_bbox{i}' for i in range(self.levels)]
        return names

    def _features(self, image: Tensor):
        from mmdet.structures import DetDataSample
        H, W = self.shape
        sample = DetDataSample(metainfo=dict(img_shape=(H, W), ori_shape=(H, W),
                                             scale_factor=(1., 1.)))
        inputs, _ = self.preprocess(image, sample)
        return self.model.extract_feat(inputs)

    def forward(self, image: Tensor):
        feats = self._features(image)
        if not getattr(self.model, 'with_rpn', False):
            return tuple(feats)
        cls_maps, bbox_maps = self.model.rpn_head(feats)
        return (*feats, *cls_maps, *bbox_maps)


class BackboneGraph(_Graph):
    """The backbone alone: a normalised image (1, 3, H, W) -> ``feat0..`` (its maps)."""

    task = 'backbone'
    raw_pixels = False

    def __init__(self, model: nn.Module, shape: Tuple[int, int]):
        super().__init__(model, shape)
        with torch.no_grad():
            self.levels = len(self.model.backbone(example_image(self)))

    @property
    def output_names(self) -> List[str]:
        return [f'feat{i}' for i in range(self.levels)]

    def forward(self, image: Tensor):
        return tuple(self.model.backbone(image))

    @classmethod
    def of(cls, backbone: nn.Module, shape: Tuple[int, int]) -> 'BackboneGraph':
        """The graph of a backbone built on its own (not by a config)."""
        model = nn.Module()  # a model with a backbone, as the configs build them
        model.backbone = backbone
        return cls(model, shape)


TASK_OF_SCOPE = {'mmseg': SegmentorGraph, 'mmpretrain': ClassifierGraph,
                 'mmdet': DetectorGraph}


def example_image(graph: _Graph, seed: int = 0) -> Tensor:
    """A random image of the graph's input: pixel values 0-255, or normal noise for the
    backbone (normalised input)."""
    g = torch.Generator().manual_seed(seed)
    shape = (1, 3, *graph.shape)
    if graph.raw_pixels:
        return torch.randint(0, 256, shape, generator=g).float()
    return torch.randn(shape, generator=g)


# ------------------------------------------------------------------------------- models
def build_graph(config: str, checkpoint: Optional[str], shape: Sequence[int],
                backbone: bool = False, cfg_options: Optional[dict] = None) -> _Graph:
    """The graph of ``config``'s model with ``checkpoint``'s weights (``None``: as
    initialised, for measuring speed), in eval mode on the CPU; ``graph.cfg`` is the config
    it was built from."""
    from mmengine.registry import MODELS
    if len(shape) != 2 or min(shape) < 1:
        raise DeployError(f'--shape takes a height and a width, got {list(shape)}')
    cfg = load_config(config, cfg_options)
    graph_type = BackboneGraph if backbone else TASK_OF_SCOPE[cfg.default_scope]
    if cfg.model.get('backbone', {}).get('init_cfg'):
        cfg.model.backbone.init_cfg = None  # the checkpoint holds every weight
    model = MODELS.build(cfg.model)
    if checkpoint is None:
        model.init_weights()
    else:
        load_weights(model, checkpoint)
    graph = graph_type(model, shape)
    graph.cfg = cfg
    return graph


def load_weights(model: nn.Module, checkpoint: str) -> None:
    """Every weight of ``model`` from ``checkpoint`` (pale_mm's safe loading), or an error
    naming what is missing."""
    if not osp.isfile(checkpoint):
        raise DeployError(f'checkpoint file not found: {checkpoint}')
    loaded = safe_load(checkpoint)
    check_checkpoint_fits(model, loaded, checkpoint, exact=True)
    weights = strip_ddp_prefix(extract_state_dict(loaded))
    matched, missing, _, _ = match_state_dict(model, weights)
    if missing:
        raise DeployError(
            f'checkpoint {checkpoint} lacks {len(missing)} of the model\'s entries '
            f'({", ".join(missing[:3])}...): export a checkpoint of this config\'s model '
            '(tools/train.py writes them)')
    model.load_state_dict(matched)


# ------------------------------------------------------------------------------- export
def adaptive_pool_matrix(size: int, out: int) -> Tensor:
    """(out, size): row ``i`` averages inputs ``floor(i * size / out)`` to
    ``ceil((i + 1) * size / out) - 1``, torch's bins of ``adaptive_avg_pool``."""
    m = torch.zeros(out, size, dtype=torch.float64)
    for i in range(out):
        start, end = (i * size) // out, -(-(i + 1) * size // out)
        m[i, start:end] = 1 / (end - start)
    return m


def _adaptive_avg_pool2d_symbolic(g, x, output_size):
    """``adaptive_avg_pool2d`` as two products with constant bin matrices: torch's
    TorchScript exporter refuses output sizes that do not divide the input (UperNet's
    pyramid pooling, scales 1, 2, 3, 6, on a 1/32 map of 16 x 16). The sizes are static."""
    from torch.onnx.symbolic_helper import _maybe_get_const
    H, W = x.type().sizes()[-2:]
    out = [n if n is not None else s for n, s in zip(_maybe_get_const(output_size, 'is'),
                                                     (H, W))]
    dtype = torch.float32
    rows = g.op('Constant', value_t=adaptive_pool_matrix(H, out[0]).to(dtype))  # (oh, H)
    cols = g.op('Constant', value_t=adaptive_pool_matrix(W, out[1]).t().to(dtype))  # (W, ow)
    return g.op('MatMul', g.op('MatMul', rows, x), cols)


@contextlib.contextmanager
def _torchscript_rewrites():
    """The TorchScript exporter's symbolic for ``adaptive_avg_pool2d`` replaced for the time
    of one export (the model is not touched; the file is checked against it)."""
    torch.onnx.register_custom_op_symbolic('aten::adaptive_avg_pool2d',
                                           _adaptive_avg_pool2d_symbolic, OPSET)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic('aten::adaptive_avg_pool2d', OPSET)


def exporter_available(exporter: str) -> bool:
    if exporter == 'torchscript':
        return True
    return 'dynamo' in inspect.signature(torch.onnx.export).parameters


def _export_kwargs(exporter: str) -> Dict:
    if exporter not in EXPORTERS:
        raise DeployError(f'exporter {exporter!r} unknown; choose one of {EXPORTERS}')
    if not exporter_available(exporter):
        raise DeployError(
            f'torch {torch.__version__} has no dynamo ONNX exporter (torch >= 2.5 has); use '
            '--exporter torchscript')
    kwargs = dict(opset_version=OPSETS[exporter])
    if 'dynamo' not in inspect.signature(torch.onnx.export).parameters:
        return kwargs  # torch < 2.5: the TorchScript exporter is the only one
    if exporter == 'dynamo':
        return dict(kwargs, dynamo=True, external_data=False)
    return dict(kwargs, dynamo=False)


def describe(graph: _Graph, config: str, checkpoint: Optional[str], exporter: str) -> Dict:
    """What the file takes and gives, written into it (metadata_props ``pale_mm``)."""
    from ..version import __version__
    pixels = ("float32 pixel values 0-255 in the channel order the config's pipeline loads; "
              'the data preprocessor is in the graph') if graph.raw_pixels else \
        'a normalised image, as the backbone takes it'
    return dict(task=graph.task, config=osp.basename(config),
                checkpoint=osp.basename(checkpoint) if checkpoint else None,
                input=dict(name='image', shape=[1, 3, *graph.shape], values=pixels),
                outputs=graph.output_names, exporter=exporter, opset=OPSETS[exporter],
                torch=torch.__version__, pale_mm=__version__)


def compare(model: OnnxModel, graph: _Graph, image: Tensor) -> Dict[str, Dict]:
    """Each output of ONNX Runtime against PyTorch's on ``image``: for floats the largest
    absolute difference and its ratio to the output's magnitude, for integers (label maps,
    labels) the share of entries that agree."""
    with torch.no_grad():
        expected = graph(image)
    expected = expected if isinstance(expected, (tuple, list)) else (expected, )
    got = model(image.numpy())
    found = {}
    for name, want in zip(graph.output_names, expected):
        want, have = want.numpy(), got[name]
        if have.shape != want.shape:
            found[name] = dict(shape=list(have.shape), expected_shape=list(want.shape),
                               ok=False)
        elif np.issubdtype(want.dtype, np.integer) or want.dtype == bool:
            agree = float((have == want).mean())
            found[name] = dict(agreement=agree, ok=agree >= LABEL_AGREEMENT)
        else:
            diff = float(np.abs(have.astype(np.float64) - want).max())
            scale = float(np.abs(want).max())
            relative = diff / max(scale, 1e-12)
            found[name] = dict(max_abs_diff=diff, relative=relative,
                               ok=relative <= RELATIVE_TOLERANCE)
    return found


def export_onnx(graph: _Graph, path: str, exporter: str = 'torchscript',
                config: str = '', checkpoint: Optional[str] = None) -> Dict[str, Dict]:
    """Export ``graph`` to ``path``, run the file in ONNX Runtime on an image other than the
    one it was traced with, and write it only if ONNX Runtime gives PyTorch's outputs.

    Returns:
        :func:`compare`'s result for each output.

    Raises:
        DeployError: the exporter failed (the message names the part), or the file's outputs
            differ from PyTorch's; ``path`` is then left as it was.
    """
    onnx = require('onnx')
    if exporter == 'dynamo':
        require('onnxscript')
    kwargs = _export_kwargs(exporter)
    with written_atomically(path, suffix='.onnx') as tmp:
        rewrites = _torchscript_rewrites() if exporter == 'torchscript' else \
            contextlib.nullcontext()
        with torch.no_grad(), warnings.catch_warnings(), rewrites:
            # the tracer's notes on Python conditionals: static shapes, by design
            warnings.simplefilter('ignore', torch.jit.TracerWarning)
            warnings.simplefilter('ignore', FutureWarning)  # torch 2.9+: TorchScript exporter
            try:
                torch.onnx.export(graph, (example_image(graph), ), tmp, input_names=['image'],
                                  output_names=graph.output_names, **kwargs)
            except Exception as e:
                raise DeployError(
                    f'the {exporter} exporter of torch {torch.__version__} could not export '
                    f'the {graph.task}: {type(e).__name__}: {str(e).splitlines()[0][:300]}'
                ) from e
        proto = onnx.load(tmp)
        entry = proto.metadata_props.add()
        entry.key = METADATA_KEY
        entry.value = json.dumps(describe(graph, config, checkpoint, exporter))
        onnx.save(proto, tmp)
        found = compare(OnnxModel(tmp), graph, example_image(graph, seed=1))
        bad = [name for name, r in found.items() if not r['ok']]
        if bad:
            raise DeployError(
                f'ONNX Runtime does not give PyTorch\'s {", ".join(bad)} '
                f'({json.dumps({n: found[n] for n in bad})}); nothing was written to {path}')
    return found
