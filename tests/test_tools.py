"""The tools run and report what they claim: visualize_pale, benchmark, gpu_check.sh,
make_synthetic_data, demo."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

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


def _markdown_rows(text, first_header_cell):
    """{first cell: {column header: cell}} of the markdown table whose header starts with
    ``first_header_cell``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines)
                 if line.startswith(f'| {first_header_cell} |'))
    header = [c.strip() for c in lines[start].strip('|').split('|')]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith('|'):
            break
        cells = [c.strip() for c in line.strip('|').split('|')]
        rows[cells[0]] = dict(zip(header, cells))
    return rows


@pytest.mark.slow  # benchmarks two models
def test_benchmark_report(tmp_path, capsys):
    """A tiny run: the JSON holds what the table printed, every number is finite and
    positive, the ratios are those of the numbers, and the attention kernels and operator
    kinds are those the two models are built from. Nothing about which is faster: that
    depends on how busy the machine is. (Peak memory: test_gpu_check_on_cpu.)"""
    import benchmark
    out = tmp_path / 'bench.json'
    threads = torch.get_num_threads()  # --threads sets this process's
    benchmark.main(['--sizes', '64', '--batch', '2', '--repeats', '1', '--warmup',
                    '0', '--rounds', '1', '--threads', '1', '--util-size', '64', '--modes',
                    'forward', 'train', 'profile', '--json', str(out)])
    torch.set_num_threads(threads)
    text = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert (data['device'], data['dtype'], data['batch']) == ('cpu', 'float32', 2)
    assert "PaleTransformer('tiny'" in data['models']['pale_t']
    assert 'SwinTransformer' in data['models']['swin_t']  # mmdet's, installed here
    for description in data['models'].values():
        assert description in text

    table = _markdown_rows(text, 'size')
    kernels = _markdown_rows(text, 'size | pale_t')
    assert set(table) == set(kernels) == set(data['results']) == {'64'}
    for size, r in data['results'].items():
        for model in ('pale_t', 'swin_t'):
            m = r[model]
            for key in ('forward_s', 'train_s'):
                assert math.isfinite(m[key]) and m[key] > 0, (size, model, key)
            assert m['forward_img_per_s'] == pytest.approx(2 / m['forward_s'])
            assert m['train_img_per_s'] == pytest.approx(2 / m['train_s'])
            row = table[size]
            assert row[f'forward img/s {model}'] == f"{m['forward_img_per_s']:.1f}"
            assert row[f'fwd+bwd img/s {model}'] == f"{m['train_img_per_s']:.1f}"
        # one round: the ratio of the round is the ratio of the times
        assert r['ratio']['forward_s'] == pytest.approx(
            r['pale_t']['forward_s'] / r['swin_t']['forward_s'])
        assert table[size]['fwd+bwd time Pale/Swin'] == f"{r['ratio']['train_s']:.2f}"

        # Pale's attention is scaled_dot_product_attention, mmdet's Swin a softmax between
        # matrix products
        assert r['sdpa']['pale_t'] and set(r['sdpa']['pale_t']) <= {
            b for b, _ in benchmark.SDPA_BACKENDS}
        assert r['sdpa']['swin_t'] == []
        assert kernels[size]['pale_t'] == ', '.join(r['sdpa']['pale_t'])
        for mode in ('forward', 'train'):
            pale, swin = r['profile']['pale_t'][mode], r['profile']['swin_t'][mode]
            kinds = {k for k, _ in benchmark.OP_KINDS} | {benchmark.OTHER_KIND}
            assert set(pale) <= kinds and set(swin) <= kinds
            assert {'fused attention', 'matrix products', 'convolutions'} <= set(pale)
            assert 'softmax' in swin and 'fused attention' not in swin
            assert all(math.isfinite(t) and t >= 0 for t in [*pale.values(), *swin.values()])
        assert f'where the time goes at {size}' in text

    util = data['utilisation']
    assert util['size'] == 64 and util['mm_size'] == 2048
    assert 0 < util['fraction'] < math.inf
    assert f"fraction {util['fraction']:.2f}" in text


