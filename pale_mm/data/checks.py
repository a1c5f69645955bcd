"""Data checks with messages that name the file, the key and the fix.

Two kinds:

* before a run (:func:`check_dataset_files`, called by the tools for each dataset):
  annotation files that are not valid JSON or lack ``images``/``annotations``/``categories``;
  images listed in an annotation file (or in an mmpretrain ``meta/*.txt`` list) that are
  missing on disk; segmentation images without their label map.
* while a run reads its samples (:class:`CheckedPipeline`, installed by
  :class:`pale_mm.engine.hooks.DataCheckHook`): a file that disappeared or cannot be decoded, and
  label maps holding values outside the dataset's classes (which would otherwise surface as
  an index error deep inside the loss).

Both raise :class:`DataError`; ``tools/train.py`` and ``tools/test.py`` print its message and
exit without a traceback.
"""
import json
import os
import os.path as osp
from typing import Dict, Iterable, List, Optional

from ..checkpoint import is_url
from ..errors import PaleError

SHOW = 5  # how many offending files a message lists


class DataError(PaleError, RuntimeError):
    """A dataset file is missing, unreadable or inconsistent; the message says which."""


def _listing(paths: List[str], total: Optional[int] = None) -> str:
    total = len(paths) if total is None else total
    shown = ', '.join(paths[:SHOW])
    return shown + (f', ... ({total} in all)' if total > SHOW else '')


def _join(root: str, path: str) -> str:
    return path if osp.isabs(path) or not root else osp.join(root, path)


# ---------------------------------------------------------------------------------------
# before the run
def load_coco_json(path: str, where: str) -> Dict:
    """Parse a COCO-format annotation file; :class:`DataError` names what is wrong."""
    try:
        with open(path, 'rb') as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(
            f'{path} ({where}) is not valid JSON: {e.msg} at line {e.lineno}, column '
            f'{e.colno}. Is the file truncated (an interrupted download or copy)? Fetch it '
            'again.') from None
    except UnicodeDecodeError as e:
        raise DataError(f'{path} ({where}) is not a JSON text file ({e.reason}); point '
                        f'{where} at the COCO annotation .json') from None
    except OSError as e:
        raise DataError(f'{path} ({where}) cannot be read: {e.strerror}') from None
    if not isinstance(data, dict):
        raise DataError(f'{path} ({where}) holds a JSON {type(data).__name__}, not the object '
                        'of a COCO annotation file (with images, annotations, categories)')
    for key in ('images', 'annotations', 'categories'):
        if not isinstance(data.get(key), list):
            problem = 'has no' if key not in data else f'has a {type(data[key]).__name__} as'
            raise DataError(
                f"{path} ({where}) {problem} '{key}' list; a COCO instances file holds "
                "'images', 'annotations' and 'categories' lists. Is it a COCO instances file "
                '(and not, say, a captions or results file)?')
    for i, image in enumerate(data['images']):
        if not isinstance(image, dict) or 'file_name' not in image or 'id' not in image:
            raise DataError(f"{path} ({where}): images[{i}] lacks 'id' or 'file_name'")
    return data


def _missing_files(paths: Iterable[str]) -> List[str]:
    return [p for p in paths if not osp.isfile(p)]


def check_coco_dataset(ds: Dict, where: str) -> None:
    root = ds.get('data_root') or ''
    ann = _join(root, ds['ann_file'])
    data = load_coco_json(ann, f'{where}.ann_file')
    prefix = (ds.get('data_prefix') or {}).get('img', '')
    img_dir = _join(root, prefix)
    files = [osp.join(img_dir, im['file_name']) for im in data['images']]
    missing = _missing_files(files)
    if missing:
        raise DataError(
            f'{len(missing)} of the {len(files)} images listed in {ann} are missing on disk: '
            f'{_listing(missing)}. Copy them into {img_dir or "."}, or point '
            f'{where}.data_prefix.img at the folder that holds them.')


def _class_default(scope: str, type_name: str, arg: str):
    """Default of ``arg`` in the registered dataset class ``type_name`` (or None)."""
    import importlib
    import inspect
    try:
        registry = importlib.import_module(f'{scope}.registry').DATASETS
        cls = registry.get(type_name)
        return inspect.signature(cls.__init__).parameters[arg].default
    except Exception:  # unknown class or argument: no check
        return None


def check_seg_dataset(ds: Dict, where: str, scope: str) -> None:
    """Every image of a folder-layout segmentation dataset has its label map."""
    root = ds.get('data_root') or ''
    prefix = ds.get('data_prefix') or {}
    img_dir, seg_dir = _join(root, prefix.get('img_path', '')), _join(
        root, prefix.get('seg_map_path', ''))
    if not (osp.isdir(img_dir) and osp.isdir(seg_dir)) or img_dir == seg_dir:
        return
    img_suffix = ds.get('img_suffix') or _class_default(scope, ds.get('type'), 'img_suffix')
    seg_suffix = ds.get('seg_map_suffix') or _class_default(scope, ds.get('type'),
                                                            'seg_map_suffix')
    if not isinstance(img_suffix, str) or not isinstance(seg_suffix, str):
        return
    missing = []
    for dirpath, _, names in os.walk(img_dir):
        for name in sorted(names):
            if name.endswith(img_suffix):
                rel = osp.relpath(osp.join(dirpath, name), img_dir)
                label = osp.join(seg_dir, rel[:-len(img_suffix)] + seg_suffix)
                if not osp.isfile(label):
                    missing.append(label)
    if missing:
        raise DataError(
            f'{len(missing)} images under {img_dir} have no label map under {seg_dir}: '
            f'{_listing(missing)} are missing. Add them, or remove the images without labels.')


