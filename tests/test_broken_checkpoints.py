"""Broken checkpoint files and a full disk, through every way the tools read or write one.

The table: checkpoints cut short at three points, one flipped byte in tensor data, random
bytes, an empty file, a directory, a zip archive missing a tensor record, one that would run
a command when unpickled, and one with the right keys but other shapes; each read through
``tools/train.py --resume PATH``, ``--resume`` (the newest in the work dir), ``load_from``,
the backbone's ``init_cfg`` Pretrained and ``tools/test.py``. Each gets a one-line error
naming the file and what is wrong (``--resume`` without a path passes over a broken newest
checkpoint for the newest whole one and says so), nothing in the file runs, and nothing
already in the work dir is changed or deleted.

A save that fails with ENOSPC or EIO leaves the previous checkpoint and ``last_checkpoint``
as they were, no temporary file, and stops the run with a one-line error naming the folder.

Every checkpoint here comes from one tiny real run (tools/train.py, 4 iterations).
"""
import copy
import errno
import os
import os.path as osp
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch

from pale_mm.checkpoint import checkpoint_problem, safe_load
from pale_mm.launch.work_dir import find_resume_checkpoint
from pale_mm.synthetic.ade import make_ade

from det_common import ROOT, RunsACommand, tool, torch_threads_env, tree_digest
from seg_common import small_seg_options

CONFIG_DUMP = 'pale_t_ade20k.py'  # mmengine writes each run's config to the work dir's top

# end to end through the tools: left out of `make test-quick`
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures('one_torch_thread')]


def _options(ade, max_iters):
    """The tiny UperNet of seg_common, a checkpoint every 2 iterations, no validation."""
    return small_seg_options(ade, max_iters, 10) + [
        'default_hooks.checkpoint.interval=2', 'train_cfg.val_begin=100']


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A work dir with iter_2.pth and iter_4.pth from one real 4-iteration run, and
    configs/upernet/pale_t_ade20k.py with its mmseg:: bases resolved (read in a fraction of
    the time: mmengine reads every mmseg model-index file to find a base)."""
    from mmengine.config import Config
    root = tmp_path_factory.mktemp('broken_ckpt')
    config = str(root / CONFIG_DUMP)
    Config.fromfile(osp.join(ROOT, 'configs/upernet', CONFIG_DUMP)).dump(config)
    ade = make_ade(str(root / 'ade'), num_train=4, num_val=2, image_size=(64, 64), seed=0,
                   num_classes=4)
    work_dir = root / 'work'
    tool('train').main([config, '--work-dir', str(work_dir), '--cfg-options']
                       + _options(ade, 4))
    assert (work_dir / 'iter_2.pth').is_file() and (work_dir / 'iter_4.pth').is_file()
    return dict(ade=ade, work_dir=work_dir, config=config)


# ------------------------------------------------------------------ the table
# Each breaker writes a broken checkpoint at ``path`` from the whole one at ``good`` and
# returns a text the error (or --resume's warning) must hold.
def cut_after_10_bytes(good, path):
    path.write_bytes(good.read_bytes()[:10])
    return 'is cut short'


def cut_in_half(good, path):
    data = good.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return 'is cut short'


def cut_before_the_end(good, path):
    """All but the last 100 bytes: only the archive's directory is lost."""
    path.write_bytes(good.read_bytes()[:-100])
    return 'is cut short'


def _largest_record(archive):
    return max(archive.infolist(), key=lambda r: r.file_size)


def flipped_byte_in_tensor_data(good, path):
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as archive:
        record = _largest_record(archive)
    local = record.header_offset
    start = local + 30 + int.from_bytes(data[local + 26:local + 28], 'little') + \
        int.from_bytes(data[local + 28:local + 30], 'little')
    data[start + record.file_size // 2] ^= 0x10
    path.write_bytes(bytes(data))
    return 'do not match the CRC-32'


def random_bytes(good, path):
    path.write_bytes(torch.randint(0, 256, (good.stat().st_size, ), dtype=torch.uint8,
                                   generator=torch.Generator().manual_seed(0)).numpy()
                     .tobytes())
    return 'is not a torch checkpoint'


def empty(good, path):
    path.write_bytes(b'')
    return 'is empty'


def a_directory(good, path):
    path.mkdir()
    return 'is a directory'


def zip_missing_a_record(good, path):
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, 'w') as dst:
        dropped = _largest_record(src)
        for record in src.infolist():
            if record.filename != dropped.filename:
                dst.writestr(copy.copy(record), src.read(record.filename))
    return f'has no record {dropped.filename.split("/", 1)[1]}'