def test_benchmark_op_kinds():
    import benchmark
    kinds = {name: benchmark.op_kind(name) for name in (
        'aten::addmm', 'aten::_scaled_dot_product_flash_attention_for_cpu_backward',
        'aten::_softmax_backward_data', 'aten::convolution_backward',
        'aten::native_batch_norm', 'aten::gelu_backward', 'aten::copy_', 'aten::add_',
        'CheckpointFunctionBackward')}
    assert list(kinds.values()) == [
        'matrix products', 'fused attention', 'softmax', 'convolutions', 'norms', 'GELU',
        'copies, fills, pads', 'other tensor ops', benchmark.OTHER_KIND]


def test_benchmark_sdpa_backends():
    """The kernel of scaled_dot_product_attention is read off the operators that ran."""
    import benchmark
    assert benchmark.sdpa_backends([
        'aten::linear', 'aten::scaled_dot_product_attention',
        'aten::_scaled_dot_product_flash_attention',
        'aten::_scaled_dot_product_flash_attention_backward']) == ['flash']
    assert benchmark.sdpa_backends(['aten::_scaled_dot_product_flash_attention_for_cpu']) == [
        'flash']
    assert benchmark.sdpa_backends([
        'aten::_scaled_dot_product_efficient_attention',
        'aten::_scaled_dot_product_attention_math']) == ['memory-efficient', 'math']
    assert benchmark.sdpa_backends(['aten::_scaled_dot_product_cudnn_attention']) == ['cudnn']
    assert benchmark.sdpa_backends(['aten::scaled_dot_product_attention',
                                    'aten::softmax', 'aten::bmm']) == []


@pytest.mark.parametrize('argv,message', [
    (['--sizes', '64y64'], "'64y64' is not S or HxW"),
    (['--rounds', '0'], 'must be at least 1'),
    (['--device', 'gpu'], "'gpu' is not a device"),
])
def test_benchmark_bad_input(capsys, argv, message):
    import benchmark
    with pytest.raises(SystemExit):
        benchmark.main(argv)
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has a CUDA device')
def test_benchmark_refuses_cuda_without_a_gpu(capsys):
    import benchmark
    with pytest.raises(SystemExit):
        benchmark.main(['--device', 'cuda'])
    assert 'torch sees no CUDA device here; use --device cpu' in capsys.readouterr().err


def test_device_fixture(device):
    """The model tests' device is PALE_TEST_DEVICE's (cpu by default)."""
    assert device.type == os.environ.get('PALE_TEST_DEVICE', 'cpu').split(':')[0]
    assert torch.ones(2, device=device).device.type == device.type


