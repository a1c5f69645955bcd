"""What tools/train.py and tools/test.py share: one entry for mmdet, mmseg and mmpretrain
configs (the config's ``default_scope`` decides), checks that fail early with a clear
message, and distributed set-up that also works on machines without GPUs (gloo)."""
import os
import os.path as osp
from typing import Optional

import torch

SCOPES = ('mmdet', 'mmseg', 'mmpretrain')


class LaunchError(RuntimeError):
    """A problem with the config, data or checkpoints found before the run starts."""


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
    import pale_mm  # noqa: F401  registers PaleTransformer and the safe checkpoint loader
    from mmengine.registry import init_default_scope
    init_default_scope(scope)
    return cfg


def setup_distributed(cfg, launcher: str) -> None:
    """Set ``cfg.launcher``; on a machine without GPUs use gloo and CPU DDP.

    mmengine's own distributed set-up calls ``torch.cuda.set_device`` and wraps the model
    with ``device_ids=[LOCAL_RANK]``, neither of which works without a GPU, so the process
    group is started here and DDP is told to keep the model on the CPU.
    """
    cfg.launcher = launcher
    if launcher == 'none' or torch.cuda.is_available():
        return
    import torch.distributed as dist
    env_cfg = cfg.setdefault('env_cfg', {})
    dist_cfg = env_cfg.setdefault('dist_cfg', {})
    dist_cfg['backend'] = 'gloo'
    if launcher == 'slurm':
        raise LaunchError('--launcher slurm needs GPUs; on a CPU machine use '
                          'tools/dist_train.sh (torchrun, gloo)')
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    # torch's SyncBatchNorm is GPU-only (DDP refuses to wrap it on the CPU); mmseg's heads
    # use it, so on CPU each process keeps its own BatchNorm statistics instead
    if _sync_bn_to_bn(cfg.get('model')) and is_main_process():
        import warnings
        warnings.warn('no GPU: SyncBN layers of the model become BN (per-process batch '
                      'statistics when training; testing is unaffected)')
    cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None,
                                 broadcast_buffers=False,
                                 find_unused_parameters=cfg.get('find_unused_parameters',
                                                                False))


def _sync_bn_to_bn(node) -> int:
    """Replace ``type='SyncBN'`` by ``'BN'`` in a config tree; returns how many."""
    count = 0
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
            count += 1
        for v in node.values():
            count += _sync_bn_to_bn(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            count += _sync_bn_to_bn(v)
    return count


def add_run_arguments(parser) -> None:
    """The options tools/train.py and tools/test.py share: overrides and launching."""
    from mmengine.config import DictAction
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, key=value (e.g. '
                        'train_dataloader.dataset.data_root=data/my_coco/)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def prepare_run(args):
    """Config of ``args.config`` with ``--cfg-options``, launcher and work dir applied."""
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    cfg = load_config(args.config, args.cfg_options)
    setup_distributed(cfg, args.launcher)
    cfg.work_dir = default_work_dir(cfg, args.config, args.work_dir)
    return cfg


def default_work_dir(cfg, config_path: str, work_dir: Optional[str]) -> str:
    if work_dir:
        return work_dir
    if cfg.get('work_dir'):
        return cfg.work_dir
    return osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])


def build_runner(cfg):
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    vis = cfg.get('visualizer')
    if isinstance(vis, dict) and vis.get('name'):
        # mmdet/mmseg configs name the visualizer 'visualizer'; mmengine then hands a second
        # run in the same process (tools' main(argv) called twice) the first run's
        # visualizer, which writes the scalars into the first run's work dir. Unnamed, it
        # takes the run's own experiment name.
        vis.pop('name')
    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
    _test_json_on_rank0_only(runner)
    return runner


def _test_json_on_rank0_only(runner) -> None:
    """mmengine 0.10.7's ``LoggerHook.after_test_epoch`` dumps the test metrics to
    ``<work_dir>/<timestamp>/<timestamp>.json`` on every rank, all into the same file, which
    then holds one rank's text partly over another's (invalid json). The other ranks skip it;
    their log messages go nowhere anyway (mmengine logs errors only there)."""
    from mmengine.dist import get_rank
    from mmengine.hooks import LoggerHook
    if get_rank() == 0:
        return
    for hook in runner.hooks:
        if isinstance(hook, LoggerHook):
            hook.after_test_epoch = lambda runner, metrics=None: None


def is_main_process() -> bool:
    return int(os.environ.get('RANK', '0')) == 0


# ---------------------------------------------------------------------------------------
# checks before a run: data and checkpoints, with messages that name the fix
LAYOUT_HINTS = {
    'CocoDataset': ('data/coco/annotations/instances_{train,val}2017.json and the images in '
                    'data/coco/{train,val}2017/'),
    'ADE20KDataset': ('data/ade/ADEChallengeData2016/images/{training,validation}/*.jpg and '
                      'data/ade/ADEChallengeData2016/annotations/{training,validation}/*.png'),
    'ImageNet': 'data/imagenet/{train,val}/ with one folder per class (or meta/*.txt lists)',
}


def _innermost_datasets(dataset_cfg):
    """Yield the leaf dataset configs under wrappers (RepeatDataset, ConcatDataset, ...)."""
    if 'datasets' in dataset_cfg:
        for d in dataset_cfg['datasets']:
            yield from _innermost_datasets(d)
    elif 'dataset' in dataset_cfg:
        yield from _innermost_datasets(dataset_cfg['dataset'])
    else:
        yield dataset_cfg


def _is_remote(path: str) -> bool:
    return '://' in str(path)


