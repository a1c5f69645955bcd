"""A crash must not cost the run: training killed with SIGKILL after a checkpoint and
started again with --resume ends with exactly the weights of an uninterrupted run (UperNet
and Mask R-CNN, deterministic CPU runs with a fixed seed, one process and two processes over
gloo); a process killed while writing a checkpoint leaves the earlier checkpoints intact;
mmengine's deletion of old checkpoints waits for the new one.

The uninterrupted runs are made once per test session (:func:`uninterrupted`) and shared with
tests/test_preemption.py."""
import glob
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import pytest
import torch

from pale_mm.checkpoint import safe_load
from pale_mm.synthetic.ade import make_ade

from det_common import (
    LIGHT_HEADS,
    NO_VAL,
    ROOT,
    coco_data,
    data_options,
    free_port,
    torch_threads_env,
    write_small_config,
)
from seg_common import small_seg_options

# end to end through the tools: left out of `make test-quick`
pytestmark = pytest.mark.slow

TRAIN = osp.join(ROOT, 'tools', 'train.py')
DIST_TRAIN = osp.join(ROOT, 'tools', 'dist_train.sh')
SEG_CONFIG = osp.join(ROOT, 'configs/upernet/pale_t_ade20k.py')
_cache = {}


def seg_run(tmp_path_factory):
    """UperNet (iteration-based): 12 iterations, a checkpoint and a validation every 4,
    stochastic depth on, so that the random state matters; the data read by a persistent
    worker process. (config, options, final name)"""
    if 'seg' not in _cache:
        ade = make_ade(str(tmp_path_factory.mktemp('ade')), num_train=8, num_val=2,
                       image_size=(64, 64), seed=0, num_classes=4)
        options = small_seg_options(ade, 12, 12) + [
            'model.backbone.drop_path_rate=0.2', 'train_cfg.val_interval=4',
            'default_hooks.checkpoint.interval=4', 'train_dataloader.batch_size=2',
            'train_dataloader.num_workers=1', 'train_dataloader.persistent_workers=True']
        _cache['seg'] = (SEG_CONFIG, options, 'iter_12.pth')
    return _cache['seg']


def det_run(tmp_path_factory):
    """Mask R-CNN (epoch-based): 3 epochs of the 8 images in batches of 2 per process, a
    checkpoint every epoch; the RPN and RoI samplers and stochastic depth draw random
    numbers every iteration; the data read by a worker process started for each epoch.
    (config, options, final name)"""
    if 'det' not in _cache:
        info = coco_data(tmp_path_factory)
        config = write_small_config(tmp_path_factory.mktemp('det_config'))
        options = data_options(info) + LIGHT_HEADS + [
            'model.backbone.init_cfg=None', 'train_cfg.max_epochs=3', NO_VAL,
            'param_scheduler.0.end=2', 'optim_wrapper.optimizer.lr=0.001', 'randomness.seed=0',
            'default_hooks.checkpoint.interval=1', 'train_dataloader.num_workers=1',
            'train_dataloader.persistent_workers=False']
        _cache['det'] = (config, options, 'epoch_3.pth')
    return _cache['det']


def train_cmd(config, work_dir, options, nproc=1, resume=False, script=TRAIN):
    """tools/train.py for one process, tools/dist_train.sh (torchrun, gloo) for several."""
    launcher = ([sys.executable, script] if nproc == 1 else
                ['bash', osp.join(osp.dirname(script), 'dist_train.sh')])
    return (launcher + [config] + ([str(nproc)] if nproc > 1 else [])
            + ['--work-dir', str(work_dir)] + (['--resume'] if resume else [])
            + ['--cfg-options', *options])


def train_env():
    env = torch_threads_env(1)
    env.update(PYTHON=sys.executable, PORT=str(free_port()))
    return env


