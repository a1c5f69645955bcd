"""The built artefacts, as a user gets them. The sdist and the wheel that ``python -m build``
makes (the wheel built from the sdist) hold the configs, the tools and the model index under
``pale_mm/.mim``, where OpenMMLab's mim reads them. The wheel, installed into a fresh
environment that reuses this stack's installed packages but not the checkout, lists every
config with ``mim search``, writes the demo data with ``mim run``, and trains and tests the
demo config with ``mim train`` and ``mim test``."""
import os
import os.path as osp
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile

import pytest

from det_common import ROOT

pytestmark = pytest.mark.slow  # builds, installs and trains: left out of `make test-quick`


def _run(cmd, cwd, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS='2', PYTHONPATH='')
    proc = subprocess.run([str(c) for c in cmd], cwd=str(cwd), env=env, capture_output=True,
                          text=True, timeout=900, **kwargs)
    assert proc.returncode == 0, ' '.join(map(str, cmd)) + '\n' + proc.stdout[-3000:] \
        + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _tracked(folder):
    """The checkout's files under ``folder`` (tracked, or new and not ignored)."""
    out = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard', folder], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split()
    return sorted(f for f in out if osp.isfile(osp.join(ROOT, f)))


@pytest.fixture(scope='module')
def built(tmp_path_factory):
    """sdist and wheel, built from a copy of the checkout (a build writes pale_mm/.mim as
    copies, where the checkout's development install has links)."""
    src = tmp_path_factory.mktemp('src')
    for rel in _tracked('.'):
        os.makedirs(osp.dirname(osp.join(src, rel)), exist_ok=True)
        shutil.copy2(osp.join(ROOT, rel), osp.join(src, rel))
    _run([sys.executable, '-m', 'build', '--no-isolation', '--outdir', src / 'dist', src],
         cwd=src)
    wheel, = (src / 'dist').glob('pale_mm-*.whl')
    sdist, = (src / 'dist').glob('pale_mm-*.tar.gz')
    return dict(wheel=wheel, sdist=sdist)


def test_wheel_and_sdist_hold_configs_tools_and_model_index(built):
    mim_files = {f'pale_mm/.mim/{f}' for f in _tracked('configs') + _tracked('tools')}
    mim_files.add('pale_mm/.mim/model-index.yml')
    with zipfile.ZipFile(built['wheel']) as z:
        wheel = set(z.namelist())
    assert mim_files <= wheel, sorted(mim_files - wheel)
    assert 'pale_mm/models/pale_transformer.py' in wheel
    assert not [n for n in wheel if n.startswith(('tests/', 'configs/', 'tools/'))]
    with tarfile.open(built['sdist']) as t:
        top = t.getnames()[0].split('/')[0]
        sdist = {n[len(top) + 1:] for n in t.getnames()}
    needed = {'setup.py', 'README.md', 'model-index.yml', 'requirements/runtime.txt'}
    needed |= set(_tracked('configs')) | set(_tracked('tools')) | mim_files
    assert needed <= sdist, sorted(needed - sdist)


@pytest.fixture(scope='module')
def installed(built, tmp_path_factory):
    """A fresh environment with the wheel installed, and this stack's packages (torch, mmcv,
    mmdet, mmseg, openmim, ...) reachable through a .pth line; the checkout's development
    install is not (its finder is started by a .pth file of the stack's site-packages, which
    Python reads only in its own site folders)."""
    env = tmp_path_factory.mktemp('env')
    _run([sys.executable, '-m', 'venv', env], cwd=env)
    python = env / 'bin' / 'python'
    site = _run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                cwd=env).strip().splitlines()[-1]
    stack = {sysconfig.get_paths()['purelib'], sysconfig.get_paths()['platlib']}
    with open(osp.join(site, 'stack.pth'), 'w') as f:
        f.write('\n'.join(sorted(stack)) + '\n')
    _run([python, '-m', 'pip', 'install', '-q', '--no-deps', '--no-index', built['wheel']],
         cwd=env)
    work = tmp_path_factory.mktemp('user')  # no checkout here
    where = _run([python, '-c', 'import pale_mm; print(pale_mm.__file__)'], cwd=work)
    assert where.strip().splitlines()[-1].startswith(str(env)), where
    return dict(python=python, cwd=work)


def test_mim_search_lists_every_config(installed):
    out = _run([installed['python'], '-m', 'mim', 'search', 'pale_mm'], cwd=installed['cwd'])
    names = {osp.splitext(osp.basename(f))[0] for f in _tracked('configs')
             if osp.basename(f).startswith('pale_') and f.endswith('.py')}
    assert len(names) == 13
    missing = [n for n in names if f'config id: {n}\n' not in out]
    assert not missing, out[-3000:]


def test_mim_trains_and_tests_the_demo_config(installed):
    python, cwd = installed['python'], installed['cwd']
    _run([python, '-m', 'mim', 'run', 'pale_mm', 'make_synthetic_data', 'ade',
          'data/synthetic_ade', '--size', '96', '96', '--num-classes', '6', '--num-train', '8',
          '--num-val', '3'], cwd=cwd)
    short = ['train_cfg.max_iters=4', 'train_cfg.val_interval=4',
             'default_hooks.checkpoint.interval=4', 'param_scheduler.0.end=2',
             'param_scheduler.1.begin=2', 'param_scheduler.1.end=4']
    out = _run([python, '-m', 'mim', 'train', 'pale_mm', 'configs/upernet/pale_demo_synthetic.py',
                '--work-dir', 'w', '--cfg-options', *short], cwd=cwd)
    assert 'Training finished successfully' in out
    assert (cwd / 'w' / 'iter_4.pth').is_file()
    out = _run([python, '-m', 'mim', 'test', 'pale_mm', 'configs/upernet/pale_demo_synthetic.py',
                '--checkpoint', 'w/iter_4.pth', '--work-dir', 't'], cwd=cwd)
    assert 'Testing finished successfully' in out and 'Iter(test) [3/3]' in out and 'mIoU' in out
