"""tools/visualize_pale.py and tools/benchmark.py run and report what they claim."""
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tools'))


def test_visualize_pale(tmp_path):
    import visualize_pale
    out = tmp_path / 'fig.png'
    counts = visualize_pale.main(['--size', '28', '--query', '9', '12', '--out', str(out)])
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert not list(tmp_path.glob('*.tmp*'))
    swin, cswin, pale = counts.values()
    assert swin == 7 * 7
    assert cswin == 2 * 28 + 2 * 28 - 2 * 2
    assert pale == 7 * 28 + 7 * 28 - 7 * 7  # s_r * W + s_c * H - s_r * s_c


def test_visualize_rejects_query_outside(tmp_path):
    import visualize_pale
    with pytest.raises(SystemExit):
        visualize_pale.main(['--size', '14', '--query', '20', '3', '--out',
                             str(tmp_path / 'x.png')])


def test_benchmark_table(tmp_path, capsys):
    """A tiny run: both models, every mode, ratios and the matmul fraction printed."""
    import benchmark
    out = tmp_path / 'bench.json'
    benchmark.main(['--sizes', '64', '96', '--batch', '1', '--repeats', '1', '--warmup', '0',
                    '--rounds', '1', '--util-size', '96', '--json', str(out)])
    text = capsys.readouterr().out
    assert 'Pale/Swin' in text and 'fraction' in text
    data = json.loads(out.read_text())
    for size in ('64', '96'):
        for model in ('pale_t', 'swin_t'):
            r = data['results'][size][model]
            assert r['forward_s'] > 0 and r['train_s'] > 0 and r['peak_mib'] > 0
    assert 0 < data['utilisation']['fraction']


def test_benchmark_profile(tmp_path, capsys):
    """``--modes profile``: each model's step split by kind of operator; Pale-T's attention
    is the fused kernel, Swin-T's a softmax between matrix products."""
    import benchmark
    out = tmp_path / 'prof.json'
    benchmark.main(['--sizes', '64', '--batch', '1', '--warmup', '1', '--modes', 'profile',
                    '--json', str(out)])
    assert 'where the time goes at 64' in capsys.readouterr().out
    prof = json.loads(out.read_text())['results']['64']['profile']
    for mode in ('forward', 'train'):
        pale, swin = prof['pale_t'][mode], prof['swin_t'][mode]
        assert set(pale) <= {k for k, _ in benchmark.OP_KINDS} | {benchmark.OTHER_KIND}
        assert pale['fused attention'] > 0 and pale['matrix products'] > 0
        assert pale['convolutions'] > 0  # the depthwise Q/K/V and position convs
        assert swin.get('fused attention', 0) == 0 and swin['softmax'] > 0
    # the backward adds time to every model
    for m in ('pale_t', 'swin_t'):
        assert sum(prof[m]['train'].values()) > sum(prof[m]['forward'].values())


def test_benchmark_op_kinds():
    import benchmark
    kinds = {name: benchmark.op_kind(name) for name in (
        'aten::addmm', 'aten::_scaled_dot_product_flash_attention_for_cpu_backward',
        'aten::_softmax_backward_data', 'aten::convolution_backward',
        'aten::native_batch_norm', 'aten::gelu_backward', 'aten::copy_', 'aten::add_',
        '_RecomputedInputLinearBackward')}
    assert list(kinds.values()) == [
        'matrix products', 'fused attention', 'softmax', 'convolutions', 'norms', 'GELU',
        'copies, fills, pads', 'other tensor ops', benchmark.OTHER_KIND]


def test_attention_floor(capsys):
    """The floor tool times the real stage-1 band: at 64x64 the 16x16 map has 3 row groups
    of 6, 5 and 5 rows, the largest band being the two 5-row groups of 80 tokens."""
    import attention_floor
    r = attention_floor.main(['--size', '64', '--batch', '1', '--repeats', '1'])
    assert r['shape'] == (2, 1, 80, 32)
    assert min(r['forward_s'], r['train_s'], r['products_s'], r['exp_s']) > 0
    assert r['train_s'] > r['forward_s']
    assert 'kernel forward / parts' in capsys.readouterr().out


@pytest.mark.parametrize('layout,ann', [('coco', 'annotations/instances_val2017.json'),
                                        ('ade', 'annotations/validation'),
                                        ('imagenet', 'meta/val.txt')])
def test_make_synthetic_data_cli(tmp_path, capsys, layout, ann):
    import make_synthetic_data
    root = tmp_path / layout
    info, options = make_synthetic_data.main([layout, str(root), '--num-train', '2',
                                              '--num-val', '3', '--size', '64', '64'])
    assert (root / ann).exists()
    assert any(o.startswith('train_dataloader.dataset.data_root=') and str(root) in o
               for o in options)
    assert 'tools/train.py' in capsys.readouterr().out


def test_make_synthetic_data_bad_input(tmp_path):
    import make_synthetic_data
    with pytest.raises(SystemExit, match='num_classes'):
        make_synthetic_data.main(['ade', str(tmp_path), '--num-classes', '12'])


def test_model_index_lists_every_config():
    """model-index.yml imports one metafile per config folder, and those list every config
    of the folder (and only existing ones)."""
    import glob

    import yaml
    with open(os.path.join(ROOT, 'model-index.yml')) as f:
        index = yaml.safe_load(f)
    listed = set()
    for metafile in index['Import']:
        with open(os.path.join(ROOT, metafile)) as f:
            meta = yaml.safe_load(f)
        collections = {c['Name'] for c in meta['Collections']}
        for model in meta['Models']:
            assert model['In Collection'] in collections
            assert os.path.isfile(os.path.join(ROOT, model['Config'])), model['Config']
            listed.add(model['Config'])
    for folder in ('mask_rcnn', 'upernet', 'imagenet'):
        configs = {os.path.relpath(p, ROOT) for p in
                   glob.glob(os.path.join(ROOT, 'configs', folder, 'pale_[tsb]_*.py'))}
        assert configs and configs <= listed, configs - listed


def test_demo_refuses_fewer_iterations_than_its_warm_up(tmp_path, capsys):
    import demo
    with pytest.raises(SystemExit):
        demo.main(['--iters', '10', '--data-root', str(tmp_path / 'data'),
                   '--work-dir', str(tmp_path / 'work')])
    assert 'more than the 20 warm-up iterations' in capsys.readouterr().err
    assert not (tmp_path / 'data').exists()  # refused before anything is written


def test_demo_learns_and_draws(tmp_path, capsys):
    """`make demo` in small: the model beats a constant prediction by far, pictures exist."""
    import demo
    summary = demo.main(['--iters', '40', '--data-root', str(tmp_path / 'data'),
                         '--work-dir', str(tmp_path / 'work')])
    assert summary['mIoU'] > summary['constant_prediction_mIoU'] + 15, summary
    assert os.path.isfile(summary['pictures'])
    assert len(list((tmp_path / 'work' / 'predictions').glob('ADE_val_*.png'))) == 9
    assert 'validation mIoU' in capsys.readouterr().out
