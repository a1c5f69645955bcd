"""Pale-T against Swin-T, side by side in one run, on the CPU or a GPU.

    python tools/benchmark.py                                  # CPU, float32, batch 2
    python tools/benchmark.py --device cuda --dtype bfloat16   # what tools/gpu_check.sh runs
    python tools/benchmark.py --runtime onnxruntime --sizes 512 800x1333   # docs/deploy.md

With ``--runtime onnxruntime`` each backbone is exported to ONNX first (pale_mm.deploy: the
file is checked against PyTorch in ONNX Runtime) and its inference latency, batch 1, is
timed in ONNX Runtime on the CPU, the models taking turns as below.

For each input size it measures each backbone's forward (inference: ``torch.no_grad``, eval
mode) and forward+backward (a training step without the optimizer) as images per second,
and the peak memory of one forward+backward. Times are the median of ``--repeats`` steps
after ``--warmup`` steps, in each of ``--rounds`` rounds; in a round each model runs one
block of consecutive steps, the order of the blocks alternating from round to round, so
that a machine whose speed drifts slows both alike. The time ratio Pale/Swin is the median
of the per-round ratios (below 1: Pale-T is faster). Peak memory is, on a GPU,
``torch.cuda.max_memory_allocated`` over what was allocated before the step; on the CPU,
the growth of the peak resident set (VmHWM) of a fresh process over its size before the
step (so allocations of every kind count).

Swin-T is mmdet's ``SwinTransformer`` where mmdet imports, else timm's
``swin_tiny_patch4_window7_224`` (``--swin`` picks). Both pad a side that is not a multiple
of the patch size (1333 -> 1336) and feature maps that are not a multiple of the window:
mmdet always; timm when built for the exact input size with a patch embedding that pads
(``dynamic_img_pad=True``), as done here.

It also reports which kernel ``scaled_dot_product_attention`` ran for each model (flash,
memory-efficient, cuDNN or math), read from the operator names of one profiled training
step (with the modes ``train`` or ``profile``), and the fraction of a dense matrix
product's rate (``torch.mm`` in the run's dtype, measured right after) that Pale-T's
forward reaches at ``--util-size``. ``--modes profile``
adds where the time goes: one step of each model under ``torch.profiler``, each operator's
own time summed by kind (matrix products, the fused attention kernel, convolutions, ...),
for the forward and the forward+backward.
"""
import argparse
import functools
import importlib.util
import inspect
import json
import os
import os.path as osp
import platform
import statistics
import subprocess
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

