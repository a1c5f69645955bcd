"""Shared by the tests/test_det_*.py files (and others): the synthetic COCO data (made once
per session), tools/train.py and tools/test.py as importable modules, the --cfg-options that
shrink a Mask R-CNN run to something a 2-core CPU does in seconds, and the pickle payload the
checkpoint tests refuse."""
import glob
import hashlib
import importlib.util
import json
import os
import os.path as osp
import random
import re
import socket

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG_DIR = osp.join(ROOT, 'configs', 'mask_rcnn')
HEIGHT, WIDTH = 128, 160
NUM_TRAIN, NUM_VAL = 8, 5  # odd val count: two ranks get 3 and 2 images

_cache = {}


def coco_data(tmp_path_factory):
    """The synthetic COCO dataset, written once per test session."""
    if 'coco' not in _cache:
        from pale_mm.synthetic.coco import make_coco
        root = tmp_path_factory.mktemp('synthetic_coco')
        _cache['coco'] = make_coco(str(root), num_train=NUM_TRAIN, num_val=NUM_VAL,
                                   image_size=(HEIGHT, WIDTH), seed=0)
    return _cache['coco']


def tool(name):
    """tools/<name>.py as a module (its ``main(argv)`` runs in this process)."""
    if name not in _cache:
        spec = importlib.util.spec_from_file_location(f'pale_tools_{name}',
                                                      osp.join(ROOT, 'tools', f'{name}.py'))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _cache[name] = module
    return _cache[name]


def data_options(info):
    """Point a configs/mask_rcnn config at the synthetic data, at its image size, with no
    worker processes (a few tiny images do not pay for them)."""
    from pale_mm.synthetic.coco import cli_cfg_options
    scale = f'({WIDTH},{HEIGHT})'
    options = cli_cfg_options(info) + [
        f'train_dataloader.dataset.pipeline.2.scale={scale}',  # Resize (1333, 800)
        f'val_dataloader.dataset.pipeline.1.scale={scale}',
        f'test_dataloader.dataset.pipeline.1.scale={scale}',
    ]
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        options += [f'{loader}.num_workers=0', f'{loader}.persistent_workers=False']
    return options


# No validation while training (tools/test.py evaluates): mmengine validates after the last
# epoch whatever val_interval says, but not before epoch val_begin.
NO_VAL = 'train_cfg.val_begin=1000'

# Fewer proposals and sampled RoIs: the box and mask heads then cost ~1/10 on CPU.
LIGHT_HEADS = [
    'model.train_cfg.rpn_proposal.nms_pre=300', 'model.train_cfg.rpn_proposal.max_per_img=100',
    'model.train_cfg.rcnn.sampler.num=64',
    'model.test_cfg.rpn.nms_pre=300', 'model.test_cfg.rpn.max_per_img=100',
]

# A small Pale backbone (and narrower FPN and heads) in the Pale-T config. A str arch cannot
# become a dict through --cfg-options (mmengine merges dicts into dicts only), hence a config
# file derived from the real one.
SMALL_PALE_CONFIG = """_base_ = {base!r}
model = dict(
    backbone=dict(arch=dict(_delete_=True, embed_dims=32, depths=[1, 1, 2, 1],
                            num_heads=[2, 2, 4, 4])),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=64),
    rpn_head=dict(in_channels=64, feat_channels=64),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(in_channels=64, fc_out_channels=256),
        mask_roi_extractor=dict(out_channels=64),
        mask_head=dict(in_channels=64, conv_out_channels=64)))
"""


def write_small_config(directory, name='pale_small_coco.py', base=None):
    """The small Pale Mask R-CNN, from ``base`` (default: configs/mask_rcnn/pale_t_coco_1x.py;
    any Mask R-CNN config with a PaleTransformer backbone)."""
    path = osp.join(str(directory), name)
    with open(path, 'w') as f:
        f.write(SMALL_PALE_CONFIG.format(base=base or osp.join(CONFIG_DIR, 'pale_t_coco_1x.py')))
    return path


def free_port():
    """A free TCP port for a multi-process run's rendezvous (torchrun's --master_port,
    MASTER_PORT). Not one the kernel picks (bind to port 0): that comes from the ephemeral
    range (net.ipv4.ip_local_port_range), where an outgoing connection of a test in the other
    pytest-xdist worker (gloo connects a lot) can take it between this check and the child's
    bind. Instead a port from below that range, from a block of 1000 that belongs to this
    worker, so that two workers never draw the same one."""
    try:
        with open('/proc/sys/net/ipv4/ip_local_port_range') as f:
            first_ephemeral = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        first_ephemeral = 32768  # Linux's default where /proc does not say
    worker = int(os.environ.get('PYTEST_XDIST_WORKER', 'gw0')[2:])
    block = first_ephemeral - 1000 * (worker + 1)
    start = random.randrange(1000)  # not the port this worker's previous run left in TIME_WAIT
    for i in range(1000):
        port = block + (start + i) % 1000
        with socket.socket() as s:
            try:
                s.bind(('127.0.0.1', port))
            except OSError:
                continue
        return port
    raise RuntimeError(f'no free port in {block}-{block + 999}')


def train_losses(work_dir):
    """Per-iteration 'loss' values logged by mmengine (vis_data/scalars.json), as
    (iteration, loss): the 'step' of each row (every mmengine version writes it)."""
    files = glob.glob(osp.join(str(work_dir), '*', 'vis_data', 'scalars.json'))
    assert len(files) == 1, files
    with open(files[0]) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [(r['step'], r['loss']) for r in rows if 'loss' in r]


_EVAL_LINE = re.compile(r'\((val|test)\) \[(\d+)/\2\]\s+(?!.*\beta: )(.*)$')
_NOT_METRICS = ('data_time', 'time', 'memory')


def logged_metrics(work_dir, mode):
    """The metrics of each evaluation (``mode`` 'val' or 'test') of the newest run in
    ``work_dir``, from its text log (<timestamp>/<timestamp>.log), where every mmengine
    version prints them (``Iter(val) [5/5]  aAcc: ...  mIoU: ...``); mmengine 0.7.1 leaves
    them out of its json logs."""
    logs = sorted(glob.glob(osp.join(str(work_dir), '*', '*.log')))
    assert logs, f'no log under {work_dir}'
    found = []
    with open(logs[-1]) as f:
        for line in f:
            m = _EVAL_LINE.search(line.rstrip())
            if m and m.group(1) == mode:
                pairs = re.findall(r'([\w/.\-]+): (-?[\d.]+(?:e[-+]?\d+)?)', m.group(3))
                found.append({k: float(v) for k, v in pairs if k not in _NOT_METRICS})
    return found


def logged_test_metrics(work_dir):
    """The metrics tools/test.py logged (the last test evaluation of the newest run)."""
    found = logged_metrics(work_dir, 'test')
    assert found, f'no test metrics in the log under {work_dir}'
    return found[-1]


def torch_threads_env(n=1):
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(n), MKL_NUM_THREADS=str(n))
    return env


def tree_digest(root):
    """{relative path: sha256} of every file under ``root``."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = osp.join(dirpath, name)
            with open(path, 'rb') as f:
                out[osp.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


class RunsACommand:
    """A pickle payload that creates ``marker`` when unpickled (the checkpoint tests check
    that it is refused and never runs)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))
