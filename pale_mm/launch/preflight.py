"""Checks before a run starts: data, pretrained checkpoints and other input files, each
failing at once with a message that names the path, the config key and the fix."""
import os.path as osp
import warnings

from ..checkpoint import is_url
from ..errors import LaunchError, PaleError

LAYOUT_HINTS = {
    'CocoDataset': ('data/coco/annotations/instances_{train,val}2017.json and the images in '
                    'data/coco/{train,val}2017/'),
    'ADE20KDataset': ('data/ade/ADEChallengeData2016/images/{training,validation}/*.jpg and '
                      'data/ade/ADEChallengeData2016/annotations/{training,validation}/*.png'),
    'ImageNet': 'data/imagenet/{train,val}/ with one folder per class (or meta/*.txt lists)',
}


def check_datasets(cfg, loaders) -> None:
    """Fail at once, naming the missing path, the expected layout and the option to change,
    or what is wrong inside the annotation files (:mod:`pale_mm.data.checks`)."""
    from ..data.checks import DataError, check_dataset_files
    from ..data.wrappers import leaf_datasets
    for loader in loaders:
        loader_cfg = cfg.get(loader)
        if not loader_cfg or 'dataset' not in loader_cfg:
            continue
        for ds in leaf_datasets(loader_cfg['dataset']):
            root = ds.get('data_root') or ''
            if is_url(root):
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
                if sub and isinstance(sub, str) and not is_url(sub):
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
            if ann and not is_url(ann) and not osp.exists(ann):
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
    from ..checkpoint import resolve_checkpoint_url
    for key, path in list(_pretrained_checkpoints(cfg.model)):
        if is_url(path):  # a URL: its scheme and model-zoo name, without the network
            try:
                resolve_checkpoint_url(path)
            except PaleError as e:
                raise LaunchError(f'{key}.checkpoint: {e}') from None
            continue
        if osp.exists(osp.expanduser(path)):
            check_file(osp.expanduser(path), f'pretrained checkpoint ({key})')
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
    """A local checkpoint must exist and be whole (cut short, damaged, a record missing, a
    directory...: :func:`pale_mm.checkpoint.check_checkpoint_file`) before anything is built;
    a trial load with the tensors mapped from the file, not read, costs little."""
    from ..checkpoint import check_checkpoint_file
    if is_url(path):
        return
    if not osp.exists(path):
        raise LaunchError(f'{what} not found: {path}')
    check_checkpoint_file(path, what, trial_load=True)
