"""Preemption: SIGTERM or SIGUSR1 in the middle of a run makes training finish its
iteration, write a checkpoint and exit with 75 ("preempted, resume me"); --resume then ends
with the weights of an uninterrupted run, bit for bit (one process, two processes through
tools/dist_train.sh, and an epoch-based run stopped in the middle of an epoch). A second
signal while the checkpoint is written corrupts nothing. tools/slurm_train.sh requeues a
preempted job and the requeued job resumes (checked with stand-ins for srun and scontrol).

The signals come at a fixed iteration, never after a sleep: a small driver in place of
tools/train.py (the real one runs inside it) signals its own process at iteration AT, or
waits there until the test's signal has arrived."""
import os
import os.path as osp
import signal
import stat
import subprocess
import time

import pytest
from test_resume_after_kill import (
    ROOT,
    assert_same_weights,
    det_run,
    kill_tree,
    seg_run,
    train_cmd,
    train_env,
    uninterrupted,
)

from pale_mm.checkpoint import safe_load
from pale_mm.engine.hooks import PREEMPTED_EXIT_CODE

# end to end through the tools: left out of `make test-quick`
pytestmark = pytest.mark.slow

DRIVER = '''\
"""tools/train.py, stopped at iteration AT (counted from 1) by a signal."""
import io, os, runpy, signal, sys, time
sys.path.insert(0, {root!r})
import torch
from pale_mm.engine.hooks import PreemptionHook

AT, HOW = int(os.environ['PREEMPT_AT']), os.environ['PREEMPT_HOW']
after_train_iter = PreemptionHook.after_train_iter


def signal_at_iteration(self, runner, batch_idx, data_batch=None, outputs=None):
    if runner.iter + 1 == AT:
        if HOW == 'self':  # this process signals itself (SIGUSR1, as slurm's --signal)
            os.kill(os.getpid(), signal.SIGUSR1)
        elif os.environ.get('RANK', '0') == '0':  # rank 0 waits for the test's signal
            open(os.environ['PREEMPT_READY'], 'w').close()
            while self.received is None:
                time.sleep(0.01)
    after_train_iter(self, runner, batch_idx, data_batch, outputs)


PreemptionHook.after_train_iter = signal_at_iteration

if HOW == 'self':  # a second signal (SIGTERM) arrives halfway through writing the checkpoint
    real_save = torch.save

    def save_with_a_signal_halfway(obj, f, *args, **kwargs):
        if not (isinstance(obj, dict) and obj.get('meta', {{}}).get('iter') == AT):
            return real_save(obj, f, *args, **kwargs)  # not the preemption's checkpoint
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[:len(data) // 2])
        os.kill(os.getpid(), signal.SIGTERM)
        f.write(data[len(data) // 2:])

    torch.save = save_with_a_signal_halfway

sys.argv = [{train!r}] + sys.argv[1:]
runpy.run_path({train!r}, run_name='__main__')
'''


def _driver(tmp_path):
    """A folder with the driver as train.py beside a copy of tools/dist_train.sh."""
    folder = tmp_path / 'tools'
    folder.mkdir()
    (folder / 'train.py').write_text(DRIVER.format(root=ROOT,
                                                   train=osp.join(ROOT, 'tools', 'train.py')))
    (folder / 'dist_train.sh').write_bytes(open(osp.join(ROOT, 'tools', 'dist_train.sh'),
                                                'rb').read())
    return str(folder / 'train.py')


def _preempt(cmd, env, tmp_path, ready=None, timeout=600):
    """Run ``cmd`` until it exits; with ``ready``, send SIGUSR1 to it once the driver
    waits at its iteration (slurm's ``--signal=USR1@...``; dist_train.sh passes it on to a
    torchrun that has --signals_to_handle, and as SIGTERM to an older one)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        if ready:
            deadline = time.time() + timeout
            while not osp.exists(ready):
                assert proc.poll() is None, proc.stdout.read()[-5000:]
                assert time.time() < deadline, 'the run never reached the iteration'
                time.sleep(0.01)
            proc.send_signal(signal.SIGUSR1)
        log, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
    (tmp_path / 'preempted.log').write_text(log)
    return proc.returncode, log


def _preempt_resume_compare(kind, nproc, at, checkpoint, tmp_path_factory, tmp_path):
    config, options, final = (seg_run if kind == 'seg' else det_run)(tmp_path_factory)
    straight = uninterrupted(kind, nproc, tmp_path_factory)
    script = _driver(tmp_path)
    work_dir = tmp_path / 'work'
    env = train_env()
    env.update(PREEMPT_AT=str(at), PREEMPT_HOW='self' if nproc == 1 else 'wait',
               PREEMPT_READY=str(tmp_path / 'ready'))
    rc, log = _preempt(train_cmd(config, work_dir, options, nproc, script=script), env,
                       tmp_path, ready=None if nproc == 1 else env['PREEMPT_READY'])
    assert rc == PREEMPTED_EXIT_CODE, log[-5000:]
    saved = work_dir / checkpoint
    assert f'preempted after iteration {at}; saving {saved}' in log, log[-5000:]
    assert (work_dir / 'last_checkpoint').read_text() == str(saved)
    assert safe_load(saved)['meta']['iter'] == at
    assert not (work_dir / final).exists()
    assert not [n for n in os.listdir(work_dir) if n.endswith('.tmp')]  # no half-written file
    res = subprocess.run(train_cmd(config, work_dir, options, nproc, resume=True), cwd=ROOT,
                         env=train_env(), capture_output=True, text=True, timeout=600)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-5000:]
    assert f'Load checkpoint from {saved}' in log, log[-3000:]
    assert 'not with the random draws' not in log, log[-3000:]
    assert_same_weights(straight, work_dir / final)
    return log


def test_sigusr1_then_sigterm_while_saving_one_process(tmp_path_factory, tmp_path):
    """SIGUSR1 at iteration 6 of 12 (between the checkpoints at 4 and 8), SIGTERM halfway
    through writing iter_6.pth: the run saves completely, exits with 75, and the resumed run
    ends with the uninterrupted run's weights."""
    _preempt_resume_compare('seg', 1, 6, 'iter_6.pth', tmp_path_factory, tmp_path)


