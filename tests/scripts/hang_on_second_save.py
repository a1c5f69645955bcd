"""tests/test_upstream_tools.py: a library's own train.py (as __main__), where the second
checkpoint that the hardening's atomic backend writes stops half way: READY is touched and
the process sleeps, to be killed there.

    python tests/scripts/hang_on_second_save.py READY TOOL [ARGS...]
"""
import os
import runpy
import sys

import pale_mm.hardening as hardening

from half_written import atomic_write_halting_halfway

ready, tool, args = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path[0] = os.getcwd()  # as for the tool run directly
real_atomic_write = hardening.atomic_write
halting = atomic_write_halting_halfway(real_atomic_write, ready)
saves = []


def atomic_write(filename, write):
    saves.append(filename)
    return (real_atomic_write if len(saves) < 2 else halting)(filename, write)


hardening.atomic_write = atomic_write
sys.argv = [tool] + args
runpy.run_path(tool, run_name='__main__')
