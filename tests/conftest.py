import functools
import http.server
import os
import sys
import threading
from types import SimpleNamespace

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Two cores on CI: keep torch from oversubscribing them.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def device():
    """The device the model tests run on: ``PALE_TEST_DEVICE`` (default ``cpu``), e.g.
    ``PALE_TEST_DEVICE=cuda pytest tests/test_backbone.py`` as ``tools/gpu_check.sh`` does."""
    dev = torch.device(os.environ.get('PALE_TEST_DEVICE', 'cpu'))
    if dev.type == 'cuda' and not torch.cuda.is_available():
        pytest.skip(f'PALE_TEST_DEVICE={dev} but torch sees no CUDA device')
    return dev


@pytest.fixture
def get_flops(capsys, monkeypatch):
    """``get_flops(*argv)``: tools/get_flops.py run in this process (the test pays for
    importing mmdet, mmseg and mmpretrain once, not once a command), returning its printed
    ``key: value`` lines as a dict. Its command line and errors: test_flops.py's subprocess
    test."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, 'tools'))
    monkeypatch.chdir(ROOT)  # the configs are named relative to the repository
    import get_flops as tool

    def run(*argv):
        capsys.readouterr()
        tool.main([str(a) for a in argv])
        out = capsys.readouterr().out
        return {k.strip(): v.strip() for k, v in
                (line.split(':', 1) for line in out.splitlines() if ':' in line)}

    return run


@pytest.fixture
def needs_autocast():
    """``needs_autocast(device, dtype)`` skips the test where this torch has no ``dtype``
    autocast on ``device`` (torch 2.1's CPU autocast takes bfloat16 only: it warns and
    stays off for float16)."""
    import warnings

    def check(device, dtype):
        device_type = torch.device(device).type
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            try:
                with torch.autocast(device_type, dtype=dtype):
                    one = torch.ones(1, 1, device=device)
                    runs = one.mm(one).dtype == dtype
            except RuntimeError:
                runs = False
        if not runs:
            pytest.skip(f'torch {torch.__version__} has no {dtype} autocast on {device_type}')

    return check


@pytest.fixture
def tiny_arch():
    """A small custom arch: fast enough to run many times in the tests."""
    return dict(embed_dims=16, depths=(1, 1, 2, 1), num_heads=(2, 2, 4, 4))


@pytest.fixture(scope='module')
def one_torch_thread():
    """For modules that train tiny models: one thread is as fast on an idle machine and many
    times faster on a busy one (two threads wait on each other at every small op)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def optimizer_settings_of_each_parameter(model, optim_wrapper_cfg):
    """{parameter name: its param group's settings (lr, weight_decay, ...)} in the optimizer
    that ``optim_wrapper_cfg`` builds for ``model``."""
    from mmengine.optim import build_optim_wrapper
    wrapper = build_optim_wrapper(model, optim_wrapper_cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: {k: v for k, v in group.items() if k != 'params'}
            for group in wrapper.optimizer.param_groups for p in group['params']}


class _WeightsRequests(http.server.SimpleHTTPRequestHandler):
    """Serves a folder without logging; records the paths asked for; answers ``*/login.pth``
    with an HTML page, as a proxy's login page comes instead of the file."""
    requests = None  # a list per server

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.requests.append(self.path)
        if self.path.endswith('/login.pth'):
            body = b'<!DOCTYPE html><html>sign in</html>'
            self.send_response(200)
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()


@pytest.fixture
def weights_server(tmp_path, monkeypatch):
    """An HTTP server on 127.0.0.1 for checkpoints named by URL: ``.root`` (tmp_path/www, the
    folder it serves), ``.url`` (its base URL), ``.requests`` (the paths asked for). torch's
    and mmengine's download caches go into tmp_path (also for the test's subprocesses). Stops
    after the test, or by itself after 10 minutes."""
    root = tmp_path / 'www'
    root.mkdir()
    requests = []
    handler = type('Handler', (_WeightsRequests,), dict(requests=requests))
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0),
                                            functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    stopper = threading.Timer(600, httpd.shutdown)
    stopper.start()
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    monkeypatch.setenv('MMENGINE_HOME', str(tmp_path / 'mmengine_home'))
    yield SimpleNamespace(root=root, url=f'http://127.0.0.1:{httpd.server_address[1]}',
                          requests=requests)
    stopper.cancel()
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture
def safe_loading():
    """mmengine's loaders through pale_mm's allow-list for one test (the hardening's
    ``enable_safe_loading``, as a HardenedRunner turns it on), mmengine's own afterwards."""
    from mmengine.runner.checkpoint import CheckpointLoader

    from pale_mm.hardening import enable_safe_loading
    saved = dict(CheckpointLoader._schemes)
    enable_safe_loading()
    yield
    CheckpointLoader._schemes.clear()
    CheckpointLoader._schemes.update(saved)


@pytest.fixture
def hardened_toy_runner():
    """A factory of HardenedRunners of a one-parameter model, 2 epochs of 2 iterations:
    ``hardened_toy_runner(work_dir, **runner_kwargs)``."""
    from mmengine.model import BaseModel

    from pale_mm.engine.runner import HardenedRunner

    class Toy(BaseModel):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(2))

        def forward(self, inputs, data_samples=None, mode='tensor'):
            loss = ((inputs @ self.w) - 1).pow(2).mean()
            return {'loss': loss} if mode == 'loss' else [loss]

    def build(work_dir, **kwargs):
        data = [dict(inputs=torch.ones(2)) for _ in range(4)]
        kwargs.setdefault('train_cfg', dict(by_epoch=True, max_epochs=2))
        return HardenedRunner(
            model=Toy(), work_dir=str(work_dir),
            train_dataloader=dict(dataset=data, batch_size=2,
                                  sampler=dict(type='DefaultSampler'),
                                  collate_fn=dict(type='default_collate')),
            optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)), default_scope='mmengine',
            experiment_name=f'toy_{os.getpid()}_{id(work_dir)}', **kwargs)

    return build
