"""The swap itself: :func:`swap_backbone` (the overrides) and :func:`apply_swap` (merged
into a config)."""
import copy
import importlib.util
import os.path as osp
from typing import List, Optional, Sequence, Union

from .consumers import _consumers
from .custom_keys import rewrite_custom_keys
from .outputs import (
    BACKBONES,
    DEFAULT_DROP_PATH,
    IMAGENET_RGB,
    PALE_STRIDES,
    Swap,
    SwapError,
    _as_list,
    _plain,
    backbone_outputs,
    pale_dims,
    type_name,
)


# ---------------------------------------------------------------------------------------
# the swap
def _set(tree: dict, path: tuple, value: dict) -> None:
    node = tree
    for k in path[:-1]:
        node = node.setdefault(k, {})
    node.setdefault(path[-1], {}).update(value)


def resolve_config(config: str) -> str:
    """The file of ``config``: a path, or ``mmdet::path`` / ``mmseg::path`` for a config that
    the library installed (under its ``.mim/configs``)."""
    # mmengine resolves ``mmdet::`` only inside Config.fromfile (Config._get_cfg_path is
    # private); the written config's ``_base_`` needs the file itself
    if '::' in config:
        scope, rel = config.split('::', 1)
        spec = importlib.util.find_spec(scope)
        if spec is None or spec.origin is None:
            raise SwapError(f'{config}: {scope} is not installed')
        path = osp.join(osp.dirname(spec.origin), '.mim', 'configs', rel)
    else:
        path = config
    if not osp.isfile(path):
        raise SwapError(f'config not found: {path}')
    return path