MODELS = ('pale_t', 'swin_t')
DTYPES = ('float32', 'bfloat16', 'float16')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sizes', nargs='+', default=['224', '512', '800x1333'],
                        help='input sizes, S or HxW')
    parser.add_argument('--batch', type=int, default=None,
                        help='images per step (default 2; 1 with --runtime onnxruntime)')
    parser.add_argument('--runtime', default='torch', choices=['torch', 'onnxruntime'],
                        help='onnxruntime: each backbone exported to ONNX (pale_mm.deploy, '
                        'checked against PyTorch) and its inference timed in ONNX Runtime '
                        '(CPUExecutionProvider), batch 1')
    parser.add_argument('--exporter', default='torchscript', choices=['torchscript', 'dynamo'],
                        help='the ONNX exporter of --runtime onnxruntime')
    parser.add_argument('--repeats', type=int, default=3,
                        help='timed steps per block (one model, consecutive steps)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed steps per block')
    parser.add_argument('--rounds', type=int, default=2,
                        help='blocks per model, the models taking turns')
    parser.add_argument('--device', default='cpu', help="'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument('--dtype', default='float32', choices=DTYPES,
                        help='bfloat16 and float16 run under torch.autocast')
    parser.add_argument('--swin', default='auto', choices=['auto', 'mmdet', 'timm'],
                        help="Swin-T's implementation (auto: mmdet's where mmdet imports)")
    parser.add_argument('--threads', type=int, default=None,
                        help='torch threads on the CPU (default: all cores)')
    parser.add_argument('--modes', nargs='+', default=['forward', 'train', 'memory'],
                        choices=['forward', 'train', 'memory', 'profile'])
    parser.add_argument('--models', nargs='+', default=list(MODELS), choices=MODELS)
    parser.add_argument('--util-size', type=int, default=512,
                        help='input size of the matmul-rate comparison (one of --sizes)')
    parser.add_argument('--json', help='also write the results to this JSON file')
    parser.add_argument('--_memory-probe', dest='memory_probe', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    for s in args.sizes:
        try:
            parse_size(s)
        except ValueError:
            parser.error(f'--sizes: {s!r} is not S or HxW (e.g. 512 or 800x1333)')
    if args.runtime == 'onnxruntime':
        if args.batch not in (None, 1):
            parser.error('--runtime onnxruntime times batch 1 (one file per input size)')
        if args.device != 'cpu':
            parser.error('--runtime onnxruntime runs on the CPU here (CPUExecutionProvider)')
        if importlib.util.find_spec('onnxruntime') is None:
            parser.error('--runtime onnxruntime: pip install "pale_mm[deploy]"')
        args.batch = 1
        args.modes = ['forward'] + (['profile'] if 'profile' in args.modes else [])
    args.batch = args.batch or 2
    if min(args.batch, args.repeats, args.rounds) < 1 or args.warmup < 0:
        parser.error('--batch, --repeats and --rounds must be at least 1, --warmup at least 0')
    import torch
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device: {args.device!r} is not a device; use 'cpu' or 'cuda'")
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: torch sees no CUDA device here; use --device cpu')
    if device.type not in ('cpu', 'cuda'):
        parser.error(f"--device: {args.device!r}: only 'cpu' and 'cuda' are measured")
    mmdet_found = importlib.util.find_spec('mmdet') is not None
    if args.swin == 'auto':
        args.swin = 'mmdet' if mmdet_found else 'timm'
    elif args.swin == 'mmdet' and not mmdet_found:
        parser.error('--swin mmdet: mmdet is not installed here; use --swin timm')
    if args.swin == 'timm' and importlib.util.find_spec('timm') is None:
        parser.error('--swin timm: timm is not installed here (pip install timm)')
    return args


def parse_size(s):
    h, _, w = s.lower().partition('x')
    return int(h), int(w or h)


def on_cuda(args):
    return args.device.startswith('cuda')


def build(name, size, swin):
    """Pale-T or Swin-T (as in mmdet's Swin Mask R-CNN configs: C=96, depths 2-2-6-2,
    window 7), without stochastic depth."""
    import torch
    torch.manual_seed(0)
    if name == 'pale_t':
        from pale_mm import PaleTransformer
        return PaleTransformer('tiny', drop_path_rate=0.)
    if swin == 'mmdet':
        from mmdet.models.backbones import SwinTransformer
        return SwinTransformer(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                               window_size=7, drop_path_rate=0.)
    import timm
    from timm.layers import PatchEmbed
    return timm.create_model('swin_tiny_patch4_window7_224', pretrained=False,
                             features_only=True, img_size=parse_size(size), drop_path_rate=0.,
                             embed_layer=functools.partial(PatchEmbed, dynamic_img_pad=True))


def describe(name, swin):
    """How the model was built, with the defaults of Pale's memory options."""
    if name == 'pale_t':
        from pale_mm import PaleTransformer
        params = inspect.signature(PaleTransformer).parameters
        defaults = ', '.join(f'{k}={params[k].default!r}'
                             for k in ('with_cp', 'memory_efficient') if k in params)
        return f"pale_mm PaleTransformer('tiny', drop_path_rate=0.0); defaults {defaults}"
    if swin == 'mmdet':
        import mmdet
        return (f'mmdet {mmdet.__version__} SwinTransformer(embed_dims=96, depths=(2, 2, 6, 2), '
                'num_heads=(3, 6, 12, 24), window_size=7, drop_path_rate=0.0)')
    import timm
    return (f"timm {timm.__version__} swin_tiny_patch4_window7_224(features_only=True, "
            'img_size=the input size, drop_path_rate=0.0, PatchEmbed dynamic_img_pad=True)')


def _sync(args):
    import torch
    if on_cuda(args):
        torch.cuda.synchronize(args.device)


def _step(model, x, train, args):
    import torch
    device_type = 'cuda' if on_cuda(args) else 'cpu'
    if args.dtype == 'float32':
        precision = torch.autocast(device_type, enabled=False)
    else:
        precision = torch.autocast(device_type, dtype=getattr(torch, args.dtype))
    if train:
        with precision:
            outs = model(x)
            loss = sum(o.float().mean() for o in outs)
        loss.backward()
    else:
        with torch.no_grad(), precision:
            model(x)


def _time_block(step, args):
    """Median seconds of ``--repeats`` calls of ``step()``, after ``--warmup`` calls."""
    times = []
    for i in range(args.warmup + args.repeats):
        _sync(args)
        t0 = time.perf_counter()
        step()
        _sync(args)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_alternating(steps, args):
    """Seconds per call of each of ``steps`` ({name: step()}), over ``--rounds`` rounds. In
    a round each runs a block of calls of its own (warm-up, then the timed ones), as in a
    training loop; the order of the blocks alternates from round to round, so that a
    machine whose speed drifts slows both alike. Returns each one's median over the rounds
    and the median of the per-round ratios first / second (None for one)."""
    names = list(steps)
    per_round = {name: [] for name in names}
    ratios = []
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            per_round[name].append(_time_block(steps[name], args))
        if len(names) == 2:
            ratios.append(per_round[names[0]][-1] / per_round[names[1]][-1])
    return ({name: statistics.median(t) for name, t in per_round.items()},
            statistics.median(ratios) if ratios else None)


def time_models(models, x, train, args):
    """:func:`time_alternating` of the models' inference or training steps."""
    def step(model):
        model.zero_grad(set_to_none=True)
        _step(model, x, train, args)

    for model in models.values():
        model.train(train)
    return time_alternating({name: functools.partial(step, m) for name, m in models.items()},
                            args)


# Kinds of operator for ``--modes profile``, matched in order on the profiler's event name;
# each event's own time (without the operators it calls) goes to the first kind it matches.
OP_KINDS = (
    ('matrix products', ('aten::mm', 'aten::addmm', 'aten::bmm', 'aten::baddbmm')),
    ('fused attention', ('scaled_dot_product', 'flash_attention', 'efficient_attention',
                         'cudnn_attention')),
    ('softmax', ('softmax',)),
    ('convolutions', ('conv', 'im2col', 'col2im')),
    ('norms', ('layer_norm', 'batch_norm')),
    ('GELU', ('gelu',)),
    ('copies, fills, pads', ('aten::copy_', 'aten::clone', 'aten::cat', 'aten::fill_',
                             'aten::zero_', 'aten::index', 'aten::_index_put',
                             'aten::roll', 'aten::constant_pad_nd', 'aten::contiguous')),
    ('other tensor ops', ('aten::',)),
)
OTHER_KIND = 'autograd, Python'


def op_kind(name):
    for kind, keys in OP_KINDS:
        if any(k in name for k in keys):
            return kind
    return OTHER_KIND


# The operators through which ``scaled_dot_product_attention`` runs each of its kernels.
SDPA_BACKENDS = (
    ('flash', ('aten::_scaled_dot_product_flash_attention', 'aten::_flash_attention_forward')),
    ('memory-efficient', ('aten::_scaled_dot_product_efficient_attention',
                          'aten::_efficient_attention_forward')),
    ('cudnn', ('aten::_scaled_dot_product_cudnn_attention',)),
    ('math', ('aten::_scaled_dot_product_attention_math',)),
)


def sdpa_backends(op_names):
    """The SDPA kernels among the profiled operator names, e.g. ['flash'] ([] when the model
    computes its attention without ``scaled_dot_product_attention``)."""
    return [backend for backend, prefixes in SDPA_BACKENDS
            if any(n.startswith(p) for n in op_names for p in prefixes)]


def profile_step(model, x, train, args, warmup):
    """{operator name: its own seconds} in one step after ``warmup`` untimed steps."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    model.train(train)
    for _ in range(warmup):
        model.zero_grad(set_to_none=True)
        _step(model, x, train, args)
    model.zero_grad(set_to_none=True)
    activities = [ProfilerActivity.CPU]
    if on_cuda(args):
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        _step(model, x, train, args)
        _sync(args)
    own = {}
    for e in prof.key_averages():
        if e.device_type != DeviceType.CPU:  # a GPU kernel: counted in the op that ran it
            continue
        t = e.self_device_time_total if on_cuda(args) else e.self_cpu_time_total
        own[e.key] = own.get(e.key, 0.) + t / 1e6
    return own


def by_kind(own):
    kinds = {}
    for name, t in own.items():
        kind = op_kind(name)
        kinds[kind] = kinds.get(kind, 0.) + t
    return kinds


def print_profile(size, prof, model_names):
    cols = [(mode, m) for mode in ('forward', 'train') for m in model_names
            if mode in prof.get(m, {})]
    label = {'forward': 'forward (s)', 'train': 'fwd+bwd (s)'}
    print(f'\nwhere the time goes at {size} (one profiled step each, own time of each '
          'operator by kind):')
    print('| kind | ' + ' | '.join(f'{label[mode]} {m}' for mode, m in cols) + ' |')
    print('|' + '---|' * (len(cols) + 1))
    for kind in [k for k, _ in OP_KINDS] + [OTHER_KIND, 'total']:
        vals = [sum(prof[m][mode].values()) if kind == 'total'
                else prof[m][mode].get(kind, 0.) for mode, m in cols]
        print(f'| {kind} | ' + ' | '.join(f'{v:.3f}' for v in vals) + ' |')


def _rss_bytes():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def _peak_rss_bytes():
    """This process's peak resident set (VmHWM). Unlike ``getrusage``'s ``ru_maxrss``, it
    starts afresh at ``exec``: a probe started by a large parent does not inherit the
    parent's size."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) * 1024
    raise RuntimeError('no VmHWM in /proc/self/status')


def _reset_peak_rss() -> None:
    """Start the peak (VmHWM) again from the current resident set (Linux >= 4.0)."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError:  # older kernels: the peak then includes the set-up's
        pass


def peak_step_bytes(model, x, args):
    """Peak memory of one forward+backward over what was in use before it."""
    import torch
    model.train()
    model.zero_grad(set_to_none=True)
    if on_cuda(args):
        _sync(args)
        torch.cuda.reset_peak_memory_stats(args.device)
        base = torch.cuda.memory_allocated(args.device)
        _step(model, x, True, args)
        _sync(args)
        return torch.cuda.max_memory_allocated(args.device) - base
    base = _rss_bytes()
    _reset_peak_rss()
    _step(model, x, True, args)
    return _peak_rss_bytes() - base


def memory_probe(args):
    """The CPU measurement, in a fresh process: ``--_memory-probe name:size``."""
    import torch
    name, size = args.memory_probe.split(':')
    model = build(name, size, args.swin)
    x = torch.randn(args.batch, 3, *parse_size(size))
    print(json.dumps({'peak_bytes': peak_step_bytes(model, x, args)}))


def measure_memory(name, size, models, x, args):
    """Peak bytes of one forward+backward: on a GPU in this process (the allocator's own
    count), on the CPU in a fresh process (the resident set counts allocations of every
    kind, and this process's earlier steps would hide a smaller peak)."""
    if on_cuda(args):
        return peak_step_bytes(models[name], x, args)
    cmd = [sys.executable, osp.abspath(__file__), '--_memory-probe', f'{name}:{size}',
           '--batch', str(args.batch), '--device', args.device, '--dtype', args.dtype,
           '--swin', args.swin]
    if args.threads:
        cmd += ['--threads', str(args.threads)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f'memory probe {name} {size} failed:\n{res.stderr[-2000:]}')
    return json.loads(res.stdout.strip().splitlines()[-1])['peak_bytes']


def mm_rate(args):
    """Multiply-accumulates per second of a dense square matrix product in the run's dtype
    (2048 on the CPU, 8192 on a GPU, where 2048 is too small to fill the chip)."""
    import torch
    n = 8192 if on_cuda(args) else 2048
    a = torch.randn(n, n, device=args.device, dtype=getattr(torch, args.dtype))
    b = torch.randn_like(a)
    for _ in range(2):
        torch.mm(a, b)
    times = []
    for _ in range(5):
        _sync(args)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(args)
        times.append(time.perf_counter() - t0)
    return n, n**3 / statistics.median(times)


TABLE_COLUMNS = (('forward_img_per_s', 'forward img/s', '{:.1f}'),
                 ('train_img_per_s', 'fwd+bwd img/s', '{:.1f}'),
                 ('peak_mib', 'fwd+bwd peak MiB', '{:.0f}'))
RATIO_COLUMNS = (('forward_s', 'forward time Pale/Swin'),
                 ('train_s', 'fwd+bwd time Pale/Swin'),
                 ('peak_mib', 'fwd+bwd peak Pale/Swin'))


def print_report(report, args):
    print(f"\nruntime: {report['runtime']}; "
          f"device: {report['device']} ({report['device_name']}); dtype {args.dtype}; "
          f"batch {args.batch}; {args.rounds} rounds of {args.repeats} timed steps after "
          f"{args.warmup} warm-up per model; torch {report['torch']}")
    for name, text in report['models'].items():
        print(f'{name}: {text}')
    results, names = report['results'], args.models
    cols = [c for c in TABLE_COLUMNS
            if any(c[0] in r[m] for r in results.values() for m in names)]
    ratios = [c for c in RATIO_COLUMNS
              if any(c[0] in r.get('ratio', {}) for r in results.values())]
    if cols:
        header = ['size'] + [f'{label} {m}' for _, label, _ in cols for m in names]
        header += [label for _, label in ratios]
        print('\n| ' + ' | '.join(header) + ' |')
        print('|' + '---|' * len(header))
        for size, r in results.items():
            row = [size] + [fmt.format(r[m][key]) for key, _, fmt in cols for m in names]
            row += [f"{r['ratio'][key]:.2f}" for key, _ in ratios]
            print('| ' + ' | '.join(row) + ' |')
    if any('sdpa' in r for r in results.values()):
        print('\nscaled_dot_product_attention kernels that ran (one profiled fwd+bwd step):')
        print('| size | ' + ' | '.join(names) + ' |')
        print('|' + '---|' * (len(names) + 1))
        for size, r in results.items():
            print(f'| {size} | ' + ' | '.join(', '.join(r['sdpa'][m]) or 'none (no SDPA call)'
                                               for m in names) + ' |')
    for size, r in results.items():
        if 'profile' in r and report['runtime'] == 'torch':
            print_profile(size, r['profile'], names)
        elif 'profile' in r:
            print_ort_profile(size, r['profile'], names)
    util = report['utilisation']
    if util:
        print(f"\nPale-T forward at {util['size']}x{util['size']}: "
              f"{util['pale_t_macs_per_s'] / 1e9:.1f} GMAC/s; torch.mm {util['mm_size']}^2 "
              f"{args.dtype}: {util['mm_macs_per_s'] / 1e9:.1f} GMAC/s; "
              f"fraction {util['fraction']:.2f}")


def main(argv=None):
    args = parse_args(argv)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        return memory_probe(args)

    if args.runtime == 'onnxruntime':
        return main_onnxruntime(args)
    results = {}
    mm = None
    for size in args.sizes:
        x = torch.randn(args.batch, 3, *parse_size(size), device=args.device)
        models = {name: build(name, size, args.swin).to(args.device) for name in args.models}
        r = results[size] = {name: {} for name in args.models}
        for mode in ('forward', 'train'):
            if mode not in args.modes:
                continue
            times, ratio = time_models(models, x, mode == 'train', args)
            for name in args.models:
                r[name][f'{mode}_s'] = times[name]
                r[name][f'{mode}_img_per_s'] = args.batch / times[name]
            if ratio is not None:
                r.setdefault('ratio', {})[f'{mode}_s'] = ratio
            if mode == 'forward' and size == str(args.util_size):
                mm = mm_rate(args)  # right after, on the machine as it is now
        # one profiled training step per model: which SDPA kernels ran (and, for
        # --modes profile, where the time went)
        for name in args.models:
            if not {'train', 'profile'} & set(args.modes):
                break
            own = profile_step(models[name], x, True, args, 0 if 'train' in args.modes else 1)
            r.setdefault('sdpa', {})[name] = sdpa_backends(own)
            if 'profile' in args.modes:
                forward = profile_step(models[name], x, False, args, 1)
                r.setdefault('profile', {})[name] = dict(forward=by_kind(forward),
                                                         train=by_kind(own))
        if 'memory' in args.modes:
            for name in args.models:
                r[name]['peak_mib'] = measure_memory(name, size, models, x, args) / 2**20
            if len(args.models) == 2:
                r.setdefault('ratio', {})['peak_mib'] = (r['pale_t']['peak_mib'] /
                                                         r['swin_t']['peak_mib'])
        del models, x
        if on_cuda(args):
            torch.cuda.empty_cache()

    util = None
    us = str(args.util_size)
    if mm and 'pale_t' in args.models:
        from pale_mm.flops import complexity
        with torch.no_grad():  # the count of the inference forward that was timed
            macs = complexity(build('pale_t', us, args.swin).eval(),
                              torch.randn(1, 3, args.util_size, args.util_size))['macs']
        util = dict(size=args.util_size, mm_size=mm[0], mm_macs_per_s=mm[1],
                    pale_t_macs_per_s=macs * results[us]['pale_t']['forward_img_per_s'])
        util['fraction'] = util['pale_t_macs_per_s'] / mm[1]

    report = dict(
        runtime='torch', device=args.device, dtype=args.dtype, batch=args.batch,
        torch=torch.__version__,
        device_name=(torch.cuda.get_device_name(args.device) if on_cuda(args) else
                     f'{platform.processor() or platform.machine()}, '
                     f'{torch.get_num_threads()} threads'),
        timing=dict(rounds=args.rounds, repeats=args.repeats, warmup=args.warmup),
        models={name: describe(name, args.swin) for name in args.models},
        results=results, utilisation=util)
    return finish(report, args)


def finish(report, args):
    print_report(report, args)
    if args.json:
        text = json.dumps(report, indent=2)
        with open(args.json, 'w') as f:
            f.write(text)
    return report


def export_backbones(size, args, folder):
    """Each model's ONNX file for ``size`` (pale_mm.deploy's export, checked against
    PyTorch in ONNX Runtime), in ``folder``."""
    from pale_mm.deploy.onnx_export import BackboneGraph, export_onnx

    paths = {}
    for name in args.models:
        graph = BackboneGraph.of(build(name, size, args.swin), parse_size(size))  # eval mode
        paths[name] = osp.join(folder, f'{name}_{size}.onnx')
        export_onnx(graph, paths[name], args.exporter)
    return paths


def ort_op_times(path, x, threads):
    """Seconds per ONNX operator type of one inference, from ONNX Runtime's profiler."""
    import collections

    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.enable_profiling = True
    options.intra_op_num_threads = threads
    options.profile_file_prefix = osp.splitext(path)[0]
    session = onnxruntime.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    feed = {session.get_inputs()[0].name: x}
    session.run(None, feed)  # warm-up, also profiled: its events are dropped below
    session.run(None, feed)
    with open(session.end_profiling()) as f:
        events = json.load(f)
    by_op = collections.Counter()
    runs = [e for e in events if e.get('name') == 'model_run']
    last_start = runs[-1]['ts'] if runs else 0
    for e in events:
        if e.get('cat') == 'Node' and e['name'].endswith('_kernel_time') and e['ts'] >= last_start:
            by_op[e['args']['op_name']] += e['dur'] / 1e6
    return dict(by_op.most_common())


def print_ort_profile(size, profile, names):
    print(f'\nwhere the time goes at {size}: share of each ONNX operator type in one profiled '
          'inference (ONNX Runtime\'s profiler)')
    ops = sorted({op for n in names for op in list(profile[n])[:8]},
                 key=lambda op: -max(profile[n].get(op, 0) for n in names))
    total = {n: sum(profile[n].values()) for n in names}
    print('| operator | ' + ' | '.join(names) + ' |')
    print('|' + '---|' * (len(names) + 1))
    for op in ops:
        shares = [f'{100 * profile[n].get(op, 0) / total[n]:.0f}%' for n in names]
        print(f'| {op} | ' + ' | '.join(shares) + ' |')


def main_onnxruntime(args):
    """Inference latency in ONNX Runtime, batch 1, the models taking turns."""
    import tempfile

    import numpy as np
    import onnxruntime
    import torch

    from pale_mm.deploy.onnx_runtime import OnnxModel

    threads = args.threads or os.cpu_count()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            paths = export_backbones(size, args, folder)
            x = np.random.default_rng(0).standard_normal((1, 3, *parse_size(size)),
                                                         dtype=np.float32)
            runs = {name: OnnxModel(path, threads=threads) for name, path in paths.items()}
            times, ratio = time_alternating(
                {name: functools.partial(run, x) for name, run in runs.items()}, args)
            r = results[size] = {name: dict(forward_s=times[name],
                                            forward_img_per_s=1 / times[name])
                                 for name in args.models}
            if ratio is not None:
                r['ratio'] = dict(forward_s=ratio)
            if 'profile' in args.modes:
                r['profile'] = {name: ort_op_times(path, x, threads)
                                for name, path in paths.items()}
    models = {name: f'{describe(name, args.swin)}; exported by torch\'s {args.exporter} '
              'exporter' for name in args.models}
    report = dict(
        runtime=f'onnxruntime {onnxruntime.__version__}', device='cpu', dtype='float32',
        batch=1, torch=torch.__version__,
        device_name=f'{platform.processor() or platform.machine()}, {threads} threads, '
                    'CPUExecutionProvider',
        timing=dict(rounds=args.rounds, repeats=args.repeats, warmup=args.warmup),
        models=models, results=results, utilisation=None)
    return finish(report, args)


if __name__ == '__main__':
    main()
