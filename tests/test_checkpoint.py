"""Checkpoints: mmengine's own load under torch 2.14 with weights_only and an allow-list;
anything else is refused; pretrained backbones load with or without prefix and head; files
torch writes in other ways than today's default pass the integrity check; atomic writes.
(Broken files through the tools: tests/test_broken_checkpoints.py.)"""
import errno
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
from mmengine.runner.checkpoint import _load_checkpoint, load_checkpoint

from pale_mm import PaleTransformer
from pale_mm.checkpoint import (
    BrokenCheckpointError,
    CheckpointWriteError,
    UnsafeCheckpointError,
    atomic_save,
    atomic_text_file,
    atomic_write,
    checkpoint_problem,
    load_pretrained_backbone,
    safe_load,
)

from det_common import RunsACommand


def test_malicious_checkpoint_is_refused(tmp_path, safe_loading):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'payload': RunsACommand(marker)}, path)
    for load in (lambda: safe_load(path), lambda: _load_checkpoint(str(path))):
        with pytest.raises(UnsafeCheckpointError, match=r'refused to load.*(posix|os)\.system'):
            load()
    assert not marker.exists()
    assert isinstance(UnsafeCheckpointError('x'), pickle.UnpicklingError)


def test_mmengine_runner_checkpoint_roundtrip(tmp_path):
    """A checkpoint written by mmengine's Runner (message hub, numpy scalars, optimizer and
    scheduler state) loads through mmengine in a HardenedRunner under torch >= 2.6 too, and
    resume works."""
    from mmengine.model import BaseModel

    from pale_mm.engine.runner import HardenedRunner as Runner

    class ToyModel(BaseModel):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 1)

        def forward(self, inputs, labels, mode='loss'):
            loss = ((self.linear(inputs).squeeze(-1) - labels)**2).mean()
            return dict(loss=loss) if mode == 'loss' else [loss]

    class ToyData(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return dict(inputs=torch.full((2, ), float(i)), labels=torch.tensor(float(i)))

    def make_runner(work_dir, max_iters, resume=False):
        return Runner(
            model=ToyModel(), work_dir=str(work_dir),
            train_dataloader=dict(dataset=ToyData(), batch_size=2, num_workers=0,
                                  collate_fn=dict(type='default_collate'),
                                  sampler=dict(type='DefaultSampler', shuffle=False)),
            optim_wrapper=dict(optimizer=dict(type='AdamW', lr=0.01)),
            param_scheduler=dict(type='LinearLR', start_factor=0.5, by_epoch=False, end=4),
            train_cfg=dict(by_epoch=False, max_iters=max_iters),
            default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2,
                                               by_epoch=False)),
            resume=resume, default_scope='mmengine', experiment_name=f'toy{max_iters}{resume}')

    make_runner(tmp_path, 2).train()
    ckpt_path = tmp_path / 'iter_2.pth'
    ckpt = _load_checkpoint(str(ckpt_path))
    assert ckpt['meta']['iter'] == 2 and 'message_hub' in ckpt
    # the allow-list is narrow: these are the non-tensor objects such checkpoints hold
    raw = safe_load(ckpt_path)
    assert set(raw) >= {'meta', 'state_dict', 'optimizer', 'param_schedulers', 'message_hub'}
    runner = make_runner(tmp_path, 4, resume=True)
    runner.train()
    assert runner.iter == 4


def test_numpy_payloads_allowed(tmp_path):
    path = tmp_path / 'np.pth'
    data = {'meta': {'seed': np.int64(3), 'loss': np.float32(0.5), 'arr': np.arange(3),
                     'dtype': np.dtype('float64')}}
    torch.save(data, path)
    out = safe_load(path)
    assert out['meta']['seed'] == 3 and out['meta']['arr'].tolist() == [0, 1, 2]


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='not found'):
        safe_load(tmp_path / 'nope.pth')


def _model(arch, **kw):
    torch.manual_seed(1)
    m = PaleTransformer(arch, **kw)
    m.init_weights()
    return m


@pytest.mark.parametrize('layout', ['plain', 'classifier', 'detector', 'ddp'])
def test_pretrained_layouts(tmp_path, tiny_arch, layout):
    src = _model(tiny_arch)
    sd = src.state_dict()
    if layout == 'plain':
        ckpt = sd
    elif layout == 'classifier':  # mmpretrain: backbone. prefix, a neck and a head
        ckpt = {'state_dict': {**{f'backbone.{k}': v for k, v in sd.items()},
                               'head.fc.weight': torch.zeros(10, 128),
                               'head.fc.bias': torch.zeros(10)},
                'meta': {'epoch': np.int64(3)}}
    elif layout == 'detector':
        ckpt = {'state_dict': {**{f'backbone.{k}': v for k, v in sd.items()},
                               'neck.lateral_convs.0.conv.weight': torch.zeros(4, 16, 1, 1)}}
    else:
        ckpt = {'state_dict': {f'module.backbone.{k}': v for k, v in sd.items()}}
    path = tmp_path / 'pre.pth'
    torch.save(ckpt, path)
    dst = PaleTransformer(tiny_arch, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    dst.init_weights()
    for k, v in dst.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_pretrained_without_out_norms(tmp_path, tiny_arch):
    """A classifier backbone has no output norms; they stay as initialised, reported."""
    src = _model(tiny_arch, out_indices=(3, ))
    path = tmp_path / 'cls.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in src.state_dict().items()}}, path)
    dst = PaleTransformer(tiny_arch)
    report = load_pretrained_backbone(dst, str(path))
    assert sorted(report['missing']) == sorted(
        f'norm{i}.norm.{p}' for i in range(3) for p in ('weight', 'bias'))
    assert torch.equal(dst.stem.proj.weight, src.stem.proj.weight)


def test_pretrained_that_does_not_fit(tmp_path, tiny_arch):
    sd = _model(tiny_arch).state_dict()
    path = tmp_path / 'prefixed.pth'
    torch.save({'state_dict': {f'encoder.{k}': v for k, v in sd.items()}}, path)
    with pytest.raises(ValueError, match=r"does not fit.*prefix 'encoder\.'"):
        load_pretrained_backbone(PaleTransformer(tiny_arch), str(path))
    other = tmp_path / 'other_arch.pth'
    torch.save(_model('tiny').state_dict(), other)
    with pytest.raises(ValueError, match=r'does not fit.*Shape mismatches'):
        load_pretrained_backbone(PaleTransformer(tiny_arch), str(other))


def test_pretrained_missing_file_names_fix(tmp_path, tiny_arch):
    m = PaleTransformer(tiny_arch,
                        init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'in1k.pth')))
    with pytest.raises(FileNotFoundError,
                       match=r'in1k\.pth.*model\.backbone\.init_cfg=None'):
        m.init_weights()


