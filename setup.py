import os
import os.path as osp
import shutil
import sys

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))
# What OpenMMLab's mim reads from an installed package (`mim search`, `mim train`, `mim test`,
# `mim run`): pale_mm/.mim/{configs, tools, model-index.yml}.
MIM_FILES = ('configs', 'tools', 'model-index.yml')


def place_mim_files():
    """Put :data:`MIM_FILES` under pale_mm/.mim/: links to the checkout's own in a development
    install (``pip install -e .``: edits show at once), copies when a wheel or an sdist is
    built (they go into it). Any other command (egg_info, ...) leaves the folder as it is."""
    if {'develop', 'editable_wheel'} & set(sys.argv):
        link = True
    elif {'sdist', 'bdist_wheel'} & set(sys.argv):
        link = False
    else:
        return
    mim = osp.join(HERE, 'pale_mm', '.mim')
    os.makedirs(mim, exist_ok=True)
    for name in MIM_FILES:
        src, dst = osp.join(HERE, name), osp.join(mim, name)
        if not osp.exists(src):  # building a wheel from an sdist: already copied
            continue
        if osp.islink(dst) or osp.isfile(dst):
            os.remove(dst)
        elif osp.isdir(dst):
            shutil.rmtree(dst)
        if link:
            os.symlink(osp.relpath(src, mim), dst)
        elif osp.isdir(src):
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
        else:
            shutil.copyfile(src, dst)


def read_version():
    ns = {}
    with open(osp.join(HERE, 'pale_mm', 'version.py')) as f:
        exec(f.read(), ns)
    return ns['__version__']


def read_requirements(name):
    """Requirement lines of requirements/<name> (ranges; comments and blank lines left out)."""
    with open(osp.join(HERE, 'requirements', name)) as f:
        return [line.strip() for line in f
                if line.strip() and not line.lstrip().startswith('#')]


place_mim_files()
setup(
    name='pale_mm',
    version=read_version(),
    description='Pale Transformer (pale-shaped self-attention) backbone for '
    'MMDetection, MMSegmentation and MMPretrain',
    long_description=open(osp.join(HERE, 'README.md')).read()
    if osp.exists(osp.join(HERE, 'README.md')) else '',
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('tests', 'tests.*', 'configs', 'tools')),
    include_package_data=True,  # pale_mm/.mim (MANIFEST.in)
    python_requires='>=3.9',
    # Ranges, not pins: installed into an existing OpenMMLab environment within them, pale_mm
    # changes none of its packages (README: "Install into your environment").
    install_requires=read_requirements('runtime.txt'),
    extras_require=dict(
        cls=read_requirements('classification.txt'),  # configs/imagenet
        deploy=read_requirements('deploy.txt'),  # tools/export_onnx.py, ONNX Runtime
        mim=read_requirements('mminstall.txt'),  # mmcv, as OpenMMLab projects declare it
        tests=read_requirements('tests.txt'),
    ),
    license='Apache License 2.0',
)
