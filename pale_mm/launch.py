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


def run_errors() -> tuple:
    """Errors a run can meet once started whose message says all (the file, the key, the
    fix): the tools print them without a traceback."""
    from .checkpoint import CheckpointMismatchError, UnsafeCheckpointError
    from .data.checks import DataError
    from .models.pale_transformer import PaleConfigError
    return DataError, UnsafeCheckpointError, CheckpointMismatchError, PaleConfigError


def error_text(e: BaseException) -> str:
    return getattr(e, 'summary', None) or str(e)


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


def prepare_run(args, train: bool):
    """Config of ``args.config`` with ``--cfg-options``, launcher and work dir applied, its
    backbone arguments checked and pale_mm's hooks added (:mod:`pale_mm.hooks`)."""
    from .hooks import add_run_hooks
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    cfg = load_config(args.config, args.cfg_options)
    check_model(cfg)
    add_run_hooks(cfg, train=train)
    setup_distributed(cfg, args.launcher)
    cfg.work_dir = default_work_dir(cfg, args.config, args.work_dir)
    return cfg


def check_model(cfg) -> None:
    """Every ``PaleTransformer`` in the model config gets its arguments checked before
    anything is built or written (misspelt names, out_indices out of range, ...)."""
    from .models.pale_transformer import PaleConfigError, check_config

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
    if 'runner_type' in cfg:
        runner = RUNNERS.build(cfg)
    else:
        runner = _checked_data_runner().from_cfg(cfg)
    _test_json_on_rank0_only(runner)
    return runner


def _checked_data_runner():
    """mmengine's Runner whose data loaders read their samples through
    :class:`pale_mm.data.checks.CheckedPipeline`, wrapped as each loader is built (before an
    iteration-based loop starts its worker processes)."""
    from mmengine.runner import Runner

    from .hooks import wrap_dataset_pipelines

    class CheckedDataRunner(Runner):
        @staticmethod
        def build_dataloader(dataloader, seed=None, diff_rank_seed=False):
            loader = Runner.build_dataloader(dataloader, seed=seed,
                                             diff_rank_seed=diff_rank_seed)
            wrap_dataset_pipelines(loader.dataset)
            return loader

    return CheckedDataRunner


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
    """Fail at once, naming the missing path, the expected layout and the option to change,
    or what is wrong inside the annotation files (:mod:`pale_mm.data.checks`)."""
    from .data.checks import DataError, check_dataset_files
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
            # what the files hold: valid annotation files, listed images, label maps
            try:
                check_dataset_files(ds, f'{loader}.dataset', cfg.get('default_scope'))
            except DataError as e:
                raise LaunchError(e.summary) from None
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


CHECKPOINT_PATTERNS = ('epoch_*.pth', 'iter_*.pth')


def checkpoints_in(work_dir: str):
    """Checkpoints of a work dir (``epoch_*.pth``, ``iter_*.pth``), newest (highest epoch /
    iteration) first; none for a work dir that does not exist."""
    import glob
    import re
    found = []
    for pattern in CHECKPOINT_PATTERNS:
        for path in glob.glob(osp.join(work_dir, pattern)):
            m = re.search(r'_(\d+)\.pth$', path)
            if m:
                found.append((int(m.group(1)), path))
    return [p for _, p in sorted(found, reverse=True)]