def runs_a_command(good, path):
    checkpoint = safe_load(good)
    checkpoint['meta']['payload'] = RunsACommand(path.parent.parent / 'command_ran')
    torch.save(checkpoint, path)
    return 'could run arbitrary code'


def other_shapes(good, path):
    """The same keys, every tensor one row longer (a model of another width)."""
    checkpoint = safe_load(good)
    checkpoint['state_dict'] = {
        k: torch.zeros((v.shape[0] + 1, ) + tuple(v.shape[1:]) if v.dim() else (2, ),
                       dtype=v.dtype) for k, v in checkpoint['state_dict'].items()}
    torch.save(checkpoint, path)
    return 'does not fit'


BREAKERS = [cut_after_10_bytes, cut_in_half, cut_before_the_end, flipped_byte_in_tensor_data,
            random_bytes, empty, a_directory, zip_missing_a_record, runs_a_command,
            other_shapes]
ROUTES = ['resume_path', 'resume_auto', 'load_from', 'init_cfg', 'test']
# a file that is no whole checkpoint is passed over by --resume without a path; one that is
# whole but does not fit the model is not "broken": it stops the run
PASSED_OVER = {b for b in BREAKERS if b is not other_shapes}


def _run_tool(name, argv):
    """tools/<name>.py in this process: its error line, or None when it ran through."""
    try:
        tool(name).main(argv)
    except SystemExit as e:
        assert isinstance(e.code, str), f'exit code {e.code}, no message'
        return e.code
    return None


def _broken_work_dir(trained, tmp_path, breaker):
    """A copy of the run's work dir whose iter_4.pth (the newest, named by last_checkpoint)
    ``breaker`` broke; the text the error or warning must hold."""
    work_dir = tmp_path / 'work'
    shutil.copytree(trained['work_dir'], work_dir)
    broken = work_dir / 'iter_4.pth'
    broken.unlink()
    expected = breaker(trained['work_dir'] / 'iter_4.pth', broken)
    (work_dir / 'last_checkpoint').write_text(str(broken))  # the copy's, not the original's
    return work_dir, expected


@pytest.mark.parametrize('route', ROUTES)
@pytest.mark.parametrize('breaker', BREAKERS, ids=[b.__name__ for b in BREAKERS])
def test_broken_checkpoint(breaker, route, trained, tmp_path, recwarn):
    work_dir, expected = _broken_work_dir(trained, tmp_path, breaker)
    good, broken = work_dir / 'iter_2.pth', work_dir / 'iter_4.pth'
    before = tree_digest(work_dir)
    config, options = trained['config'], _options(trained['ade'], 4)
    run_dir = ['--work-dir', str(work_dir)]
    if route == 'resume_auto' and breaker in PASSED_OVER:
        # tools/train.py --resume resumes from what this returns (the whole run through the
        # tool: test_resume_passes_over_a_broken_checkpoint)
        message, chosen = None, find_resume_checkpoint(str(work_dir))
        assert chosen == str(good)
    elif route in ('resume_path', 'resume_auto'):
        resume = ['--resume'] + ([str(broken)] if route == 'resume_path' else [])
        message = _run_tool('train', [config, *run_dir, *resume, '--cfg-options', *options])
    elif route == 'test':
        message = _run_tool('test', [config, str(broken), *run_dir, '--cfg-options', *options])
    else:  # a new run in a new work dir that starts from the broken file
        run_dir = ['--work-dir', str(tmp_path / 'new_work')]
        if route == 'load_from':
            options = options + [f'load_from={broken}']
        else:
            options = [o for o in options if not o.startswith('model.backbone.init_cfg=')]
            options += [f'model.backbone.init_cfg.checkpoint={broken}']
        message = _run_tool('train', [config, *run_dir, '--cfg-options', *options])

    if route == 'resume_auto' and breaker in PASSED_OVER:
        warned = ' '.join(str(w.message) for w in recwarn)
        assert f'passing over {broken}, which ' in warned and expected in warned, warned
        assert f'resuming from {good}, the newest whole checkpoint' in warned, warned
    else:
        assert message is not None, 'the broken checkpoint was accepted'
        tool_name = 'test.py' if route == 'test' else 'train.py'
        assert message.startswith(f'{tool_name}: error: '), message
        assert str(broken) in message and expected in message, message
        assert '\n' not in message and 'Traceback' not in message, message
    assert not (tmp_path / 'command_ran').exists()  # nothing in the file ran
    after = tree_digest(work_dir)
    changed = [k for k, v in before.items() if after.get(k) != v and k != CONFIG_DUMP]
    assert not changed, f'changed or deleted in the work dir: {changed}'
    assert not list((tmp_path / 'new_work').glob('*.pth'))


