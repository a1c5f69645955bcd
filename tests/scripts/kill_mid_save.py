"""tests/test_resume_after_kill.py: mmengine's save_checkpoint through the hardening's atomic
file backend (as HardenedRunner saves), whose write stops half way, touches READY and
sleeps, to be killed there.

    python tests/scripts/kill_mid_save.py PATH READY
"""
import io
import sys
import time

import torch
from mmengine.runner.checkpoint import save_checkpoint

import pale_mm.hardening as hardening

path, ready = sys.argv[1], sys.argv[2]
real_atomic_write = hardening.atomic_write


def write_half_then_hang(filename, write):
    def half(f):
        buf = io.BytesIO()
        write(buf)
        data = buf.getvalue()
        f.write(data[:len(data) // 2])
        f.flush()
        open(ready, 'w').close()
        time.sleep(600)  # killed here, half written
    real_atomic_write(filename, half)


hardening.atomic_write = write_half_then_hang
save_checkpoint({'state_dict': {'w': torch.full((1000,), 2.0)}}, path,
                backend_args=hardening.atomic_backend_args())
