"""Which tokens one query attends to: a Swin window, a CSWin cross and a Pale pale.

    python tools/visualize_pale.py --size 28 --query 9 12 --out work_dirs/pale_vs_swin_cswin.png

Draws the paper's Figure 1 idea on one feature map: for the query token, the tokens inside
its attention region under Swin (a ``--window`` x ``--window`` window), CSWin (a horizontal
and a vertical stripe of ``--stripe`` rows / columns) and Pale (``--pale`` interlaced rows
and columns, from :func:`pale_mm.models.pale_attention.pale_mask`, the mask the tests hold
the fast attention to). Each panel's title gives the number of tokens attended.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--size', type=int, nargs='+', default=[28],
                        help='feature map H W (one value for a square)')
    parser.add_argument('--query', type=int, nargs=2, default=None, metavar=('ROW', 'COL'),
                        help='the query token (default: a token off the centre)')
    parser.add_argument('--window', type=int, default=7, help='Swin window size')
    parser.add_argument('--stripe', type=int, default=2, help='CSWin stripe width')
    parser.add_argument('--pale', type=int, default=7, help='Pale size s_r = s_c')
    parser.add_argument('--out', default='work_dirs/pale_vs_swin_cswin.png')
    args = parser.parse_args(argv)
    if len(args.size) == 1:
        args.size = args.size * 2
    H, W = args.size
    if args.query is None:
        args.query = [H // 3, W // 2 - 2]
    r, c = args.query
    if not (0 <= r < H and 0 <= c < W):
        parser.error(f'--query {r} {c} lies outside the {H}x{W} map')
    return args


def regions(H, W, r, c, window, stripe, pale):
    """(name, (H, W) bool mask) for the three attention patterns of query (r, c)."""
    import torch

    from pale_mm.models.pale_attention import pale_mask
    hh, ww = torch.meshgrid(torch.arange(H), torch.arange(W), indexing='ij')
    swin = (hh // window == r // window) & (ww // window == c // window)
    cswin = (hh // stripe == r // stripe) | (ww // stripe == c // stripe)
    rows, cols = pale_mask(H, W, pale)
    q = r * W + c
    pale_region = (rows[q] | cols[q]).view(H, W)
    return [(f'Swin window {window}x{window}', swin),
            (f'CSWin cross, stripe width {stripe}', cswin),
            (f'Pale, pale size {pale}', pale_region)]


def main(argv=None):
    args = parse_args(argv)
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np
    H, W = args.size
    r, c = args.query
    panels = regions(H, W, r, c, args.window, args.stripe, args.pale)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6))
    for ax, (name, mask) in zip(axes, panels):
        img = np.ones((H, W, 3))
        img[mask.numpy()] = (0.30, 0.55, 0.85)
        img[r, c] = (0.85, 0.20, 0.15)
        ax.imshow(img, interpolation='nearest')
        ax.set_xticks(np.arange(-.5, W, 1), minor=True)
        ax.set_yticks(np.arange(-.5, H, 1), minor=True)
        ax.grid(which='minor', color='0.8', linewidth=0.4)
        ax.tick_params(which='both', bottom=False, left=False, labelbottom=False,
                       labelleft=False)
        ax.set_title(f'{name}\n{int(mask.sum())} of {H * W} tokens', fontsize=10)
    fig.suptitle(f'Tokens the query (red, row {r}, col {c}) attends to on a {H}x{W} map')
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    from pale_mm.fileio import written_atomically
    with written_atomically(args.out, suffix=".png") as tmp:  # matplotlib reads the suffix
        fig.savefig(tmp, dpi=110)
    print(f'wrote {args.out}')
    return {name: int(mask.sum()) for name, mask in panels}


if __name__ == '__main__':
    main()