def run(cmd, timeout=600):
    res = subprocess.run(cmd, cwd=ROOT, env=train_env(), capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return res


def uninterrupted(kind, nproc, tmp_path_factory):
    """The final checkpoint of the uninterrupted run of ``kind`` ('seg' or 'det') with
    ``nproc`` processes, trained once per session."""
    key = (kind, nproc)
    if key not in _cache:
        config, options, final = (seg_run if kind == 'seg' else det_run)(tmp_path_factory)
        work_dir = tmp_path_factory.mktemp(f'{kind}_{nproc}proc_straight')
        run(train_cmd(config, work_dir, options, nproc))
        _cache[key] = str(work_dir / final)
    return _cache[key]


def _process_tree(pid):
    """``pid`` and all its descendants (torchrun starts each worker in a session of its own,
    out of reach of a signal to the launcher's process group)."""
    children = {}
    for entry in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{entry}/stat') as f:
                ppid = int(f.read().rsplit(')', 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def kill_tree(pid):
    for p in _process_tree(pid):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _run_and_kill_after_first_checkpoint(cmd, work_dir, timeout=600):
    """Start training and SIGKILL it (every process of it, as when a machine dies) as soon
    as it has written a checkpoint."""
    marker = osp.join(str(work_dir), 'last_checkpoint')
    log = open(osp.join(str(work_dir) + '.killed.log'), 'w')
    proc = subprocess.Popen(cmd, cwd=ROOT, env=train_env(), stdout=log,
                            stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    try:
        while not osp.exists(marker):
            assert proc.poll() is None, f'training ended (rc {proc.returncode}) before a checkpoint'
            assert time.time() < deadline, 'no checkpoint in time'
            time.sleep(0.01)
        kill_tree(proc.pid)
        rc = proc.wait()
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
        log.close()
    assert rc == -signal.SIGKILL, f'the run finished before it could be killed (rc {rc})'
    with open(marker) as f:
        return f.read().strip()


def assert_same_weights(path_a, path_b):
    a, b = safe_load(path_a)['state_dict'], safe_load(path_b)['state_dict']
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f'{len(differ)} of {len(a)} tensors differ, e.g. {differ[:5]}'
    # and the run did continue from the checkpoint (not from scratch)
    assert safe_load(path_a)['meta']['iter'] == safe_load(path_b)['meta']['iter']


def _kill_resume_compare(kind, nproc, tmp_path_factory, tmp_path, checkpoint_names):
    """Killed-after-a-checkpoint + --resume ends with the uninterrupted run's weights."""
    config, options, final = (seg_run if kind == 'seg' else det_run)(tmp_path_factory)
    straight = uninterrupted(kind, nproc, tmp_path_factory)
    crashed = tmp_path / 'crashed'
    os.makedirs(crashed)
    last = _run_and_kill_after_first_checkpoint(
        train_cmd(config, crashed, options, nproc), crashed)
    assert osp.basename(last) in checkpoint_names
    assert not osp.exists(crashed / final)  # it really stopped early
    res = run(train_cmd(config, crashed, options, nproc, resume=True))
    log = res.stdout + res.stderr
    assert f'Load checkpoint from {last}' in log and 'resumed epoch' in log, log[-3000:]
    assert 'not with the random draws' not in log, log[-3000:]  # no "not exact" warning
    assert_same_weights(straight, crashed / final)
    if nproc > 1:  # each rank's random state went into the checkpoint
        saved = safe_load(last)['rng_state']
        assert saved['world_size'] == nproc and len(saved['ranks']) == nproc


# Two processes: one process is the same path with one rank, and tests/test_preemption.py
# resumes one-process segmentation and detection runs bit for bit already.
@pytest.mark.parametrize('nproc', [2])
def test_segmentation_resume_after_sigkill_matches_uninterrupted_run(nproc, tmp_path_factory,
                                                                     tmp_path):
    _kill_resume_compare('seg', nproc, tmp_path_factory, tmp_path, {'iter_4.pth', 'iter_8.pth'})


@pytest.mark.parametrize('nproc', [2])
def test_detection_resume_after_sigkill_matches_uninterrupted_run(nproc, tmp_path_factory,
                                                                  tmp_path):
    _kill_resume_compare('det', nproc, tmp_path_factory, tmp_path,
                         {'epoch_1.pth', 'epoch_2.pth'})


def test_resume_with_another_number_of_processes_says_so(monkeypatch):
    """A checkpoint of a 2-process run resumed by one process: a warning names both counts
    (each process would read other samples, so the run cannot be exact), and no random
    state is taken over."""
    from types import SimpleNamespace

    import pale_mm.engine.hooks.exact_resume_hook as hooks
    logged = []
    monkeypatch.setattr(hooks, 'print_log', lambda msg, **kwargs: logged.append(msg))
    hook = hooks.ExactResumeHook()
    state = dict(epoch_start=None, iter_end=dict(torch=torch.get_rng_state()))
    hook.after_load_checkpoint(None, dict(meta=dict(iter=8), rng_state=dict(
        world_size=2, ranks=[state, state])))
    runner = SimpleNamespace(iter=8, epoch=0, train_loop=None, train_dataloader=None)
    hook.before_train(runner)
    assert len(logged) == 1 and ('resumed at iteration 8: the checkpoint was written by 2 '
                                 'processes, this run has 1') in logged[0], logged
    assert 'Training continues, but not with the random draws' in logged[0]
    assert hook._iter_end is None  # nothing of the other run's state is used


def test_kill_while_saving_keeps_the_previous_checkpoint(tmp_path):
    from pale_mm.launch.work_dir import find_resume_checkpoint
    work_dir = tmp_path / 'work'
    work_dir.mkdir()
    path = work_dir / 'epoch_1.pth'
    torch.save({'state_dict': {'w': torch.full((1000,), 1.0)}}, path)
    (work_dir / 'last_checkpoint').write_text(str(path))
    ready = tmp_path / 'half_written'
    proc = subprocess.Popen([sys.executable, osp.join(ROOT, 'tests', 'scripts', 'kill_mid_save.py'),
                             str(path), str(ready)],
                            cwd=ROOT)
    deadline = time.time() + 120
    while not ready.exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # the half-written data went to a temporary file, never to the checkpoint itself
    leftovers = glob.glob(str(work_dir / '.epoch_1.pth.*.tmp'))
    assert len(leftovers) == 1 and os.path.getsize(leftovers[0]) > 0
    assert torch.equal(safe_load(path)['state_dict']['w'], torch.full((1000,), 1.0))
    # --resume picks the intact checkpoint and clears the killed save's temporary file
    with pytest.warns(UserWarning, match='unfinished save of a killed run'):
        assert find_resume_checkpoint(str(work_dir)) == str(path)
    assert not glob.glob(str(work_dir / '.*.tmp'))


def test_resume_skips_an_incomplete_checkpoint(tmp_path):
    """A truncated newest checkpoint (copied over incompletely, or written by a tool without
    atomic saves) is passed over for the newest complete one."""
    from pale_mm.launch.work_dir import find_resume_checkpoint
    good, bad = tmp_path / 'iter_4.pth', tmp_path / 'iter_8.pth'
    torch.save({'state_dict': {'w': torch.ones(1000)}}, good)
    torch.save({'state_dict': {'w': torch.ones(1000)}}, bad)
    bad.write_bytes(bad.read_bytes()[:1000])
    (tmp_path / 'last_checkpoint').write_text(str(bad))
    with pytest.warns(UserWarning, match='iter_8.pth.*resuming from .*iter_4.pth'):
        assert find_resume_checkpoint(str(tmp_path)) == str(good)


def test_old_checkpoint_is_deleted_only_after_the_new_one_is_saved(tmp_path, monkeypatch,
                                                                  hardened_toy_runner):
    """max_keep_ckpts=1: mmengine deletes the only checkpoint before writing the next one; a
    save that fails (disk full) would leave nothing. In a HardenedRunner the old one stays."""
    import pale_mm.hardening as hardening  # the atomic file backend writes through it
    runner = hardened_toy_runner(
        tmp_path, train_cfg=dict(by_epoch=True, max_epochs=3),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1,
                                           max_keep_ckpts=1)))
    real_write = hardening.atomic_write
    calls = []

    def save_fails_on_third(filename, write):
        calls.append(filename)
        if len(calls) == 3:
            raise OSError(28, 'No space left on device')
        real_write(filename, write)

    monkeypatch.setattr(hardening, 'atomic_write', save_fails_on_third)
    with pytest.raises(OSError, match='No space left'):
        runner.train()
    assert sorted(os.listdir(tmp_path / '')) and (tmp_path / 'epoch_2.pth').exists()
    assert not (tmp_path / 'epoch_1.pth').exists()  # deleted once epoch_2 was written
    assert not (tmp_path / 'epoch_3.pth').exists()
    assert (tmp_path / 'last_checkpoint').read_text().endswith('epoch_2.pth')
    assert safe_load(tmp_path / 'epoch_2.pth')['meta']['epoch'] == 2