def check_list_dataset(ds: Dict, where: str) -> None:
    """mmpretrain datasets with an annotation list (``meta/train.txt``: path label)."""
    root = ds.get('data_root') or ''
    ann = ds.get('ann_file') or ''
    split = ds.get('split') or ''
    if not ann and split:
        candidate = osp.join(root, 'meta', f'{split}.txt')
        ann = candidate if osp.isfile(candidate) else ''
    elif ann:
        ann = _join(root, ann)
    if not ann or not ann.endswith('.txt') or not osp.isfile(ann):
        return
    prefix = ds.get('data_prefix') or split
    if isinstance(prefix, dict):
        prefix = prefix.get('img_path', '')
    img_dir = _join(root, prefix)
    files = []
    with open(ann) as f:
        for line in f:
            if line.strip():
                files.append(osp.join(img_dir, line.strip().rsplit(' ', 1)[0]))
    missing = _missing_files(files)
    if missing:
        raise DataError(f'{len(missing)} of the {len(files)} images listed in {ann} are missing '
                        f'under {img_dir}: {_listing(missing)}')


def check_dataset_files(ds: Dict, where: str, scope: str) -> None:
    """The pre-run checks for one (innermost) dataset config (see the module docstring)."""
    ann = ds.get('ann_file') or ''
    if is_url(ds.get('data_root') or '') or is_url(ann):
        return
    if scope == 'mmdet' and str(ann).endswith('.json'):
        check_coco_dataset(ds, where)
    elif scope == 'mmseg' and not ann:
        check_seg_dataset(ds, where, scope)
    elif scope == 'mmpretrain':
        check_list_dataset(ds, where)


# ---------------------------------------------------------------------------------------
# while reading samples
def _decodable(path: str, unchanged: bool = False) -> bool:
    import cv2
    import numpy as np
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return False
    if data.size == 0:
        return False
    flag = cv2.IMREAD_UNCHANGED if unchanged else cv2.IMREAD_COLOR
    if cv2.imdecode(data, flag) is not None:
        return True
    try:  # what cv2 cannot read, PIL may (mmseg reads label maps with pillow)
        from PIL import Image
        with Image.open(path) as im:
            im.load()
        return True
    except Exception:
        return False


def describe_sample_failure(info: Dict, error: BaseException) -> str:
    """Which file of a sample broke its pipeline, and what to do about it."""
    files = [('image', info.get('img_path'), False),
             ('label map', info.get('seg_map_path'), True)]
    for what, path, unchanged in files:
        if not path or not isinstance(path, str) or is_url(path):
            continue
        if not osp.exists(path):
            return (f'{what} {path} is missing on disk (the dataset lists it). Restore it, or '
                    'remove it from the annotations.')
        if not _decodable(path, unchanged):
            return (f'{what} {path} cannot be decoded: it is empty, truncated or not an image. '
                    'Replace it with a good copy, or remove it from the dataset.')
    name = info.get('img_path') or info.get('sample_idx', '?')
    return f'sample {name}: {type(error).__name__}: {error}'


class CheckedPipeline:
    """Wraps a dataset's pipeline: a failing sample raises :class:`DataError` naming its
    file; label maps are held to ``num_classes`` (``ignore_index`` allowed)."""

    def __init__(self, pipeline, num_classes: Optional[int] = None, ignore_index: int = 255):
        self.pipeline = pipeline
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def __getattr__(self, name):  # transforms, __repr__ users, ...
        if name == 'pipeline':
            raise AttributeError(name)
        return getattr(self.pipeline, name)

    def __call__(self, info: Dict):
        # the transforms fill ``info`` in place; keep what names the files
        names = {k: info.get(k) for k in ('img_path', 'seg_map_path', 'sample_idx',
                                          'label_map')}
        try:
            out = self.pipeline(info)
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001  every failure gets the file's name
            raise DataError(describe_sample_failure(names, e)) from e
        if out is not None and self.num_classes is not None:
            self._check_labels(out, names)
        return out

    def _check_labels(self, out: Dict, names: Dict) -> None:
        samples = out.get('data_samples') if isinstance(out, dict) else None
        for sample in samples if isinstance(samples, list) else [samples]:
            seg = getattr(sample, 'gt_sem_seg', None)
            if seg is None:
                continue
            labels = seg.data
            bad = (labels >= self.num_classes) & (labels != self.ignore_index)
            if bool(bad.any()):
                values = sorted({int(v) for v in labels[bad].unique()[:20]})
                reduce = bool(sample.metainfo.get('reduce_zero_label', False))
                raw = [v + 1 for v in values] if reduce else values
                label_map = names.get('label_map') or {}
                if label_map:  # metainfo.classes picks some of the dataset's own classes
                    first = 1 if reduce else 0
                    allowed = (f'the dataset\'s class ids {first}..{len(label_map) - 1 + first}'
                               ', those of classes outside metainfo.classes counting as '
                               'unlabelled')
                elif reduce:
                    allowed = f'1..{self.num_classes}, with 0 and 255 = unlabelled'
                else:
                    allowed = f'0..{self.num_classes - 1}, with {self.ignore_index} = ignore'
                raise DataError(
                    f"label map {names.get('seg_map_path')} holds values {raw}, outside the "
                    f'{self.num_classes} classes of the dataset (allowed in the file: '
                    f'{allowed}). Fix the label map, or give the dataset (metainfo.classes) '
                    'and the heads (num_classes) the right number of classes.')
