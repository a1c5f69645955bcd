"""tests/test_distributed_exit.py: the threads and the references to the default group of a
1-process gloo group around DDP, in a fresh process. Prints: threads at start, with the
group, after the teardown; the group's references before DDP, after DDP was freed.

    python tests/scripts/group_after_ddp.py PORT
"""
import gc
import os
import sys

from pale_mm.launch.distributed import import_collectives_before_the_group

import_collectives_before_the_group()  # as the tools and HardenedRunner do: before any group
import torch
import torch.distributed as dist


def threads():
    return len(os.listdir('/proc/self/task'))
os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=sys.argv[1], RANK='0', WORLD_SIZE='1')
before = threads()
dist.init_process_group('gloo')
group = dist.group.WORLD
with_group, references_before = threads(), sys.getrefcount(group)
net = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 4))
net(torch.randn(2, 4)).sum().backward()
del net
gc.collect()
references = sys.getrefcount(group)
del group
dist.destroy_process_group()
gc.collect()
print(before, with_group, threads(), references_before, references)
