"""tests/test_resume_after_kill.py: mmengine's save_checkpoint through the hardening's atomic
file backend (as HardenedRunner saves), whose write stops half way, touches READY and
sleeps, to be killed there.

    python tests/scripts/kill_mid_save.py PATH READY
"""
import sys

import torch
from mmengine.runner.checkpoint import save_checkpoint

import pale_mm.hardening as hardening

from half_written import atomic_write_halting_halfway

path, ready = sys.argv[1], sys.argv[2]
hardening.atomic_write = atomic_write_halting_halfway(hardening.atomic_write, ready)
save_checkpoint({'state_dict': {'w': torch.full((1000,), 2.0)}}, path,
                backend_args=hardening.atomic_backend_args())