def check_datasets(cfg, loaders) -> None:
    """Fail at once, naming the missing path, the expected layout and the option to change."""
    for loader in loaders:
        loader_cfg = cfg.get(loader)
        if not loader_cfg or 'dataset' not in loader_cfg:
            continue
        for ds in _innermost_datasets(loader_cfg['dataset']):
            root = ds.get('data_root') or ''
            if _is_remote(root):
                continue
            paths = []
            if root:
                paths.append(('data_root', root))
            ann = ds.get('ann_file')
            if ann:
                paths.append(('ann_file', ann if osp.isabs(ann) else osp.join(root, ann)))
            prefix = ds.get('data_prefix') or {}
            if isinstance(prefix, str):  # mmpretrain: one image folder
                prefix = {'': prefix}
            if not any(prefix.values()) and ds.get('split'):
                # mmpretrain's ImageNet: split='train' reads the images under data_root/train
                paths.append(('split', osp.join(root, ds['split'])))
            for key, sub in prefix.items():
                if sub and isinstance(sub, str) and not _is_remote(sub):
                    paths.append(('data_prefix' + (f'.{key}' if key else ''),
                                  sub if osp.isabs(sub) else osp.join(root, sub)))
            for key, path in paths:
                if not osp.exists(path):
                    hint = LAYOUT_HINTS.get(ds.get('type'), '')
                    raise LaunchError(
                        f"dataset not found: {path} ({loader}.dataset.{key}). "
                        + (f'Expected layout: {hint}. ' if hint else '')
                        + f'Put the data there (a symlink will do), or point the config '
                        f'elsewhere with --cfg-options {loader}.dataset.data_root=/path/to/data '
                        '(for wrapped datasets, the inner dataset\'s data_root).')
        # evaluators that read the annotations themselves (CocoMetric's ann_file)
        evaluator_key = loader.replace('_dataloader', '_evaluator')
        evaluators = cfg.get(evaluator_key) or []
        for i, ev in enumerate(evaluators if isinstance(evaluators, list) else [evaluators]):
            ann = ev.get('ann_file') if isinstance(ev, dict) else None
            if ann and not _is_remote(ann) and not osp.exists(ann):
                key = evaluator_key + (f'.{i}' if isinstance(evaluators, list) else '')
                raise LaunchError(
                    f'annotation file not found: {ann} ({key}.ann_file, read by the '
                    f"{ev.get('type')} metric). Point it at the annotations of "
                    f'{loader}.dataset with --cfg-options {key}.ann_file=/path/to/ann.json')


def _pretrained_checkpoints(model_cfg, prefix='model'):
    """Yield (key, path) of every local ``Pretrained`` init_cfg in the model config."""
    if isinstance(model_cfg, dict):
        init = model_cfg.get('init_cfg')
        inits = init if isinstance(init, list) else [init]
        for i in inits:
            if isinstance(i, dict) and i.get('type') == 'Pretrained' and i.get('checkpoint'):
                yield f'{prefix}.init_cfg', i['checkpoint']
        for k, v in model_cfg.items():
            if k != 'init_cfg' and isinstance(v, dict):
                yield from _pretrained_checkpoints(v, f'{prefix}.{k}')


def check_pretrained(cfg, resuming: bool) -> None:
    """A missing pretrained checkpoint stops training at once with the way round it.

    When resuming or loading whole-model weights (``load_from``), the pretrained weights
    are overwritten anyway: a missing file is then skipped with a warning instead.
    """
    import warnings
    for key, path in list(_pretrained_checkpoints(cfg.model)):
        if _is_remote(path) or osp.isfile(osp.expanduser(path)):
            continue
        if resuming or cfg.get('load_from'):
            warnings.warn(f'pretrained checkpoint {path} ({key}) not found; not needed since '
                          'the run starts from a full checkpoint')
            _drop_init_cfg(cfg.model, key.split('.')[1:-1])
            continue
        raise LaunchError(
            f'pretrained checkpoint not found: {osp.abspath(osp.expanduser(path))} ({key}). '
            'Download or train it (configs/imagenet) and put it there, point the config at it '
            f'with --cfg-options {key}.checkpoint=/path/to/ckpt.pth, or train from scratch '
            f'with --cfg-options {key}=None')


def _drop_init_cfg(model_cfg, keys) -> None:
    node = model_cfg
    for k in keys:
        node = node[k]
    node['init_cfg'] = None


def check_file(path: str, what: str) -> None:
    if not _is_remote(path) and not osp.isfile(path):
        raise LaunchError(f'{what} not found: {path}')


# ---------------------------------------------------------------------------------------
# options shared by the tools
def enable_amp(cfg) -> None:
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


def enable_visualization(cfg, show: bool, show_dir: str, wait_time: float) -> None:
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
    """Wrap the model in the config's ``tta_model`` and test with its ``tta_pipeline``."""
    missing = [k for k in ('tta_model', 'tta_pipeline') if k not in cfg]
    if missing:
        raise LaunchError(f'--tta needs {" and ".join(missing)} in the config')
    from mmengine.config import ConfigDict
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    dataset = cfg.test_dataloader.dataset
    while 'dataset' in dataset:
        dataset = dataset['dataset']
    dataset.pipeline = cfg.tta_pipeline


def dump_metric(scope: str, out_file: str):
    if scope == 'mmdet':
        from mmdet.evaluation import DumpDetResults
        return DumpDetResults(out_file_path=out_file)
    from mmengine.evaluator import DumpResults
    return DumpResults(out_file_path=out_file)
