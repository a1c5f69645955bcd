"""Pale-T against Swin-T (mmdet's SwinTransformer), side by side in one run.

    python tools/benchmark.py                      # CPU, float32, batch 2, 224/512/800x1333
    python tools/benchmark.py --device cuda --dtype bfloat16

For each input size it times the backbone's forward (inference, ``torch.no_grad``, eval) and
forward+backward (training step without the optimizer), median of ``--repeats`` runs after
``--warmup`` runs in each of ``--rounds`` rounds, the two models taking turns block by block
so that a machine whose speed drifts slows both alike (the ratio is the median of the
per-round ratios), and measures the peak memory of one forward+backward: on a GPU with
``torch.cuda.max_memory_allocated``, on the CPU as the growth of the peak resident set
(VmHWM) of a fresh process over its size before the step (so allocations of every kind
count). It prints a table with the ratio Pale/Swin, and the fraction of the machine's dense
float32 multiply-accumulate rate (``torch.mm`` 2048x2048, measured right after) that Pale-T's
forward reaches at 512x512.

``--modes profile`` adds where the time goes: one step of each model under
``torch.profiler`` (after a warm-up), each operator's own time summed by kind (matrix products,
the fused attention kernel, convolutions, norms, copies, ...), for the forward and the
forward+backward. The profiler's own overhead makes these steps a little slower than the
timed ones.
"""
import argparse
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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sizes', nargs='+', default=['224', '512', '800x1333'],
                        help='input sizes, S or HxW')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=3,
                        help='timed steps per block (one model, consecutive steps)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed steps per block')
    parser.add_argument('--rounds', type=int, default=2,
                        help='blocks per model, the models taking turns')
    parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")
    parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'],
                        help='bfloat16 runs under torch.autocast')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch threads on the CPU (default: all cores)')
    parser.add_argument('--modes', nargs='+', default=['forward', 'train', 'memory'],
                        choices=['forward', 'train', 'memory', 'profile'])
    parser.add_argument('--models', nargs='+', default=list(MODELS), choices=MODELS)
    parser.add_argument('--util-size', type=int, default=512,
                        help="input size of the matmul-rate comparison (one of --sizes)")
    parser.add_argument('--json', help='also write the results to this JSON file')
    parser.add_argument('--_memory-probe', dest='memory_probe', help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def parse_size(s):
    h, _, w = s.lower().partition('x')
    return int(h), int(w or h)


def build(name):
    import pale_mm  # noqa: F401
    if name == 'pale_t':
        from pale_mm import PaleTransformer
        return PaleTransformer('tiny', drop_path_rate=0.)
    from mmdet.models.backbones import SwinTransformer
    # Swin-T as in mmdet's Swin Mask R-CNN configs: C=96, depths 2-2-6-2, window 7
    return SwinTransformer(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                           window_size=7, drop_path_rate=0.)


def _sync(device):
    import torch
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def _step(model, x, train, dtype, device):
    import torch
    ctx = torch.autocast(device.split(':')[0], dtype=torch.bfloat16) \
        if dtype == 'bfloat16' else torch.autocast(device.split(':')[0], enabled=False)
    if train:
        with ctx:
            outs = model(x)
            loss = sum(o.float().mean() for o in outs)
        loss.backward()
    else:
        with torch.no_grad(), ctx:
            model(x)


def _time_block(model, x, train, args):
    """Median seconds of ``--repeats`` steps of one model, after ``--warmup`` steps."""
    model.train(train)
    times = []
    for i in range(args.warmup + args.repeats):
        model.zero_grad(set_to_none=True)
        _sync(args.device)
        t0 = time.perf_counter()
        _step(model, x, train, args.dtype, args.device)
        _sync(args.device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_models(models, x, train, args):
    """Seconds per step of each model, over ``--rounds`` rounds. In a round each model runs
    a block of steps of its own (warm-up, then the timed ones), as in a training loop; the
    order of the blocks alternates from round to round, so that a machine whose speed drifts
    slows both alike. Returns each model's median over the rounds and the median of the
    per-round ratios first model / second model."""
    names = list(models)
    per_round = {name: [] for name in names}
    ratios = []
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            per_round[name].append(_time_block(models[name], x, train, args))
        if len(names) == 2:
            ratios.append(per_round[names[0]][-1] / per_round[names[1]][-1])
    return {name: statistics.median(t) for name, t in per_round.items()}, ratios


# Kinds of operator for ``--modes profile``, matched in order on the profiler's event name;
# each event's own time (without the operators it calls) goes to the first kind it matches.
OP_KINDS = (
    ('matrix products', ('aten::mm', 'aten::addmm', 'aten::bmm', 'aten::baddbmm')),
    ('fused attention', ('scaled_dot_product', 'flash_attention', 'efficient_attention')),
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


def profile_step(model, x, train, args):
    """Seconds of one step by kind of operator (each event's own time), after a warm-up."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    model.train(train)
    for _ in range(max(1, args.warmup)):
        model.zero_grad(set_to_none=True)
        _step(model, x, train, args.dtype, args.device)
    model.zero_grad(set_to_none=True)
    activities = [ProfilerActivity.CPU]
    if args.device.startswith('cuda'):
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        _step(model, x, train, args.dtype, args.device)
        _sync(args.device)
    kinds = {}
    for e in prof.key_averages():
        own = (e.self_device_time_total if args.device.startswith('cuda')
               else e.self_cpu_time_total)
        kind = op_kind(e.key)
        kinds[kind] = kinds.get(kind, 0.) + own / 1e6
    return kinds


def print_profile(size, prof, model_names):
    cols = [(mode, m) for mode in ('forward', 'train') for m in model_names
            if mode in prof.get(m, {})]
    if not cols:
        return
    label = {'forward': 'forward (s)', 'train': 'fwd+bwd (s)'}
    print(f'\nwhere the time goes at {size} (one profiled step each, own time of each '
          'operator by kind):')
    header = '| kind | ' + ' | '.join(f'{label[mode]} {m}' for mode, m in cols) + ' |'
    print(header)
    print('|' + '---|' * (len(cols) + 1))
    kinds = [k for k, _ in OP_KINDS] + [OTHER_KIND]
    for kind in kinds + ['total']:
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


def memory_probe(args):
    """In a fresh process: peak memory growth of one forward+backward."""
    import torch
    name, size = args.memory_probe.split(':')
    H, W = parse_size(size)
    model = build(name).to(args.device)
    model.train()
    x = torch.randn(args.batch, 3, H, W, device=args.device)
    if args.device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _step(model, x, True, args.dtype, args.device)
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = _rss_bytes()
        _reset_peak_rss()
        _step(model, x, True, args.dtype, args.device)
        peak = _peak_rss_bytes() - base
    print(json.dumps({'peak_bytes': peak}))


def measure_memory(name, size, args):
    cmd = [sys.executable, osp.abspath(__file__), '--_memory-probe', f'{name}:{size}',
           '--batch', str(args.batch), '--device', args.device, '--dtype', args.dtype]
    if args.threads:
        cmd += ['--threads', str(args.threads)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f'memory probe {name} {size} failed:\n{res.stderr[-2000:]}')
    return json.loads(res.stdout.strip().splitlines()[-1])['peak_bytes']


def mm_rate(device):
    """Multiply-accumulates per second of a dense float32 2048x2048 matrix product."""
    import torch
    n = 2048
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(2):
        torch.mm(a, b)
    times = []
    for _ in range(5):
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return n**3 / statistics.median(times)


def main(argv=None):
    args = parse_args(argv)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        return memory_probe(args)

    from pale_mm.analysis import complexity
    results = {}
    rate = None
    for size in args.sizes:
        H, W = parse_size(size)
        x = torch.randn(args.batch, 3, H, W, device=args.device)
        models = {}
        for name in args.models:
            torch.manual_seed(0)
            models[name] = build(name).to(args.device)
        r = results.setdefault(size, {name: {} for name in args.models})
        for mode, key in (('forward', 'forward_s'), ('train', 'train_s')):
            if mode not in args.modes:
                continue
            times, ratios = time_models(models, x, mode == 'train', args)
            for name in args.models:
                r[name][key] = times[name]
            if ratios:
                r.setdefault('ratio', {})[key] = statistics.median(ratios)
            if mode == 'forward' and size == str(args.util_size):
                rate = mm_rate(args.device)  # right after, on the machine as it is now
        if 'profile' in args.modes:
            prof = r.setdefault('profile', {})
            for mode in ('forward', 'train'):
                for name in args.models:
                    prof.setdefault(name, {})[mode] = profile_step(
                        models[name], x, mode == 'train', args)
        del models
        if 'memory' in args.modes:
            for name in args.models:
                r[name]['peak_mib'] = measure_memory(name, size, args) / 2**20
    # fraction of the dense matmul rate reached by Pale-T's forward at 512x512
    util = None
    us = str(args.util_size)
    if 'pale_t' in args.models and 'forward' in args.modes and us in results:
        model = build('pale_t').eval()
        macs = complexity(model, torch.randn(1, 3, args.util_size, args.util_size))['macs']
        util = dict(size=args.util_size,
                    pale_t_macs_per_s=macs * args.batch / results[us]['pale_t']['forward_s'],
                    mm_macs_per_s=rate)
        util['fraction'] = util['pale_t_macs_per_s'] / rate

    device = (torch.cuda.get_device_name() if args.device.startswith('cuda') else
              f'{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads')
    print(f'\ndevice: {args.device} ({device}); dtype {args.dtype}; batch {args.batch}; '
          f'{args.rounds} rounds of {args.repeats} timed steps after {args.warmup} warm-up '
          f'per model; torch {torch.__version__}')
    cols = [('forward_s', 'forward (s)'), ('train_s', 'fwd+bwd (s)'),
            ('peak_mib', 'fwd+bwd peak (MiB)')]
    cols = [c for c in cols if any(c[0] in r.get(m, {}) for r in results.values()
                                   for m in args.models)]
    header = '| size | ' + ' | '.join(
        f'{label} {m}' for key, label in cols for m in args.models)
    both = set(MODELS) <= set(args.models)
    if both:
        header += ' | ' + ' | '.join(f'{label} Pale/Swin' for key, label in cols)
    if cols:
        print(header + ' |')
        print('|' + '---|' * (header.count('|')))
    for size, r in results.items():
        if not cols:
            break
        row = [size] + [f"{r[m][key]:.3f}" if key != 'peak_mib' else f"{r[m][key]:.0f}"
                        for key, _ in cols for m in args.models]
        if both:  # timings: the median of the per-round ratios; memory: one probe each
            row += [f"{r.get('ratio', {}).get(key, r['pale_t'][key] / r['swin_t'][key]):.2f}"
                    for key, _ in cols]
        print('| ' + ' | '.join(row) + ' |')
    for size, r in results.items():
        if 'profile' in r:
            print_profile(size, r['profile'], args.models)
    if util:
        print(f"\nPale-T forward at {us}x{us}: {util['pale_t_macs_per_s'] / 1e9:.1f} GMAC/s; "
              f"torch.mm 2048x2048 float32: {util['mm_macs_per_s'] / 1e9:.1f} GMAC/s; "
              f"fraction {util['fraction']:.2f}")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(results=results, utilisation=util, device=device,
                           dtype=args.dtype, batch=args.batch), f, indent=2)
    return results, util


if __name__ == '__main__':
    main()
