"""Distributed runs end cleanly (docs/cluster.md, "Ending a distributed run").

A process that exits with its gloo process group alive aborted at random after a finished
run (``terminate called without an active exception``, SIGABRT): gloo's worker threads still
held work while the interpreter finalized. tools/train.py and tools/test.py now destroy the
group on every way out. The first tests check that each way out destroys it (one process,
in this process); the last runs the 2-process train and test commands back to back beside a
competing CPU load, as the abort showed, and reads their logs for it and for DDP's
gradient-layout warning."""
import contextlib
import os
import os.path as osp
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
from det_common import free_port, tool
from seg_common import small_seg_options

from pale_mm import distributed
from pale_mm.data.synthetic_ade import make_ade
from pale_mm.preemption import PREEMPTED_EXIT_CODE, TrainingPreempted

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, 'configs/upernet/pale_t_ade20k.py')

pytestmark = pytest.mark.usefixtures('one_torch_thread')


@pytest.fixture
def gloo_group(monkeypatch):
    """A one-process gloo group started as torchrun's processes start theirs."""
    monkeypatch.setenv('MASTER_ADDR', '127.0.0.1')
    monkeypatch.setenv('MASTER_PORT', str(free_port()))
    for name, value in (('RANK', '0'), ('LOCAL_RANK', '0'), ('WORLD_SIZE', '1'),
                        ('LOCAL_WORLD_SIZE', '1')):
        monkeypatch.setenv(name, value)
    dist.init_process_group('gloo')
    yield
    if dist.is_initialized():  # a test that failed before the teardown
        dist.destroy_process_group()


@pytest.mark.parametrize('way_out', ['returns', 'error', 'preempted'])
def test_the_run_destroys_the_process_group(gloo_group, way_out):
    with pytest.raises(SystemExit) if way_out != 'returns' else contextlib.nullcontext():
        with distributed.process_group_ends_with_the_run():
            assert dist.is_initialized()
            if way_out == 'error':
                sys.exit('train.py: error: something the user can fix')
            if way_out == 'preempted':
                raise TrainingPreempted('iter_4.pth')
    assert not dist.is_initialized()


@pytest.mark.parametrize('way_out, destroyed', [('returns', True), ('preempted', True),
                                                ('error', False)])
def test_a_failing_nccl_process_leaves_the_abort_to_its_exit(monkeypatch, way_out,
                                                              destroyed):
    """NCCL's teardown aborts its communicators, which all processes must do together:
    after an error in one process (the others may wait in a collective) it is left to the
    process's exit; where all processes end together the group is destroyed."""
    calls = []
    monkeypatch.setattr(dist, 'is_initialized', lambda: True)
    monkeypatch.setattr(dist, 'get_backend', lambda *a: 'nccl')
    monkeypatch.setattr(dist, 'destroy_process_group', lambda *a: calls.append('destroy'))
    try:
        with distributed.process_group_ends_with_the_run():
            if way_out == 'error':
                raise RuntimeError('a rank failed')
            if way_out == 'preempted':
                raise TrainingPreempted('iter_4.pth')
    except (RuntimeError, SystemExit) as e:
        assert way_out != 'returns' and (way_out == 'error') == isinstance(e, RuntimeError)
        if isinstance(e, SystemExit):
            assert e.code == PREEMPTED_EXIT_CODE
    assert calls == (['destroy'] if destroyed else [])


@pytest.fixture(scope='module')
def ade(tmp_path_factory):
    return make_ade(str(tmp_path_factory.mktemp('ade')), num_train=8, num_val=3,
                    image_size=(64, 64), seed=0, num_classes=5)


def test_tools_destroy_the_process_group(ade, gloo_group, tmp_path):
    """tools/train.py and tools/test.py with --launcher pytorch end without a process group,
    after success and after an error the user can fix."""
    work_dir = str(tmp_path / 'work')
    options = small_seg_options(ade, 1, 2)
    tool('train').main([CONFIG, '--launcher', 'pytorch', '--work-dir', work_dir,
                        '--cfg-options'] + options)
    assert not dist.is_initialized()
    dist.init_process_group('gloo')
    tool('test').main([CONFIG, osp.join(work_dir, 'iter_1.pth'), '--launcher', 'pytorch',
                       '--work-dir', work_dir, '--cfg-options'] + options)
    assert not dist.is_initialized()
    dist.init_process_group('gloo')
    with pytest.raises(SystemExit, match='error'):
        tool('test').main([CONFIG, osp.join(work_dir, 'no_such.pth'), '--launcher',
                           'pytorch', '--work-dir', work_dir, '--cfg-options'] + options)
    assert not dist.is_initialized()


# Back-to-back 2-process train and test commands beside a competing CPU load, as the abort
# showed (1 run in 30 before the fix; both full suite runs of the day it was filed).
ROUNDS = 3


def _busy_loops(n):
    """n processes spinning on the CPU (the test ends them)."""
    return [subprocess.Popen([sys.executable, '-c', 'while True: pass']) for _ in range(n)]


@pytest.mark.slow
def test_two_process_train_and_test_end_cleanly_under_load(ade, tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS='1')
    options = small_seg_options(ade, 2, 4) + ['train_dataloader.batch_size=2']
    load = _busy_loops(2)
    try:
        for i in range(ROUNDS):
            work_dir = tmp_path / f'round{i}'
            commands = {
                'train': ['bash', osp.join(ROOT, 'tools/dist_train.sh'), CONFIG, '2',
                          '--work-dir', str(work_dir), '--cfg-options'] + options,
                'test': ['bash', osp.join(ROOT, 'tools/dist_test.sh'), CONFIG,
                         str(work_dir / 'iter_2.pth'), '2', '--work-dir', str(work_dir),
                         '--cfg-options'] + options,
            }
            for name, cmd in commands.items():
                start = time.monotonic()
                proc = subprocess.run(cmd, cwd=tmp_path, env=dict(env, PORT=str(free_port())),
                                      capture_output=True, text=True, timeout=600)
                log = proc.stdout + proc.stderr
                (tmp_path / f'{name}{i}.log').write_text(log)
                where = f'round {i} {name} ({time.monotonic() - start:.0f} s), log ' \
                        f'{tmp_path / f"{name}{i}.log"}'
                assert 'terminate called' not in log, where
                assert proc.returncode == 0, f'exit {proc.returncode}: {where}\n{log[-3000:]}'
                assert 'Grad strides do not match bucket view strides' not in log, where
    finally:
        for p in load:
            p.kill()
            p.wait()
