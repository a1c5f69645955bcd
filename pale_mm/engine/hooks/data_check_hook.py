"""DataCheckHook: every sample is read through
:class:`pale_mm.data.checks.CheckedPipeline`, so that a broken file or an out-of-range label
names itself instead of failing deep inside torch; a segmentor's heads are held to the
classes of its training data."""
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from ...data.checks import CheckedPipeline, DataError
from ...data.wrappers import leaf_datasets
from ..model_wrappers import unwrapped_model


def _seg_classes(dataset):
    """(num_classes, ignore_index) of an mmseg dataset, else (None, 255)."""
    try:
        from mmseg.datasets import BaseSegDataset
    except ImportError:  # pragma: no cover
        return None, 255
    if isinstance(dataset, BaseSegDataset):
        return len(dataset.metainfo.get('classes') or ()), getattr(dataset, 'ignore_index', 255)
    return None, 255


def wrap_dataset_pipelines(dataset) -> None:
    """Read the samples of ``dataset`` (and of the datasets it wraps) through
    :class:`CheckedPipeline`; label maps of mmseg datasets are held to their classes."""
    for leaf in leaf_datasets(dataset):
        pipeline = getattr(leaf, 'pipeline', None)
        if pipeline is None or isinstance(pipeline, CheckedPipeline):
            continue
        num_classes, ignore_index = _seg_classes(leaf)
        leaf.pipeline = CheckedPipeline(pipeline, num_classes, ignore_index)


@HOOKS.register_module()
class DataCheckHook(Hook):
    """Read every sample through :class:`CheckedPipeline` (train, val and test), and check
    that a segmentor's heads have as many classes as its training data.

    ``tools/train.py`` and ``tools/test.py`` wrap the pipelines as each data loader is built
    (:func:`pale_mm.engine.runner.build_runner`), before any worker process starts. In a config run
    by other tools this hook wraps them when training, validation or testing begins, which
    is too late for worker processes an iteration-based loop has already started.
    """

    priority = 'VERY_HIGH'

    def before_train(self, runner) -> None:
        wrap_dataset_pipelines(runner.train_dataloader.dataset)
        self._check_heads(runner)

    def before_val(self, runner) -> None:
        wrap_dataset_pipelines(runner.val_dataloader.dataset)

    def before_test(self, runner) -> None:
        wrap_dataset_pipelines(runner.test_dataloader.dataset)

    @staticmethod
    def _check_heads(runner) -> None:
        model = unwrapped_model(runner.model)
        for dataset in leaf_datasets(runner.train_dataloader.dataset):
            num_classes, _ = _seg_classes(dataset)
            if not num_classes:
                continue
            for name in ('decode_head', 'auxiliary_head'):
                heads = getattr(model, name, None)
                for i, head in enumerate(heads if isinstance(heads, torch.nn.ModuleList)
                                         else [heads]):
                    n = getattr(head, 'num_classes', None)
                    if n is not None and n != num_classes:
                        key = f'model.{name}' + (f'.{i}' if isinstance(
                            heads, torch.nn.ModuleList) else '')
                        raise DataError(
                            f'the training data has {num_classes} classes '
                            f'(train_dataloader.dataset.metainfo.classes) but {key}.num_classes '
                            f'is {n}; set {key}.num_classes={num_classes} (or the classes of '
                            'the dataset) so that they agree')
            return
