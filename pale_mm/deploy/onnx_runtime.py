"""An exported file in ONNX Runtime, with the input size it was exported for checked first.

Pale's groups are laid out from the feature map's size at export time (a reshape per band,
no index tensors), so a file takes the one image size it was exported for: ONNX Runtime
would stop another size with a shape error deep in the graph. :class:`OnnxModel` says which
size the file takes and how to get a file for another.
"""
import importlib
import json
import os.path as osp
from typing import Dict, Optional, Sequence

import numpy as np

from ..errors import PaleError

METADATA_KEY = 'pale_mm'  # the file's metadata_props entry: a JSON description


class DeployError(PaleError, RuntimeError):
    """A problem with an export or an exported file; the message says the fix."""


def require(module: str, install: str = 'pip install "pale_mm[deploy]" (onnx, onnxscript, '
            'onnxruntime)'):
    """Import ``module`` (``onnx``, ``onnxruntime``, ...), or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DeployError(f'{module} is not installed; {install}') from None


class OnnxModel:
    """An ONNX file of :mod:`pale_mm.deploy.onnx_export` in an ONNX Runtime session.

    ``model(image)`` -> ``{output name: array}``; ``model.info`` is the description the
    exporter wrote into the file (task, input, outputs, config).
    """

    def __init__(self, path: str, providers: Optional[Sequence[str]] = None,
                 threads: Optional[int] = None):
        ort = require('onnxruntime')
        if not osp.isfile(path):
            raise DeployError(f'ONNX file not found: {path}')
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.path = path
        self.session = ort.InferenceSession(
            path, options, providers=list(providers or ['CPUExecutionProvider']))
        meta = self.session.get_modelmeta().custom_metadata_map
        self.info = json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else {}
        (inp, ) = self.session.get_inputs()
        self.input_name = inp.name
        self.input_shape = tuple(inp.shape)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def check_input(self, image: np.ndarray) -> None:
        expected = self.input_shape
        fits = image.ndim == len(expected) and all(
            not isinstance(e, int) or e == n for e, n in zip(expected, image.shape))
        if fits:
            return
        size = 'x'.join(str(n) for n in expected[-2:])
        fix = ('add the batch dimension (image[None])' if image.ndim == len(expected) - 1
               else f'resize or pad it to {size}')
        raise DeployError(
            f'{self.path} takes one image of shape {expected} (height x width {size}, the '
            f'size it was exported for), got an array of shape {tuple(image.shape)}: {fix}, '
            'or export a file for this size with tools/export_onnx.py CONFIG CHECKPOINT '
            '--shape H W')

    def __call__(self, image: np.ndarray) -> Dict[str, np.ndarray]:
        image = np.ascontiguousarray(image, dtype=np.float32)
        self.check_input(image)
        outputs = self.session.run(None, {self.input_name: image})
        return dict(zip(self.output_names, outputs))
