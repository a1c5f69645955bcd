"""tests/test_resume_after_kill.py: mmengine's save_checkpoint (atomic through pale_mm) that
writes half the file, touches READY and sleeps, to be killed there.

    python tests/scripts/kill_mid_save.py PATH READY
"""
import io, sys, time
import torch
import pale_mm  # noqa: F401  (atomic saving)
from mmengine.runner.checkpoint import save_checkpoint
path, ready = sys.argv[1], sys.argv[2]
real_save = torch.save

def save_half_then_hang(obj, f):
    buf = io.BytesIO()
    real_save(obj, buf)
    data = buf.getvalue()
    f.write(data[:len(data) // 2])
    f.flush()
    open(ready, 'w').close()
    time.sleep(600)  # killed here, half written

torch.save = save_half_then_hang
save_checkpoint({'state_dict': {'w': torch.full((1000,), 2.0)}}, path)