def test_sigusr1_to_dist_train_two_processes(tmp_path_factory, tmp_path):
    """SIGUSR1 to tools/dist_train.sh while rank 0 is at iteration 6: torchrun passes it on,
    both ranks stop after iteration 6, the script exits with 75, and the resumed 2-process
    run ends with the uninterrupted 2-process run's weights."""
    _preempt_resume_compare('seg', 2, 6, 'iter_6.pth', tmp_path_factory, tmp_path)


def test_epoch_based_run_preempted_mid_epoch(tmp_path_factory, tmp_path):
    """Mask R-CNN, 4 iterations an epoch: SIGUSR1 at iteration 6 (the 2nd of epoch 2) saves
    iter_6.pth; the resumed run skips the 2 batches of epoch 2 already trained and ends with
    the uninterrupted run's weights."""
    log = _preempt_resume_compare('det', 1, 6, 'iter_6.pth', tmp_path_factory, tmp_path)
    assert 'skipping the 2 batches of epoch 2 trained before the checkpoint' in log


# ---------------------------------------------------------------------------------------
# tools/slurm_train.sh without slurm: srun and scontrol stand-ins that record their arguments
FAKE = '''#!/usr/bin/env bash
echo "$@" >> "{log}"
exit ${{FAKE_SRUN_EXIT:-0}}
'''


def _slurm_train(tmp_path, srun_exit, **env_vars):
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir(exist_ok=True)
    for name in ('srun', 'scontrol'):
        path = bin_dir / name
        path.write_text(FAKE.format(log=tmp_path / f'{name}.log'))
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
        (tmp_path / f'{name}.log').write_text('')
    env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}
    env.update(PATH=f'{bin_dir}:{env["PATH"]}', FAKE_SRUN_EXIT=str(srun_exit), **env_vars)
    res = subprocess.run(['bash', osp.join(ROOT, 'tools', 'slurm_train.sh'), 'part', 'job',
                          'cfg.py', str(tmp_path / 'work'), '--amp'],
                         env=env, capture_output=True, text=True, timeout=60)
    return (res.returncode, (tmp_path / 'srun.log').read_text().split(),
            (tmp_path / 'scontrol.log').read_text().split())


def test_slurm_train_requeues_a_preempted_job(tmp_path):
    rc, srun, scontrol = _slurm_train(tmp_path, PREEMPTED_EXIT_CODE, SLURM_JOB_ID='4242')
    assert rc == PREEMPTED_EXIT_CODE
    assert scontrol == ['requeue', '4242']
    assert '--resume' not in srun and srun[-3:] == ['--launcher', 'slurm', '--amp']


def test_slurm_train_requeued_job_resumes(tmp_path):
    rc, srun, scontrol = _slurm_train(tmp_path, 0, SLURM_JOB_ID='4242', SLURM_RESTART_COUNT='1')
    assert rc == 0 and scontrol == []
    assert srun[-2:] == ['--amp', '--resume']  # after the user's options: it wins


def test_slurm_train_passes_other_failures_through(tmp_path):
    rc, _, scontrol = _slurm_train(tmp_path, 1, SLURM_JOB_ID='4242')
    assert rc == 1 and scontrol == []
    # outside a batch job a preempted run cannot be requeued: it says so and exits with 75
    rc, _, scontrol = _slurm_train(tmp_path, PREEMPTED_EXIT_CODE)
    assert rc == PREEMPTED_EXIT_CODE and scontrol == []
