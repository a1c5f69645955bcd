"""Pale-T's whole training step (forward + backward) with the depthwise conv weights in the
channels-last layout (as PaleTransformer builds them) against the contiguous layout they had
before, alternating in one process so that both see the same machine.

    python scripts/depthwise_layout_ab.py [--size 512] [--batch 2] [--rounds 4]

Prints the seconds per step of each round and the medians (docs/cluster.md).
"""
import argparse
import os.path as osp
import statistics
import sys
import time

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from pale_mm import PaleTransformer  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--size', type=int, default=512)
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--rounds', type=int, default=4)
    parser.add_argument('--steps', type=int, default=2, help='timed steps per round and layout')
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = PaleTransformer().train()
    depthwise = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    x = torch.randn(args.batch, 3, args.size, args.size)

    def use_layout(channels_last):
        for conv in depthwise:
            w = conv.weight.detach()
            fresh = (torch.empty_like(w, memory_format=torch.channels_last) if channels_last
                     else torch.empty(w.shape, dtype=w.dtype))
            conv.weight = torch.nn.Parameter(fresh.copy_(w))

    def step():
        model.zero_grad(set_to_none=True)
        sum(o.mean() for o in model(x)).backward()

    seconds = {'channels-last': [], 'contiguous': []}
    for r in range(args.rounds):
        for name in seconds:
            use_layout(name == 'channels-last')
            step()  # warm-up
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            seconds[name].append((time.perf_counter() - start) / args.steps)
            print(f'round {r} {name}: {seconds[name][-1]:.2f} s/step', flush=True)
    print('median s/step: ' + ', '.join(f'{name} {statistics.median(v):.2f}'
                                        for name, v in seconds.items()))


if __name__ == '__main__':
    main()