def test_resume_passes_over_a_broken_checkpoint(trained, tmp_path):
    """tools/train.py --resume: the newest checkpoint has a flipped byte; the run warns,
    resumes from iter_2.pth and changes nothing there (up to iteration 2: it ends at once)."""
    work_dir, expected = _broken_work_dir(trained, tmp_path, flipped_byte_in_tensor_data)
    before = tree_digest(work_dir)
    with pytest.warns(UserWarning) as warned:
        runner = tool('train').main([trained['config'], '--work-dir', str(work_dir),
                                     '--resume', '--cfg-options', *_options(trained['ade'], 2)])
    text = ' '.join(str(w.message) for w in warned)
    assert f'passing over {work_dir / "iter_4.pth"}, which is damaged' in text, text
    assert f'resuming from {work_dir / "iter_2.pth"}, the newest whole checkpoint' in text
    assert runner.iter == 2
    after = tree_digest(work_dir)
    assert not [k for k, v in before.items() if after.get(k) != v and k != CONFIG_DUMP]


def test_cli_prints_a_broken_checkpoint_without_traceback(trained, tmp_path):
    """The command line: one line on stderr, exit code 1."""
    checkpoint = tmp_path / 'iter_4.pth'
    flipped_byte_in_tensor_data(trained['work_dir'] / 'iter_4.pth', checkpoint)
    res = subprocess.run(
        [sys.executable, 'tools/test.py', trained['config'], str(checkpoint), '--work-dir',
         str(tmp_path / 'work'), '--cfg-options'] + _options(trained['ade'], 4),
        cwd=ROOT, env=torch_threads_env(1), capture_output=True, text=True, timeout=600)
    assert res.returncode == 1, res.stderr[-3000:]
    assert res.stderr.strip().splitlines()[-1] == (
        f'test.py: error: checkpoint {checkpoint} is damaged: the bytes of its record '
        f'{_largest_record(zipfile.ZipFile(checkpoint)).filename} do not match the CRC-32 '
        'stored with them (changed on disk or in a copy). Use another checkpoint '
        '(tools/train.py --resume without a path skips broken ones in the work dir) or copy '
        'or download this one again.')
    assert 'Traceback' not in res.stderr, res.stderr[-3000:]


def test_resume_without_any_whole_checkpoint_is_refused(trained, tmp_path):
    """All checkpoints broken: --resume must not start from scratch over them."""
    work_dir, _ = _broken_work_dir(trained, tmp_path, cut_in_half)
    (work_dir / 'iter_2.pth').write_bytes((work_dir / 'iter_2.pth').read_bytes()[:1000])
    before = tree_digest(work_dir)
    message = _run_tool('train', [trained['config'], '--work-dir', str(work_dir), '--resume',
                                  '--cfg-options', *_options(trained['ade'], 4)])
    assert message.startswith(f'train.py: error: --resume: no whole checkpoint in {work_dir}')
    assert f'{work_dir / "iter_2.pth"}, which is cut short' in message, message
    assert tree_digest(work_dir) == before