def find_resume_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint ``--resume`` (without a path) continues from: the one
    ``last_checkpoint`` names if it is complete, else the newest complete one in the work
    dir (a run killed at the wrong moment, or copied over incompletely). Temporary files of
    killed saves are removed."""
    import warnings

    from mmengine.runner import find_latest_checkpoint

    from .checkpoint import is_complete_checkpoint, remove_stale_tmp_files
    if not osp.isdir(work_dir):
        return None
    for path in remove_stale_tmp_files(work_dir):
        warnings.warn(f'removed {path}, the unfinished save of a killed run')
    marker = osp.join(work_dir, 'last_checkpoint')
    named = find_latest_checkpoint(work_dir) or None  # what last_checkpoint names
    if named and not osp.isabs(named) and not osp.exists(named):
        named = osp.join(work_dir, osp.basename(named))
    if named and is_complete_checkpoint(named):
        return named
    for path in checkpoints_in(work_dir):
        if is_complete_checkpoint(path):
            if named:
                warnings.warn(f'{marker} names {named}, which is missing or incomplete; '
                              f'resuming from {path}, the newest complete checkpoint')
            return path
    return None


def guard_work_dir(work_dir: str) -> None:
    """A new (not resumed) training run must not overwrite an earlier run's checkpoints."""
    found = checkpoints_in(work_dir)
    if found:
        names = ', '.join(osp.basename(p) for p in found[:3])
        raise LaunchError(
            f'work dir {work_dir} already holds checkpoints of an earlier run ({names}'
            f'{", ..." if len(found) > 3 else ""}); a new run would overwrite them. Continue '
            'that run with --resume, or give this one another --work-dir.')


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
    """The metric that writes ``--out``: into a temporary file, renamed over ``out_file``
    only once complete (a failed or killed test leaves an earlier file as it was)."""
    if scope == 'mmdet':
        from mmdet.evaluation import DumpDetResults as base
    else:
        from mmengine.evaluator import DumpResults as base

    from .checkpoint import tmp_path_beside

    class AtomicDump(base):
        def compute_metrics(self, results):
            final = self.out_file_path
            os.makedirs(osp.dirname(osp.abspath(final)), exist_ok=True)
            tmp = tmp_path_beside(osp.abspath(final)) + '.pkl'  # the suffix picks pickle
            self.out_file_path = tmp
            try:
                metrics = super().compute_metrics(results)
                os.replace(tmp, final)
            finally:
                self.out_file_path = final
                if osp.exists(tmp):
                    os.unlink(tmp)
            return metrics

    return AtomicDump(out_file_path=out_file)


def atomic_coco_results(runner) -> None:
    """mmdet's CocoMetric writes its result files (``outfile_prefix``.bbox.json, .segm.json)
    in place; here into temporary names, renamed once each file is complete."""
    from .checkpoint import tmp_path_beside
    for metric in getattr(runner.test_evaluator, 'metrics', []):
        if not hasattr(metric, 'results2json') or getattr(metric, '_pale_atomic', False):
            continue
        original = metric.results2json

        def results2json(results, outfile_prefix, _original=original):
            os.makedirs(osp.dirname(osp.abspath(outfile_prefix)), exist_ok=True)
            tmp_prefix = tmp_path_beside(osp.abspath(outfile_prefix))
            files = _original(results, tmp_prefix)
            for key, path in list(files.items()):
                final = outfile_prefix + path[len(tmp_prefix):]
                if osp.exists(path):  # one file may stand for two keys (bbox, proposal)
                    os.replace(path, final)
                files[key] = final
            return files

        metric.results2json = results2json
        metric._pale_atomic = True


def seg_output_dir_swap(runner, out_dir: str):
    """mmseg writes ``--out`` label maps one by one while testing; they go into
    ``out_dir.partial-<timestamp>`` and replace ``out_dir`` only after the whole test set
    (an earlier ``out_dir`` survives a failed test). Returns the function that swaps."""
    import shutil

    from mmengine.dist import barrier, is_main_process
    partial = f'{out_dir.rstrip("/")}.partial-{runner.timestamp}'
    for metric in runner.test_evaluator.metrics:
        if hasattr(metric, 'output_dir'):
            metric.output_dir = partial
    os.makedirs(partial, exist_ok=True)

    def swap():
        barrier()
        if not is_main_process():
            return
        old = None
        if osp.exists(out_dir):
            old = f'{out_dir.rstrip("/")}.old-{runner.timestamp}'
            os.replace(out_dir, old)
        os.replace(partial, out_dir)
        if old:
            shutil.rmtree(old)

    def discard():
        if is_main_process() and osp.isdir(partial):
            shutil.rmtree(partial)

    swap.discard = discard
    return swap
