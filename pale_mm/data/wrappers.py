"""The datasets inside mmengine's dataset wrappers, for a dataset config and a built dataset."""


def leaf_datasets(dataset):
    """Yield the datasets that read files, under any wrappers (``ConcatDataset``'s
    ``datasets``, ``RepeatDataset``'s, ``ClassBalancedDataset``'s and mmdet's
    ``MultiImageMixDataset``'s ``dataset``), of a config (a dict) or of a built dataset."""
    if isinstance(dataset, dict):
        inner, many = dataset.get('dataset'), dataset.get('datasets')
    else:
        inner, many = getattr(dataset, 'dataset', None), getattr(dataset, 'datasets', None)
    if many is not None:
        for d in many:
            yield from leaf_datasets(d)
    elif inner is not None:
        yield from leaf_datasets(inner)
    else:
        yield dataset