def test_mmengine_load_checkpoint_into_backbone(tmp_path, tiny_arch, safe_loading):
    """mmengine's own load_checkpoint (used for load_from) goes through the safe loader in a
    hardened run (on torch >= 2.6 mmengine's own loader refuses the numpy scalar)."""
    sd = _model(tiny_arch).state_dict()
    path = tmp_path / 'plain.pth'
    torch.save({'state_dict': sd, 'meta': {'iter': np.int64(5)}}, path)
    dst = PaleTransformer(tiny_arch)
    load_checkpoint(dst, str(path))
    assert torch.equal(dst.stem.proj.weight, sd['stem.proj.weight'])


# ------------------------------------------------------------------ integrity check
WEIGHTS = {'state_dict': {'w': torch.arange(1000.0), 'b': torch.ones(3)}}


def _written(path, how):
    if how == 'legacy':  # torch < 1.6: a pickle, no zip archive and no CRC-32
        torch.save(WEIGHTS, path, _use_new_zipfile_serialization=False)
    elif how == 'without_crc':  # CRC-32 fields left 0
        torch.serialization.set_crc32_options(False)
        try:
            torch.save(WEIGHTS, path)
        finally:
            torch.serialization.set_crc32_options(True)
    else:  # unpacked and packed again by a zip tool, compressed
        plain = path.with_suffix('.plain')
        torch.save(WEIGHTS, plain)
        with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, 'w',
                                                             zipfile.ZIP_DEFLATED) as dst:
            for name in src.namelist():
                dst.writestr(name, src.read(name))


@pytest.mark.parametrize('how', ['legacy', 'without_crc', 'repacked_compressed'])
def test_other_torch_files_are_whole(tmp_path, how):
    if how == 'without_crc' and not hasattr(torch.serialization, 'set_crc32_options'):
        pytest.skip(f'torch {torch.__version__} always writes CRC-32s (the option is 2.4+)')
    path = tmp_path / 'ckpt.pth'
    _written(path, how)
    assert checkpoint_problem(str(path), trial_load=True) is None
    assert torch.equal(safe_load(path)['state_dict']['w'], WEIGHTS['state_dict']['w'])


def test_damaged_compressed_record_is_found(tmp_path):
    path = tmp_path / 'ckpt.pth'
    _written(path, 'repacked_compressed')
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        record = max(archive.infolist(), key=lambda r: r.compress_size)
    data[record.header_offset + 30 + len(record.filename) + record.compress_size // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(BrokenCheckpointError, match=f'record {record.filename}'):
        safe_load(path)


def test_a_file_changed_after_its_check_is_checked_again(tmp_path):
    """The check is skipped only for a file whose size, inode and mtime are unchanged."""
    path = tmp_path / 'ckpt.pth'
    torch.save(WEIGHTS, path)
    assert checkpoint_problem(str(path)) is None
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))  # same inode and size, new mtime
    assert 'is damaged' in checkpoint_problem(str(path))


# ------------------------------------------------------------------ atomic writes
def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / 'iter_4.pth'
    atomic_save(WEIGHTS, str(path))
    before = path.read_bytes()

    def fill_the_disk(f):
        f.write(b'PK\x03\x04 partial')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(CheckpointWriteError) as failure:
        atomic_write(str(path), fill_the_disk)
    assert str(failure.value).startswith(
        f'could not write {path}: No space left on device (ENOSPC). {tmp_path} holds what it '
        'held before this save')
    assert f'Free space in {tmp_path}' in str(failure.value)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ['iter_4.pth']  # no temporary file left


def test_atomic_text_file(tmp_path):
    path = tmp_path / 'last_checkpoint'
    path.write_text('iter_2.pth')
    with pytest.raises(KeyError):
        with atomic_text_file(str(path)) as f:
            f.write('iter_4')
            raise KeyError('the block failed: nothing is written')
    assert path.read_text() == 'iter_2.pth'
    with atomic_text_file(str(path)) as f:
        f.write('iter_4.pth')
    assert path.read_text() == 'iter_4.pth' and os.listdir(tmp_path) == ['last_checkpoint']