def _gpu_check(*args, tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, PYTHONUNBUFFERED='1')
    return subprocess.run(['bash', os.path.join(ROOT, 'tools', 'gpu_check.sh'), *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True)


@pytest.mark.slow  # the GPU check script on the CPU
def test_gpu_check_on_cpu(tmp_path):
    """tools/gpu_check.sh --device cpu: the environment, the model tests with
    PALE_TEST_DEVICE set (here one test, to stay fast), and the benchmark (float32 on the
    CPU) at a tiny size with its table (peak memory from fresh processes included) and
    JSON."""
    out = tmp_path / 'out'
    res = _gpu_check('--device', 'cpu', '--out', str(out), '--tests',
                     'tests/test_tools.py::test_device_fixture', tmp_path=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    text = res.stdout
    assert 'mmengine: 0.10.7' in text and 'mmcv: 2.1.0' in text
    assert '1 passed' in text and 'model tests: passed' in text
    assert 'benchmark (' in text and 'benchmark.json): passed' in text
    data = json.loads((out / 'benchmark.json').read_text())
    assert (data['device'], data['dtype'], data['batch']) == ('cpu', 'float32', 2)
    assert list(data['results']) == ['64x96']
    r = data['results']['64x96']
    row = _markdown_rows(text, 'size')['64x96']
    for model in ('pale_t', 'swin_t'):
        assert math.isfinite(r[model]['peak_mib']) and r[model]['peak_mib'] > 0
        assert row[f'fwd+bwd peak MiB {model}'] == f"{r[model]['peak_mib']:.0f}"
    assert r['ratio']['peak_mib'] == pytest.approx(
        r['pale_t']['peak_mib'] / r['swin_t']['peak_mib'])
    assert row['fwd+bwd peak Pale/Swin'] == f"{r['ratio']['peak_mib']:.2f}"
    assert r['sdpa']['pale_t'] and r['sdpa']['swin_t'] == []
    assert (out / 'benchmark.txt').read_text().strip() in text


@pytest.mark.parametrize('argv,message', [
    (['--device', 'tpu'], "--device must be cuda or cpu, not 'tpu'"),
    (['--wheels', 'no_such_folder'], "no wheels in 'no_such_folder'"),
    (['--bogus'], "unknown option '--bogus'"),
])
def test_gpu_check_bad_input(tmp_path, argv, message):
    res = _gpu_check(*argv, tmp_path=tmp_path)
    assert res.returncode == 2 and message in res.stderr


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


def test_model_index_lists_every_config_in_the_standard_schema():
    """model-index.yml imports one metafile per config folder; those list every config of
    the folder (and only existing ones) in OpenMMLab's schema: FLOPs and Parameters as
    numbers, each collection with its paper, its code and a README of its own that exists."""
    import glob

    import yaml
    with open(os.path.join(ROOT, 'model-index.yml')) as f:
        index = yaml.safe_load(f)
    listed = set()
    for metafile in index['Import']:
        with open(os.path.join(ROOT, metafile)) as f:
            meta = yaml.safe_load(f)
        collections = {c['Name']: c for c in meta['Collections']}
        for c in collections.values():
            assert c['Paper']['URL'].startswith('https://arxiv.org/')
            assert os.path.isfile(os.path.join(ROOT, c['Code']['URL'])), c['Code']
            assert c['README'] == os.path.join(os.path.dirname(metafile), 'README.md')
            assert os.path.isfile(os.path.join(ROOT, c['README'])), c['README']
        for model in meta['Models']:
            assert model['In Collection'] in collections
            assert os.path.isfile(os.path.join(ROOT, model['Config'])), model['Config']
            for key in ('FLOPs', 'Parameters'):
                if key in model['Metadata']:
                    assert isinstance(model['Metadata'][key], int), (model['Name'], key)
            assert not any('(' in key for key in model['Metadata']), model['Metadata']
            listed.add(model['Config'])
    configs = {os.path.relpath(p, ROOT) for p in
               glob.glob(os.path.join(ROOT, 'configs', '*', 'pale_*.py'))}
    assert len(configs) == 13 and configs == listed, configs ^ listed


def test_demo_refuses_fewer_iterations_than_its_warm_up(tmp_path, capsys):
    import demo
    with pytest.raises(SystemExit):
        demo.main(['--iters', '10', '--data-root', str(tmp_path / 'data'),
                   '--work-dir', str(tmp_path / 'work')])
    assert 'more than the 20 warm-up iterations' in capsys.readouterr().err
    assert not (tmp_path / 'data').exists()  # refused before anything is written


@pytest.mark.slow  # the whole demo
def test_demo_learns_and_draws(tmp_path, capsys):
    """`make demo` in small: the model beats a constant prediction by far, pictures exist."""
    import demo
    summary = demo.main(['--iters', '40', '--data-root', str(tmp_path / 'data'),
                         '--work-dir', str(tmp_path / 'work')])
    assert summary['mIoU'] > summary['constant_prediction_mIoU'] + 15, summary
    assert os.path.isfile(summary['pictures'])
    assert len(list((tmp_path / 'work' / 'predictions').glob('ADE_val_*.png'))) == 9
    assert 'validation mIoU' in capsys.readouterr().out
