"""How many threads a process has after its 1-process gloo group is destroyed, by what ran on
the group (docs/cluster.md, "Ending a distributed run"): on torch 2.14, after DDP, the group
outlived its teardown unless torch.distributed.nn was imported before the group existed
(``import pale_mm`` does).

    python scripts/gloo_threads_after_teardown.py

Each case runs in a fresh process: init the group, use it, free what used it, collect
garbage, ``destroy_process_group``, collect again; it prints the thread counts
(``/proc/self/task``) at start, with the group, and after the teardown.
"""
import os
import subprocess
import sys

CASE = r'''
import sys
if sys.argv[1] == 'ddp, pale_mm imported first':
    import pale_mm  # imports torch.distributed.nn before any group exists
import gc, os, socket, torch, torch.distributed as dist
def threads():
    return len(os.listdir('/proc/self/task'))
s = socket.socket(); s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]; s.close()
os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK='0', WORLD_SIZE='1')
torch.set_num_threads(1)
start = threads()
dist.init_process_group('gloo')
with_group = threads()
if sys.argv[1] == 'collectives':
    t = torch.ones(3)
    dist.all_reduce(t)
    dist.broadcast(t, 0)
    dist.all_reduce(t, async_op=True).wait()
else:
    net = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 4))
    net(torch.randn(2, 4)).sum().backward()
    del net
gc.collect()
dist.destroy_process_group()
gc.collect()
print(f'{sys.argv[1]}: threads at start {start}, with the group {with_group}, '
      f'after the teardown {threads()}')
'''


def main():
    import torch
    print(f'torch {torch.__version__}')
    for case in ('collectives', 'ddp', 'ddp, pale_mm imported first'):
        res = subprocess.run([sys.executable, '-c', CASE, case], capture_output=True, text=True,
                             env=dict(os.environ, OMP_NUM_THREADS='1'))
        print(res.stdout.strip() or res.stderr[-2000:])


if __name__ == '__main__':
    main()
