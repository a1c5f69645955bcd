"""Reading a config for pale_mm's tools and applying their command-line options.

One entry for mmdet, mmseg and mmpretrain configs: the config's ``default_scope`` decides
which library builds the run.
"""
import os
import os.path as osp
from typing import Optional

import torch
from mmengine.logging import print_log

from ..errors import LaunchError

SCOPES = ('mmdet', 'mmseg', 'mmpretrain')


def load_config(path: str, cfg_options: Optional[dict] = None):
    """Read a config, apply ``--cfg-options`` and make sure ``pale_mm`` is imported."""
    from mmengine.config import Config
    if not osp.isfile(path):
        raise LaunchError(f'config file not found: {path}')
    cfg = Config.fromfile(path)
    if cfg_options:
        try:
            cfg.merge_from_dict(cfg_options)
        except (KeyError, TypeError) as e:  # a dict option over a str entry, a bad index
            raise LaunchError(f'--cfg-options do not fit {path}: {e}') from None
    scope = cfg.get('default_scope')
    if scope not in SCOPES:
        raise LaunchError(
            f"{path}: default_scope is {scope!r}; tools/train.py and tools/test.py run "
            f"configs whose default_scope is one of {SCOPES} (inherit from an mmdet, mmseg or "
            "mmpretrain base config, or set default_scope)")
    from mmengine.registry import init_default_scope

    import pale_mm  # noqa: F401  registers PaleTransformer
    init_default_scope(scope)
    return cfg


def add_run_arguments(parser) -> None:
    """The options tools/train.py and tools/test.py share: overrides and launching."""
    from mmengine.config import DictAction
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, key=value (e.g. '
                        'train_dataloader.dataset.data_root=data/my_coco/)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def prepare_run(args, train: bool):
    """Config of ``args.config`` with ``--cfg-options``, launcher and work dir applied, its
    backbone arguments checked and pale_mm's hooks added (:mod:`pale_mm.engine.hooks`)."""
    from .distributed import setup_distributed
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    cfg = load_config(args.config, args.cfg_options)
    check_model(cfg)
    add_run_hooks(cfg, train=train)
    setup_distributed(cfg, args.launcher)
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
        './work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg


def check_model(cfg) -> None:
    """Every ``PaleTransformer`` in the model config gets its arguments checked before
    anything is built or written (misspelt names, out_indices out of range, ...)."""
    from ..models.pale_transformer import PaleConfigError, check_config

    def walk(node, key):
        if isinstance(node, dict):
            if str(node.get('type', '')).split('.')[-1] == 'PaleTransformer':
                try:
                    check_config(node)
                except PaleConfigError as e:
                    raise LaunchError(f'{key}: {e}') from None
            for k, v in node.items():
                walk(v, f'{key}.{k}')
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, f'{key}.{i}')

    walk(cfg.get('model'), 'model')


# ---------------------------------------------------------------------------------------
# command-line options of the tools
def enable_amp(cfg) -> None:
    """``--amp``: mmengine's AmpOptimWrapper (float16 with a dynamic loss scale on CUDA)."""
    if not torch.cuda.is_available():
        raise LaunchError("--amp needs a GPU (mmengine's AmpOptimWrapper is CUDA-only); "
                          'train without --amp on this machine')
    optim = cfg.optim_wrapper
    if optim.get('type', 'OptimWrapper') == 'AmpOptimWrapper':
        return
    if optim.get('type', 'OptimWrapper') != 'OptimWrapper':
        raise LaunchError(f"--amp: optim_wrapper type {optim.get('type')} is not "
                          'OptimWrapper; set AmpOptimWrapper in the config instead')
    optim.type = 'AmpOptimWrapper'
    optim.setdefault('loss_scale', 'dynamic')


def enable_auto_scale_lr(cfg) -> None:
    """``--auto-scale-lr``: scale the learning rate with the total batch size."""
    if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
        raise LaunchError(
            '--auto-scale-lr needs auto_scale_lr=dict(base_batch_size=N) in the config')
    cfg.auto_scale_lr.enable = True


def enable_visualization(cfg, show: bool, show_dir: str, wait_time: float) -> None:
    """``--show`` / ``--show-dir``: draw the predictions (the scope's visualization hook)."""
    hooks = cfg.get('default_hooks', {})
    if 'visualization' not in hooks:
        raise LaunchError('--show/--show-dir need default_hooks.visualization in the config')
    vis = hooks['visualization']
    vis['show'] = show
    vis['wait_time'] = wait_time
    if cfg.default_scope == 'mmpretrain':
        vis['enable'] = True
        vis['out_dir'] = show_dir
        return
    vis['draw'] = True
    if show_dir and cfg.default_scope == 'mmdet':
        vis['test_out_dir'] = show_dir
    elif show_dir:
        cfg.visualizer['save_dir'] = show_dir


def enable_tta(cfg) -> None:
    """``--tta``: wrap the model in the config's ``tta_model``, test with its ``tta_pipeline``."""
    missing = [k for k in ('tta_model', 'tta_pipeline') if k not in cfg]
    if missing:
        raise LaunchError(f'--tta needs {" and ".join(missing)} in the config')
    from mmengine.config import ConfigDict
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    from ..data.wrappers import leaf_datasets
    for dataset in leaf_datasets(cfg.test_dataloader.dataset):
        dataset['pipeline'] = cfg.tta_pipeline


def add_hooks_if_missing(cfg, names) -> None:
    """Append ``dict(type=NAME)`` to ``cfg.custom_hooks`` for each of ``names`` the config
    does not have yet (by type name, with a scope prefix or as a class)."""
    hooks = list(cfg.get('custom_hooks') or [])
    have = {_type_name(h.get('type')) for h in hooks if isinstance(h, dict)}
    hooks += [dict(type=name) for name in names if name not in have]
    cfg.custom_hooks = hooks


def _type_name(t) -> str:
    return t.__name__ if isinstance(t, type) else str(t).rsplit('.', 1)[-1]


def add_run_hooks(cfg, train: bool) -> None:
    """Put :class:`DataCheckHook`, :class:`pale_mm.engine.hooks.CheckpointFitHook` (and for
    training :class:`ExactResumeHook`) into ``cfg.custom_hooks`` unless the config has them
    already."""
    wanted = ['DataCheckHook', 'CheckpointFitHook'] + (['ExactResumeHook'] if train else [])
    add_hooks_if_missing(cfg, wanted)
    print_log(f'pale_mm hooks: {", ".join(wanted)}', logger='current', level=10)


def enable_preemption(cfg) -> None:
    """Add :class:`PreemptionHook` to a training config and let an epoch-based loop
    continue mid-epoch (:class:`ResumableEpochBasedTrainLoop`)."""
    add_hooks_if_missing(cfg, ['PreemptionHook'])
    loop = cfg.get('train_cfg')
    if loop is not None and loop.get('type', 'EpochBasedTrainLoop' if loop.get('by_epoch')
                                     else None) in ('EpochBasedTrainLoop',
                                                    'mmengine.EpochBasedTrainLoop'):
        loop.pop('by_epoch', None)
        loop['type'] = 'ResumableEpochBasedTrainLoop'
