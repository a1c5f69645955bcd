import os.path as osp

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))


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


setup(
    name='pale_mm',
    version=read_version(),
    description='Pale Transformer (pale-shaped self-attention) backbone for '
    'MMDetection, MMSegmentation and MMPretrain',
    long_description=open(osp.join(HERE, 'README.md')).read()
    if osp.exists(osp.join(HERE, 'README.md')) else '',
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('tests', 'configs', 'tools')),
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
