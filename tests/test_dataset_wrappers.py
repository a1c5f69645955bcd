"""The datasets inside mmengine's wrappers: one walk for configs (the checks before a run,
``--tta``) and for built datasets (the per-sample checks)."""
import pytest
from mmengine.dataset import BaseDataset, ConcatDataset, RepeatDataset

from pale_mm.data.checks import CheckedPipeline
from pale_mm.data.wrappers import leaf_datasets
from pale_mm.engine.hooks import wrap_dataset_pipelines
from pale_mm.launch.run_config import enable_tta


def wrapped_config():
    a, b, c = (dict(type='CocoDataset', data_root=f'data/{n}/') for n in 'abc')
    return dict(type='ConcatDataset', datasets=[
        dict(type='RepeatDataset', times=2, dataset=a),
        dict(type='MultiImageMixDataset', dataset=b, pipeline=[dict(type='Mosaic')]),
        c]), (a, b, c)


def test_the_datasets_of_a_config_under_its_wrappers():
    cfg, leaves = wrapped_config()
    assert [d['data_root'] for d in leaf_datasets(cfg)] == ['data/a/', 'data/b/', 'data/c/']
    assert list(leaf_datasets(leaves[0])) == [leaves[0]]  # a plain dataset is its own leaf


class Items(BaseDataset):
    def load_data_list(self):
        return [dict(i=i) for i in range(3)]


def test_built_wrappers_have_their_datasets_pipelines_checked():
    a, b, c = Items(pipeline=[]), Items(pipeline=[]), Items(pipeline=[])
    concat, repeat = ConcatDataset([a, b]), RepeatDataset(c, times=2)
    assert list(leaf_datasets(concat)) == [a, b] and list(leaf_datasets(repeat)) == [c]
    wrap_dataset_pipelines(concat)
    wrap_dataset_pipelines(repeat)
    assert all(isinstance(d.pipeline, CheckedPipeline) for d in (a, b, c))
    assert concat[4]['i'] == 1 and repeat[5]['i'] == 2  # read through the checks


def test_tta_pipeline_goes_to_every_dataset_under_the_wrappers():
    from mmengine.config import Config
    dataset, _ = wrapped_config()
    cfg = Config(dict(model=dict(type='M'), tta_model=dict(type='TTA'),
                      tta_pipeline=[dict(type='TestTimeAug')],
                      test_dataloader=dict(dataset=dataset)))
    enable_tta(cfg)
    pipelines = [d['pipeline'] for d in leaf_datasets(cfg.test_dataloader.dataset)]
    assert pipelines == [[dict(type='TestTimeAug')]] * 3
    assert cfg.model.module == dict(type='M')


@pytest.mark.parametrize('missing', ['tta_model', 'tta_pipeline'])
def test_tta_without_its_config_says_what_is_missing(missing):
    from mmengine.config import Config

    from pale_mm.errors import LaunchError
    parts = dict(model=dict(type='M'), tta_model=dict(type='TTA'), tta_pipeline=[],
                 test_dataloader=dict(dataset=dict(type='D')))
    parts.pop(missing)
    with pytest.raises(LaunchError, match=f'--tta needs {missing}'):
        enable_tta(Config(parts))
