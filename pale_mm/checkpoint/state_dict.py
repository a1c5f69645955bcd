"""Weights against a model: the fit check, and the state dicts of whole models and of
backbones."""
from collections import OrderedDict
from typing import Dict, List, Tuple

import torch

from .safe_load import CheckpointMismatchError


# ---------------------------------------------------------------------------------------
# does a checkpoint fit the model?
def check_checkpoint_fits(model: torch.nn.Module, checkpoint, filename: str,
                          exact: bool) -> None:
    """Refuse ``checkpoint`` for ``model`` when fewer than half of the model's entries are in
    it at their shapes, or, with ``exact`` (resuming, testing), when any entry has another
    shape. Without ``exact`` (``load_from`` for fine-tuning) heads of other shapes are
    allowed: mmengine reports them and leaves them as initialised.

    Raises:
        CheckpointMismatchError: naming the file and the first entries that do not fit.
    """
    weights = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else {}
    # mmengine strips DDP's prefix as it loads
    weights = strip_ddp_prefix({k: v for k, v in weights.items() if isinstance(v, torch.Tensor)})
    matched, missing, _, mismatched = match_state_dict(model, weights)
    total = len(model.state_dict())
    if len(matched) >= total / 2 and not (exact and mismatched):
        return
    found = f'only {len(matched)} of the model\'s {total} entries are in it at their shapes'
    if mismatched:
        found += f'; {len(mismatched)} have other shapes ({_preview(mismatched, 2)})'
    elif missing:
        found += f'; missing: {_preview(missing, 3)}'
    raise CheckpointMismatchError(
        f'checkpoint {filename} does not fit the model: {found}. It was written for '
        'another model (another arch, width or number of classes): use the config it was '
        'trained with, or a checkpoint of this model.')


def extract_state_dict(checkpoint) -> Dict[str, torch.Tensor]:
    """The weights of a checkpoint: ``state_dict`` / ``model`` entry or the dict itself."""
    if not isinstance(checkpoint, dict):
        raise ValueError(f'checkpoint holds a {type(checkpoint).__name__}, not a dict of '
                         'weights')
    for key in ('state_dict', 'model'):
        if key in checkpoint and isinstance(checkpoint[key], dict):
            checkpoint = checkpoint[key]
            break
    return OrderedDict((k, v) for k, v in checkpoint.items() if isinstance(v, torch.Tensor))


def strip_ddp_prefix(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The keys without DDP's ``module.`` prefix, where they have it."""
    return OrderedDict((k[len('module.'):] if k.startswith('module.') else k, v)
                       for k, v in state_dict.items())


def backbone_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Strip ``module.`` (DDP); keep and strip ``backbone.`` keys where there are any
    (classifier, detector and segmentor checkpoints), else take the dict as is."""
    state_dict = strip_ddp_prefix(state_dict)
    if any(k.startswith('backbone.') for k in state_dict):
        state_dict = OrderedDict((k[len('backbone.'):], v) for k, v in state_dict.items()
                                 if k.startswith('backbone.'))
    return state_dict


def match_state_dict(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor]
                     ) -> Tuple[Dict, List[str], List[str], List[str]]:
    """Split ``state_dict`` against ``model``: (matched, missing, unexpected, mismatched)."""
    own = model.state_dict()
    matched = OrderedDict()
    mismatched = []
    for k, v in state_dict.items():
        if k in own:
            if own[k].shape == v.shape:
                matched[k] = v
            else:
                mismatched.append(f'{k}: checkpoint {tuple(v.shape)}, model '
                                  f'{tuple(own[k].shape)}')
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    return matched, missing, unexpected, mismatched


def _prefix_hint(unexpected: List[str], own_keys) -> str:
    """If the unexpected keys are the model's keys behind a common prefix, name it."""
    own_keys = set(own_keys)
    prefixes = {}
    for k in unexpected:
        parts = k.split('.')
        for i in range(1, len(parts)):
            if '.'.join(parts[i:]) in own_keys:
                p = '.'.join(parts[:i]) + '.'
                prefixes[p] = prefixes.get(p, 0) + 1
                break
    if not prefixes:
        return ''
    best = max(prefixes, key=prefixes.get)
    return (f" The checkpoint's keys carry the prefix {best!r}; strip it (for example "
            f"{{k.removeprefix({best!r}): v for k, v in state_dict.items()}}) and save again.")


def _preview(keys: List[str], n: int = 8) -> str:
    shown = ', '.join(keys[:n])
    return f'{shown}, ... ({len(keys)} in all)' if len(keys) > n else shown
