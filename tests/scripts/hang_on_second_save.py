"""tests/test_upstream_tools.py: a library's own train.py (as __main__), where the second
checkpoint that the hardening's atomic backend writes stops half way: READY is touched and
the process sleeps, to be killed there.

    python tests/scripts/hang_on_second_save.py READY TOOL [ARGS...]
"""
import io
import os
import runpy
import sys
import time

import pale_mm.hardening as hardening

ready, tool, args = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path[0] = os.getcwd()
real_atomic_write = hardening.atomic_write
saves = []


def write(filename, callback):
    saves.append(filename)
    if len(saves) < 2:
        return real_atomic_write(filename, callback)

    def half(f):
        buf = io.BytesIO()
        callback(buf)
        data = buf.getvalue()
        f.write(data[:len(data) // 2])
        f.flush()
        open(ready, 'w').close()
        time.sleep(600)  # killed here, half written
    real_atomic_write(filename, half)


hardening.atomic_write = write
sys.argv = [tool] + args
runpy.run_path(tool, run_name='__main__')
