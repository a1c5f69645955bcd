"""How close the fused attention kernel runs to the cost of its own parts, on this machine.

    python tools/attention_floor.py                 # Pale-T stage 1 at 512x512, batch 2

Pale-T's first stage at 512x512 attends within groups of 768-896 tokens with one 32-channel
head per half, and that attention dominates the backbone's training step on the CPU
(``tools/benchmark.py --modes profile``). Every score costs two 32-deep products (``q k^T``
and ``p v``) and one ``exp``. This tool times, for the largest band of row groups of that
stage (the real shape, from :class:`pale_mm.models.pale_attention.PaleLayout`):

* the fused kernel (``scaled_dot_product_attention``), forward and forward+backward, on all
  threads;
* its parts on one thread, over tiles of 256 queries x 512 keys (the tiles the CPU kernel
  uses for such lengths): the forward's two products, the backward's five (``q k^T`` again,
  ``dO v^T``, ``p^T dO``, ``dS k``, ``dS^T q``), and ``torch.exp`` over as many scores (each
  pass computes every exponential once; the backward recomputes them). The other elementwise
  work (scaling, maxima, sums, ``dS = P (dP - D)``) is left out, so the parts are a floor;

and prints the kernel's forward and backward times over their parts' times split across the
threads. A ratio near or under 1 means the kernel is already about as fast as its products and
exponentials allow: an attention written from those pieces in PyTorch would not beat it.
"""
import argparse
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--size', type=int, default=512, help='input side (square)')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--threads', type=int, default=None,
                        help='torch threads (default: all cores)')
    return parser.parse_args(argv)


def _best(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def stage1_band(size, batch):
    """(groups, heads, tokens, d) of the largest row band of Pale-T's stage 1."""
    import torch
    from pale_mm.models.pale_attention import PaleLayout
    side = -(-size // 4)  # the stem's stride 4
    q = torch.empty(batch, side, side, 64)  # Pale-T: C=64, 2 heads (one per half)
    layout = PaleLayout.of(q, 7, 2)
    return max((b.shape for b in layout.gather(q)), key=lambda s: s[0] * s[2] ** 2)


def main(argv=None):
    args = parse_args(argv)
    import torch
    import torch.nn.functional as F
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    groups, heads, n, d = (int(v) for v in stage1_band(args.size, args.batch))
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(groups, heads, n, d, generator=g) for _ in range(3))
    fwd = _best(lambda: F.scaled_dot_product_attention(q, k, v), args.repeats)
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))

    def train():
        F.scaled_dot_product_attention(qg, kg, vg).sum().backward()
    train_s = _best(train, args.repeats)

    scores = groups * heads * n * n
    tq, tk = 256, 512
    tiles = max(1, round(scores / (tq * tk)))
    qt, kt, vt = (torch.randn(r, d, generator=g) for r in (tq, tk, tk))
    s = torch.empty(tq, tk)
    p = torch.empty(tq, tk)
    o = torch.empty(tq, d)

    def products():
        for _ in range(tiles):
            torch.mm(qt, kt.t(), out=s)
            torch.mm(s, vt, out=o)

    dq, dk, dv = torch.empty(tq, d), torch.empty(tk, d), torch.empty(tk, d)

    def backward_products():
        for _ in range(tiles):
            torch.mm(qt, kt.t(), out=s)  # scores again
            torch.mm(o, vt.t(), out=p)  # dP = dO v^T
            torch.mm(s.t(), o, out=dv)  # dV += P^T dO
            torch.mm(p, kt, out=dq)  # dQ += dS k
            torch.mm(p.t(), qt, out=dk)  # dK += dS^T q

    def exps():
        for _ in range(tiles):
            torch.exp(s, out=p)
    torch.set_num_threads(1)
    try:
        products()  # real scores in s before timing exp on them
        prod_s = _best(products, args.repeats)
        exp_s = _best(exps, args.repeats)
        bwd_prod_s = _best(backward_products, args.repeats)
    finally:
        torch.set_num_threads(threads)
    parts = (prod_s + exp_s) / threads
    bwd_parts = (bwd_prod_s + exp_s) / threads
    bwd = train_s - fwd
    macs = 2 * scores * d
    print(f'Pale-T stage-1 row band at {args.size}x{args.size}, batch {args.batch}: '
          f'{groups} groups x {heads} head x {n} tokens x {d} channels, '
          f'{scores / 1e6:.1f}M scores, {macs / 1e9:.2f} GMAC; {threads} threads')
    print(f'fused kernel: forward {fwd * 1e3:.1f} ms ({macs / fwd / 1e9:.1f} GMAC/s), '
          f'forward+backward {train_s * 1e3:.1f} ms')
    print(f'its parts on one thread: forward products {prod_s * 1e3:.1f} ms, backward products '
          f'{bwd_prod_s * 1e3:.1f} ms, exp {exp_s * 1e3:.1f} ms per pass')
    print(f'kernel forward / parts: {fwd / parts:.2f} ({fwd * 1e3:.1f} / {parts * 1e3:.1f} ms); '
          f'kernel backward / parts: {bwd / bwd_parts:.2f} ({bwd * 1e3:.1f} / '
          f'{bwd_parts * 1e3:.1f} ms), parts split over {threads} threads')
    return dict(forward_s=fwd, train_s=train_s, backward_s=bwd, products_s=prod_s,
                backward_products_s=bwd_prod_s, exp_s=exp_s, parts_s=parts,
                backward_parts_s=bwd_parts, ratio=fwd / parts, backward_ratio=bwd / bwd_parts,
                shape=(groups, heads, n, d))


if __name__ == '__main__':
    main()