def swap_backbone(cfg, arch: Union[str, dict] = 'tiny', pretrained: Optional[str] = None,
                  out_indices: Optional[Sequence[int]] = None) -> Swap:
    """The overrides that put a Pale backbone of ``arch`` into ``cfg`` (a Config or a path).

    Args:
        cfg: the mmdet/mmseg config (mmengine ``Config``, or a file name).
        arch: Pale variant (``'tiny'``, ``'small'``, ``'base'`` or an arch dict).
        pretrained: Pale's ImageNet checkpoint (path or URL) for the backbone's init_cfg;
            None trains it from scratch.
        out_indices: the Pale stages that stand for the old backbone's outputs, one per
            output, where it cannot tell them itself.

    Raises:
        SwapError: naming the key to set by hand.
    """
    from mmengine.config import Config
    if isinstance(cfg, str):
        cfg = Config.fromfile(cfg)
    model = cfg.get('model')
    if not isinstance(model, dict) or not isinstance(model.get('backbone'), dict):
        raise SwapError('the config has no model.backbone to replace')
    changes = []
    dims = pale_dims(arch)
    arch_name = arch if isinstance(arch, str) else 'custom'
    backbone = model['backbone']
    old_name = type_name(backbone.get('type'))

    # the old outputs, as Pale stages
    if out_indices is not None:
        levels = [int(i) for i in out_indices]
        n_old = len(backbone_outputs(backbone)) if old_name in BACKBONES else len(levels)
        if len(levels) != n_old or any(not 0 <= i < 4 for i in levels):
            raise SwapError(f'--out-indices {levels}: give one Pale stage (0..3) for each of '
                            f'the {n_old} outputs of {old_name}')
        outputs = [(lv, PALE_STRIDES[lv]) for lv in levels]
    else:
        outputs = backbone_outputs(backbone)
    num_inputs = len(outputs)
    scope = cfg.get('default_scope') or ('mmseg' if 'decode_head' in model else 'mmdet')
    consumers = _consumers(model, num_inputs, scope)
    read = sorted({p for _, c in consumers for p in c.reads})
    levels = [outputs[p][0] for p in read]
    if len(set(levels)) != len(levels) or levels != sorted(levels):
        raise SwapError(f'the outputs read ({read}) do not map to distinct Pale stages in order '
                        f'({levels}); give model.backbone.out_indices and the in_channels by hand')
    if levels[-1] != 3:
        raise SwapError(
            f'nothing reads Pale stage 3 (the neck and heads read stages {levels}): its blocks '
            'would run without a use and without gradients (DDP stops on unused parameters). '
            'Set model.backbone.arch with fewer stages by hand')
    position = {p: i for i, p in enumerate(read)}
    channels = {p: dims[outputs[p][0]] for p in read}
    strides = {p: (outputs[p][1], PALE_STRIDES[outputs[p][0]]) for p in read}

    new_backbone = dict(_delete_=True, type='PaleTransformer', arch=copy.deepcopy(arch),
                        drop_path_rate=backbone.get('drop_path_rate',
                                                    DEFAULT_DROP_PATH.get(arch_name, 0.2)),
                        out_indices=tuple(levels))
    if backbone.get('with_cp'):
        new_backbone['with_cp'] = True
    new_backbone['init_cfg'] = dict(type='Pretrained', checkpoint=pretrained) \
        if pretrained else None
    overrides = dict(model=dict(backbone=new_backbone))
    changes.append(
        f'model.backbone: {old_name} -> PaleTransformer arch={arch_name!r} '
        f'(channels {dims}), out_indices={tuple(levels)}'
        + (f' (the old outputs {[p for p in range(num_inputs) if p not in read]} are read '
           'by nothing and dropped)' if len(read) < num_inputs else '')
        + f", drop_path_rate={new_backbone['drop_path_rate']}"
        + ('' if 'drop_path_rate' in backbone else ' (Swin\'s value; the old backbone had none)'))
    changes.append('model.backbone.init_cfg: ' + (
        f'Pale weights from {pretrained}' if pretrained else
        'None: Pale trains from scratch (give ImageNet weights with --pretrained)'))
    if backbone.get('frozen_stages', -1) not in (-1, None):
        changes.append(f"model.backbone: the old backbone froze frozen_stages="
                       f"{backbone['frozen_stages']}; Pale trains all its stages (set "
                       'model.backbone.frozen_stages to freeze)')
    moved = [(p, s) for p, s in strides.items() if s[0] != s[1]]
    if moved:
        if model.get('decode_head') is None:
            raise SwapError(
                f'the old backbone gives strides {[s[0] for _, s in moved]} where Pale gives '
                f'{[s[1] for _, s in moved]} (a dilated backbone); the anchors and heads of a '
                'detector depend on them: adapt the config by hand')
        changes.append(
            f'strides: Pale gives {[s[1] for _, s in moved]} where the dilated {old_name} gave '
            f'{[s[0] for _, s in moved]}: the heads read coarser maps (mmseg resizes the '
            'logits to the labels)')

    for path, c in consumers:
        new = c.rewrite(position, channels, strides)
        if len(path) == 2:  # an entry of a list: the whole list is written
            lst = overrides['model'].setdefault(path[0], [_plain(x) for x in model[path[0]]])
            _merge(lst[path[1]], new)
        else:
            _set(overrides['model'], path, new)
        key = 'model.' + '.'.join(str(p) for p in path)
        flat = _flatten(new)
        shown = ', '.join(f'{k}={_plain(v)}' for k, v in flat.items())
        was = ', '.join(f'{k}={_plain(_lookup(c.cfg, k))}' for k in flat)
        changes.append(f'{key} ({c.name}): {shown} (was {was})')

    # normalisation: Pale's ImageNet weights see RGB with ImageNet statistics
    pre = model.get('data_preprocessor')
    if not isinstance(pre, dict):
        raise SwapError('model.data_preprocessor is not set; give it RGB ImageNet statistics '
                        f"by hand ({IMAGENET_RGB})")
    wanted = dict(IMAGENET_RGB, bgr_to_rgb=True)
    if 'rgb_to_bgr' in pre:
        wanted['rgb_to_bgr'] = False
    if any(_plain(pre.get(k)) != v for k, v in wanted.items()):
        overrides['model']['data_preprocessor'] = wanted
        changes.append(f"model.data_preprocessor: mean {_plain(pre.get('mean'))}, std "
                       f"{_plain(pre.get('std'))}, bgr_to_rgb={pre.get('bgr_to_rgb', False)} -> "
                       'RGB ImageNet mean/std (the statistics Pale is trained with)')
    if model.get('pretrained') is not None:
        overrides['model']['pretrained'] = None
        changes.append(f"model.pretrained: {model['pretrained']} (the old backbone's weights, "
                       'which mmseg hands to the backbone) -> None')

    # optimizer
    optim = cfg.get('optim_wrapper') or {}
    paramwise = optim.get('paramwise_cfg') or {}
    if type_name(optim.get('constructor', '')) == 'LearningRateDecayOptimizerConstructor':
        overrides['optim_wrapper'] = dict(constructor='PaleLayerDecayOptimizerConstructor')
        n = paramwise.get('num_layers')
        changes.append(
            'optim_wrapper.constructor: LearningRateDecayOptimizerConstructor -> '
            'PaleLayerDecayOptimizerConstructor (the same decay_rate, decay_type'
            + (f' and num_layers={n}: the lr at the stem stays decay_rate^{n + 1}, Pale\'s '
               f'{sum(pale_depths(arch))} blocks spread over {n} layer ids)' if n else ')'))
    elif paramwise.get('custom_keys'):
        keys, key_changes = rewrite_custom_keys(_plain(paramwise['custom_keys']), arch)
        if key_changes:
            overrides['optim_wrapper'] = dict(
                paramwise_cfg=dict(custom_keys=dict(_delete_=True, **keys)))
            changes += key_changes

    imports = _plain(cfg.get('custom_imports') or {})
    names = _as_list(imports.get('imports', []))
    custom_imports = dict(imports=names + ['pale_mm'] * ('pale_mm' not in names),
                          allow_failed_imports=False)
    return Swap(overrides, changes, custom_imports)


def pale_depths(arch) -> List[int]:
    from ..models.pale_transformer import check_args
    return list(check_args(arch=arch)['arch']['depths'])


def _merge(base: dict, new: dict) -> None:
    # a head inside a list (mmseg's auxiliary heads): an override replaces a list entry whole
    # (merge_from_dict), so the list is written with the head merged here; mmengine's
    # ConfigDict.merge is not in mmengine 0.7.1
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def _lookup(cfg: dict, dotted: str):
    for k in dotted.split('.'):
        cfg = cfg.get(k) if isinstance(cfg, dict) else None
    return cfg


def _flatten(d: dict, prefix: str = '') -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f'{prefix}{k}.'))
        else:
            out[f'{prefix}{k}'] = v
    return out


def apply_swap(cfg, arch='tiny', pretrained=None, out_indices=None) -> Swap:
    """Swap the backbone of ``cfg`` (an mmengine Config, old-style or pure-Python) in place;
    returns the :class:`Swap` (its ``changes`` say what changed)."""
    swap = swap_backbone(cfg, arch, pretrained, out_indices)
    cfg.merge_from_dict(swap.overrides)
    cfg.custom_imports = swap.custom_imports
    import pale_mm  # noqa: F401  registers PaleTransformer where the config builds it
    return swap
