"""tests/scripts/kill_mid_save.py and hang_on_second_save.py: a stand-in for
``pale_mm.hardening.atomic_write`` whose write stops half way, touches READY and sleeps, to
be killed there (the temporary file then holds half a checkpoint)."""
import io
import time


def atomic_write_halting_halfway(real_atomic_write, ready: str):
    def atomic_write(filename, write):
        def half(f):
            buf = io.BytesIO()
            write(buf)
            data = buf.getvalue()
            f.write(data[:len(data) // 2])
            f.flush()
            open(ready, 'w').close()
            time.sleep(600)  # killed here, half written
        real_atomic_write(filename, half)

    return atomic_write
