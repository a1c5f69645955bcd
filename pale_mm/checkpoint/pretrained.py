"""Loading a pretrained checkpoint into a backbone, reporting what did not fit."""
import os.path as osp
import re
from typing import Dict

import torch
from mmengine.logging import print_log

from .download import is_url, local_checkpoint
from .safe_load import CheckpointMismatchError, safe_load
from .state_dict import (
    _prefix_hint,
    _preview,
    backbone_state_dict,
    extract_state_dict,
    match_state_dict,
)


def load_pretrained_backbone(model: torch.nn.Module, filename: str,
                             map_location='cpu', min_fraction: float = 0.5) -> Dict:
    """Load a pretrained checkpoint into a backbone, reporting what did not fit.

    ``filename`` is a local path or a URL mmengine reads (``https://``, ``open-mmlab://``,
    ...; see :func:`local_checkpoint`). Accepts classification checkpoints (``backbone.``
    prefix plus a head), mmdet/mmseg checkpoints and plain backbone state dicts. Refuses,
    listing keys, when fewer than ``min_fraction`` of the model's entries are found in the
    checkpoint.

    Returns:
        dict with ``missing``, ``unexpected`` and ``mismatched`` key lists.
    """
    name = type(model).__name__
    filename = str(filename)
    if not is_url(filename) and not osp.isfile(osp.expanduser(filename)):
        raise FileNotFoundError(
            f'{name}: pretrained checkpoint not found at {osp.abspath(filename)} (from '
            "the backbone's init_cfg). Put the ImageNet checkpoint there, point "
            'model.backbone.init_cfg.checkpoint at it, or train from scratch with '
            '--cfg-options model.backbone.init_cfg=None')
    with local_checkpoint(filename) as path:  # URLs: a download, through safe_load as well
        state_dict = backbone_state_dict(extract_state_dict(safe_load(path, map_location)))
    matched, missing, unexpected, mismatched = match_state_dict(model, state_dict)
    own = model.state_dict()
    if len(matched) < min_fraction * len(own):
        raise CheckpointMismatchError(
            f'{name}: checkpoint {filename} does not fit this backbone: only '
            f'{len(matched)} of its {len(own)} entries were found. Missing: '
            f'{_preview(missing)}. Unexpected: {_preview(unexpected) or "none"}.'
            + (f' Shape mismatches: {_preview(mismatched)}.' if mismatched else '')
            + _prefix_hint(unexpected, own)
            + ' Is it a checkpoint of the same arch (tiny/small/base)?')
    model.load_state_dict(matched, strict=False)
    report = dict(missing=missing, unexpected=unexpected, mismatched=mismatched)
    msg = f'{name}: loaded {len(matched)}/{len(own)} entries from {filename}'
    for kind, keys in report.items():
        if keys:
            msg += f'\n  {kind} keys: {_preview(keys)}'
    if missing and all(re.match(r'norm\d+\.', k) for k in missing):
        msg += ('\n  (only output norms are missing: the checkpoint comes from a model that '
                'did not output those stages, such as an ImageNet classifier that pools the '
                'last one; they start at weight 1, bias 0)')
    print_log(msg, logger='current')
    return report
