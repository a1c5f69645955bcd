"""``paramwise_cfg.custom_keys`` naming the old backbone's parameters, rewritten to Pale's
norms and position encodings."""
from typing import Dict, List, Optional

from .outputs import SwapError

# ---------------------------------------------------------------------------------------
# parameter-wise settings (custom_keys)
_FOREIGN_POSITION_KEYS = ('absolute_pos_embed', 'relative_position_bias_table', 'pos_embed',
                          'pos_block', 'cls_token')


def _setting(v: dict) -> tuple:
    v = dict(v)
    v.setdefault('lr_mult', 1.)
    v.setdefault('decay_mult', 1.)
    return tuple(sorted((k, float(x) if isinstance(x, (int, float)) else x)
                        for k, x in v.items()))


def _match(keys: dict, name: str) -> Optional[tuple]:
    """mmengine's rule: the longest key (then the alphabetically first) contained in the
    parameter's name decides."""
    for key in sorted(sorted(keys), key=len, reverse=True):
        if key in name:
            return _setting(keys[key])
    return None


def _pale_parameters(arch) -> Dict[str, str]:
    """{'backbone.<name>': 'norm' | 'position' | 'other'} for Pale's parameters (the model's
    own :meth:`~pale_mm.models.PaleTransformer.parameter_kinds`)."""
    from ..models import PaleTransformer
    model = PaleTransformer(arch=arch, drop_path_rate=0.)
    return {f'backbone.{name}': kind for name, kind in model.parameter_kinds().items()}


def _candidate_keys(name: str) -> List[str]:
    """Shorter to longer keys that name ``name``'s module: each dotted prefix, and before
    it the prefix with its last part's digits dropped (``...blocks.0.norm`` for norm1 and
    norm2)."""
    parts = name.split('.')[:-1]  # the module path
    keys = []
    for i in range(2, len(parts) + 1):
        stripped = '.'.join(parts[:i - 1] + [parts[i - 1].rstrip('0123456789')])
        keys += [stripped, '.'.join(parts[:i])] if stripped != '.'.join(parts[:i]) else \
            ['.'.join(parts[:i])]
    return keys


def rewrite_custom_keys(custom_keys: dict, arch) -> tuple:
    """(new custom_keys, changes) with the old backbone's keys replaced by Pale's.

    Keys with a ``backbone.`` prefix and the bare names of Swin/ViT position tables name the
    old backbone's parameters and are dropped. What they set for norms (keys containing
    'norm') and for position embeddings goes to Pale's norms (LayerNorms and the Q/K/V
    BatchNorms) and conditional position encodings (``cpe``); bare keys such as 'norm'
    still apply to the heads and count for Pale's norms too.
    """
    kept = {k: v for k, v in custom_keys.items()
            if k == 'backbone' or not (k.startswith('backbone.') or k in _FOREIGN_POSITION_KEYS)}
    dropped = [k for k in custom_keys if k not in kept]
    # the old backbone's norms: its own keys, else bare ones ('norm') unless a longer
    # 'backbone' key decided for them (mmengine: the longest key in the name decides)
    norm_keys = [k for k in custom_keys if 'norm' in k and k.startswith('backbone.')] or \
        [k for k in kept if 'norm' in k and k != 'backbone'
         and ('backbone' not in kept or len(k) > len('backbone'))]
    position_keys = [k for k in dropped if any(p in k for p in _FOREIGN_POSITION_KEYS)]
    other = [k for k in dropped if k not in norm_keys and k not in position_keys]
    if other:
        raise SwapError(
            f'optim_wrapper.paramwise_cfg.custom_keys {other} name parameters of the old '
            "backbone that Pale has no counterpart for; write Pale's keys by hand (its "
            'parameters: backbone.stem.*, backbone.stages.<i>.downsample.*, '
            'backbone.stages.<i>.blocks.<j>.{cpe,norm1,attn,norm2,mlp}.*, backbone.norm<i>.*)')
    source = {_setting(v): dict(v) for v in custom_keys.values()}
    target = {}
    for kind, keys in (('norm', norm_keys), ('position', position_keys)):
        settings = {_setting(custom_keys[k]) for k in keys}
        if len(settings) > 1:
            raise SwapError(
                f'optim_wrapper.paramwise_cfg.custom_keys {keys} give the old backbone\'s '
                f'{kind} parameters different settings; write Pale\'s keys by hand')
        if settings:
            target[kind] = settings.pop()
    kinds = _pale_parameters(arch)
    wanted = {n: target.get(kind, _match(kept, n)) for n, kind in kinds.items()}
    new = dict(kept)
    for name in kinds:
        if _match(new, name) == wanted[name]:
            continue
        for key in _candidate_keys(name):  # the shortest key that moves nothing else
            if any(wanted[n] != wanted[name] for n in kinds if key in n):
                continue
            new[key] = source[wanted[name]]
            if _match(new, name) == wanted[name]:
                break
            del new[key]  # a longer key still decides for this parameter
    wrong = [n for n in kinds if _match(new, n) != wanted[n]]
    if wrong:
        raise SwapError(f'optim_wrapper.paramwise_cfg.custom_keys: could not give Pale\'s '
                        f'{wrong[:3]} the settings of the old backbone\'s; set them by hand')
    changes = []
    if dropped or len(new) != len(kept):
        added = [k for k in new if k not in kept]
        for_kinds = {kinds[next(n for n in kinds if k in n)] for k in added}
        what = "Pale's " + ' and '.join(w for kind, w in (
            ('norm', 'norms'), ('position', 'position encodings (cpe)')) if kind in for_kinds)
        changes.append(
            f'optim_wrapper.paramwise_cfg.custom_keys: dropped {len(dropped)} key(s) of the old '
            f'backbone ({", ".join(dropped[:4])}{", ..." if len(dropped) > 4 else ""})'
            + (f'; {len(added)} keys give {what} the settings the old backbone\'s had'
               if added else ''))
    return new, changes