def test_integrity_check_of_a_whole_checkpoint(trained):
    """Both checkpoints of the run are whole, also when every record is read and the file
    is loaded with mapped tensors (what --resume without a path does)."""
    for name in ('iter_2.pth', 'iter_4.pth'):
        assert checkpoint_problem(str(trained['work_dir'] / name), trial_load=True) is None


# ------------------------------------------------------------------ a full disk
class _DiskFillsUp:
    """An open file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, data):
        if len(data) > self.room:
            self.f.write(bytes(data[:self.room]))
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def __getattr__(self, name):  # flush, fileno, name, ...
        return getattr(self.f, name)


def _fail_fsync_of(name, monkeypatch):
    """os.fsync of the temporary file that becomes ``name`` fails with EIO."""
    real_fsync = os.fsync

    def fsync(fd):
        if f'/.{name}.' in os.readlink(f'/proc/self/fd/{fd}'):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_fsync(fd)

    monkeypatch.setattr(os, 'fsync', fsync)


def _fill_disk_while_writing(name, monkeypatch):
    """The file that becomes ``name`` takes 1000 bytes, then the disk is full (the writer
    of every file of a hardened run, pale_mm.fileio.atomic_write, opens it)."""
    import builtins

    import pale_mm.fileio

    def open_filling_up(file, mode='r', *args, **kwargs):
        f = builtins.open(file, mode, *args, **kwargs)
        return _DiskFillsUp(f, 1000) if f'/.{name}.' in str(file) else f

    monkeypatch.setattr(pale_mm.fileio, 'open', open_filling_up, raising=False)


FAILURES = [('checkpoint', _fill_disk_while_writing, 'iter_4.pth', 'ENOSPC'),
            ('checkpoint', _fail_fsync_of, 'iter_4.pth', 'EIO'),
            ('last_checkpoint', _fail_fsync_of, 'last_checkpoint', 'EIO')]


@pytest.mark.parametrize('what,inject,name,code', FAILURES,
                         ids=[f'{f[0]}_{f[3]}' for f in FAILURES])
def test_a_failed_save_keeps_the_previous_checkpoint(what, inject, name, code, trained,
                                                     tmp_path, monkeypatch):
    """The run resumes from iter_2.pth and fails to save at iteration 4; once the disk
    works again, --resume continues from iter_2.pth and writes iter_4.pth."""
    work_dir = tmp_path / 'work'
    shutil.copytree(trained['work_dir'], work_dir)
    (work_dir / 'iter_4.pth').unlink()
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'iter_2.pth'))
    before = tree_digest(work_dir)

    def resume():
        return _run_tool('train', [trained['config'], '--work-dir', str(work_dir), '--resume',
                                   '--cfg-options', *_options(trained['ade'], 4)])

    inject(name, monkeypatch)
    message = resume()
    monkeypatch.undo()
    assert message is not None, 'the failed save went unnoticed'
    assert message.startswith(f'train.py: error: could not write {work_dir / name}: ')
    assert f'({code}). {work_dir} holds what it held before this save' in message, message
    assert '\n' not in message
    after = tree_digest(work_dir)
    assert not [k for k, v in before.items() if after.get(k) != v and k != CONFIG_DUMP]
    assert (work_dir / 'last_checkpoint').read_text() == str(work_dir / 'iter_2.pth')
    assert not list(work_dir.glob('.*.tmp'))
    if what == 'checkpoint':
        assert not (work_dir / 'iter_4.pth').exists()
    else:  # the checkpoint was written whole before last_checkpoint failed
        assert checkpoint_problem(str(work_dir / 'iter_4.pth')) is None

    assert resume() is None
    assert (work_dir / 'last_checkpoint').read_text() == str(work_dir / 'iter_4.pth')
    assert safe_load(work_dir / 'iter_4.pth')['meta']['iter'] == 4
