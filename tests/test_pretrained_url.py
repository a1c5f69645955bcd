"""Pretrained Pale weights named by URL (https://, open-mmlab://, ...): downloaded once into
torch's hub cache and loaded through the weights_only allow-list; failures name the URL. A
segmentor-level ``pretrained`` that reaches Pale is refused with the fix. The URLs point at
a local HTTP server on 127.0.0.1."""
import json

import pytest
import torch

import pale_mm  # noqa: F401
from pale_mm.checkpoint import (
    CheckpointDownloadError,
    UnsafeCheckpointError,
    resolve_checkpoint_url,
)
from pale_mm.models import PaleTransformer
from pale_mm.models.pale_transformer import PaleConfigError

from det_common import RunsACommand


def _classifier_checkpoint(arch, path):
    """An mmpretrain-style checkpoint of a Pale classifier (backbone. prefix, a head)."""
    model = PaleTransformer(arch, drop_path_rate=0.)
    model.init_weights()
    state = {f'backbone.{k}': v for k, v in model.state_dict().items()}
    state['head.fc.weight'] = torch.zeros(10, 4)
    torch.save({'state_dict': state, 'meta': {'epoch': 300}}, path)
    return model.state_dict()


def _load(arch, url):
    model = PaleTransformer(arch, drop_path_rate=0.,
                            init_cfg=dict(type='Pretrained', checkpoint=url))
    model.init_weights()
    return model


def _same_weights(model, state):
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_https_style_url_downloads_once_and_loads(weights_server, tiny_arch, tmp_path):
    root, base = weights_server.root, weights_server.url
    state = _classifier_checkpoint(tiny_arch, root / 'pale_tiny_in1k.pth')
    model = _load(tiny_arch, f'{base}/pale_tiny_in1k.pth')
    assert _same_weights(model, state)
    cached = list((tmp_path / 'torch_home' / 'hub' / 'checkpoints').iterdir())
    assert [p.name.split('-', 1)[1] for p in cached] == ['pale_tiny_in1k.pth']
    # the second load reads the cached copy: no second request
    assert _same_weights(_load(tiny_arch, f'{base}/pale_tiny_in1k.pth'), state)
    assert weights_server.requests == ['/pale_tiny_in1k.pth']


def test_open_mmlab_name_resolves_through_mmengine_table(weights_server, tiny_arch, tmp_path):
    root, base = weights_server.root, weights_server.url
    state = _classifier_checkpoint(tiny_arch, root / 'weights.pth')
    home = tmp_path / 'mmengine_home'
    home.mkdir()
    (home / 'open_mmlab.json').write_text(json.dumps({'pale_tiny_test': f'{base}/weights.pth'}))
    assert resolve_checkpoint_url('open-mmlab://pale_tiny_test') == f'{base}/weights.pth'
    assert _same_weights(_load(tiny_arch, 'open-mmlab://pale_tiny_test'), state)
    with pytest.raises(CheckpointDownloadError,
                       match=r"open-mmlab://pale_tiny_tset: .* no 'pale_tiny_tset' \(did you "
                             r'mean open-mmlab://pale_tiny_test\?\)'):
        _load(tiny_arch, 'open-mmlab://pale_tiny_tset')


def test_download_failures_name_the_url_and_leave_no_file(weights_server, tiny_arch, tmp_path):
    base = weights_server.url
    cache = tmp_path / 'torch_home' / 'hub' / 'checkpoints'
    with pytest.raises(CheckpointDownloadError,
                       match=rf'could not download checkpoint {base}/missing\.pth: HTTP '
                             r'Error 404.*model\.backbone\.init_cfg\.checkpoint'):
        _load(tiny_arch, f'{base}/missing.pth')
    with pytest.raises(CheckpointDownloadError,
                       match=rf"{base}/login\.pth did not answer with a torch checkpoint \(it "
                             r"starts with b'<!DOCTYPE html>"):
        _load(tiny_arch, f'{base}/login.pth')
    with pytest.raises(CheckpointDownloadError, match=r'no loader reads htps:// addresses'):
        _load(tiny_arch, 'htps://example.com/x.pth')
    assert not cache.exists() or list(cache.iterdir()) == []


def test_downloaded_checkpoint_goes_through_the_allow_list(weights_server, tiny_arch, tmp_path,
                                                           monkeypatch):
    root, base = weights_server.root, weights_server.url
    monkeypatch.chdir(tmp_path)
    torch.save({'state_dict': {}, 'meta': RunsACommand('pwned_by_url')}, root / 'evil.pth')
    with pytest.raises(UnsafeCheckpointError, match=r'posix\.system|os\.system'):
        _load(tiny_arch, f'{base}/evil.pth')
    assert not (tmp_path / 'pwned_by_url').exists()


def test_mmengine_url_loading_goes_through_the_allow_list(weights_server, tmp_path, monkeypatch,
                                                         safe_loading):
    """load_from=URL and other backbones' URL init_cfg go through mmengine's own loader,
    which the hardening (pale_mm.hardening) points at the same download and allow-list."""
    from mmengine.runner.checkpoint import _load_checkpoint
    root, base = weights_server.root, weights_server.url
    monkeypatch.chdir(tmp_path)
    torch.save({'state_dict': {'w': torch.ones(2)}}, root / 'good.pth')
    assert torch.equal(_load_checkpoint(f'{base}/good.pth')['state_dict']['w'], torch.ones(2))
    torch.save({'state_dict': {}, 'meta': RunsACommand('pwned_by_url')}, root / 'evil.pth')
    with pytest.raises(UnsafeCheckpointError, match=r'posix\.system|os\.system'):
        _load_checkpoint(f'{base}/evil.pth')
    assert not (tmp_path / 'pwned_by_url').exists()


def test_segmentor_level_pretrained_names_the_fix(tiny_arch):
    """mmseg's EncoderDecoder hands model.pretrained (ResNet's, in the config Pale was
    dropped into) to the backbone."""
    from mmengine.config import ConfigDict
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    cfg = ConfigDict(type='EncoderDecoder', pretrained='open-mmlab://resnet50_v1c',
               backbone=dict(type='PaleTransformer', arch=tiny_arch),
               decode_head=dict(type='FCNHead', in_channels=128, in_index=3, channels=16,
                                num_classes=4))
    with pytest.raises(PaleConfigError, match=r"pretrained='open-mmlab://resnet50_v1c'.*Set "
                                              r'model\.pretrained=None'):
        MODELS.build(cfg)


def test_preflight_accepts_urls_and_refuses_unknown_schemes():
    from mmengine.config import ConfigDict

    from pale_mm.errors import PaleError
    from pale_mm.launch.preflight import check_pretrained

    def model(checkpoint):
        return ConfigDict(model=dict(backbone=dict(
            type='PaleTransformer', init_cfg=dict(type='Pretrained', checkpoint=checkpoint))))
    check_pretrained(model('https://download.example.org/pale_t_in1k.pth'), resuming=False)
    with pytest.raises(PaleError, match=r'model\.backbone\.init_cfg.*no loader reads htps://'):
        check_pretrained(model('htps://download.example.org/pale_t_in1k.pth'), resuming=False)
