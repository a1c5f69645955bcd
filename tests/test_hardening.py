"""``import pale_mm`` changes nothing but the registries; the run hardening
(:mod:`pale_mm.hardening`) is opt-in through ``runner_type='HardenedRunner'``; the allow-list
holds what the checkpoints of OpenMMLab's schedulers, optimizers, wrappers and hooks hold, on
both loading paths (torch's weights-only unpickler with pale_mm's additions, torch >= 2.5;
pale_mm's own allow-list unpickler, torch 2.1-2.4); a refusal names where the class was.
(The hardened runs through the tools: test_resume_after_kill.py, test_broken_checkpoints.py,
test_upstream_tools.py.)"""
import collections
import importlib
import inspect
import json
import os
import subprocess
import sys

import pytest
import torch

from pale_mm.checkpoint import UnsafeCheckpointError, safe_load

from det_common import RunsACommand

safe_load_module = importlib.import_module('pale_mm.checkpoint.safe_load')  # the module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNAPSHOT = os.path.join(ROOT, 'tests', 'scripts', 'import_snapshot.py')


def _snapshot(*args):
    proc = subprocess.run([sys.executable, SNAPSHOT, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = {line.split(' ', 1)[0]: json.loads(line.split(' ', 1)[1])
             for line in proc.stdout.splitlines() if line.startswith(('CHECKED ', 'CHANGED '))}
    return lines['CHECKED'], lines['CHANGED']


def test_import_pale_mm_changes_nothing_but_the_registries():
    checked, changed = _snapshot()
    assert checked['modules'] > 100 and checked['registries'] > 10, checked
    assert changed == []


def test_the_snapshot_sees_the_hardening():
    """The check of the check: enabling safe loading after the import is reported."""
    _, changed = _snapshot('--then-enable-safe-loading')
    assert any('CheckpointLoader._schemes' in c for c in changed), changed


def test_hardened_runner_puts_its_hooks_in_place_of_mmengines(tmp_path, safe_loading,
                                                             hardened_toy_runner):
    from mmengine.hooks import CheckpointHook, LoggerHook

    from pale_mm.engine.hooks import AtomicCheckpointHook, RankZeroLoggerHook
    runner = hardened_toy_runner(tmp_path, default_hooks=dict(
        checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=1),
        logger=dict(type='mmengine.LoggerHook', interval=1)),
        custom_hooks=[dict(type=CheckpointHook, interval=5, out_dir=str(tmp_path / 'more'))])
    kinds = [type(h) for h in runner.hooks]
    assert kinds.count(AtomicCheckpointHook) == 2 and RankZeroLoggerHook in kinds
    assert CheckpointHook not in kinds and LoggerHook not in kinds
    runner.train()
    # max_keep_ckpts=1 still keeps one; last_checkpoint (which each CheckpointHook of a run
    # writes into the work dir, the custom one last) names an epoch_2.pth
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['epoch_2.pth']
    assert (tmp_path / 'last_checkpoint').read_text().endswith('epoch_2.pth')
    assert not list(tmp_path.glob('.*.tmp'))


def test_hardened_runner_keeps_a_hook_of_another_type(tmp_path, safe_loading,
                                                      hardened_toy_runner):
    from mmengine.hooks import CheckpointHook
    from mmengine.registry import HOOKS

    @HOOKS.register_module(force=True)
    class MyCheckpointHook(CheckpointHook):
        pass

    runner = hardened_toy_runner(tmp_path, default_hooks=dict(
        checkpoint=dict(type='MyCheckpointHook', interval=1)))
    assert any(type(h) is MyCheckpointHook for h in runner.hooks)


# ---------------------------------------------------------------------------------------
# what OpenMMLab's schedulers, optimizers, wrappers and hooks put into a checkpoint
@pytest.fixture(params=['torch weights-only', 'pale_mm allow-list'])
def load_path(request, monkeypatch):
    """Both loading paths, whichever torch this is (torch >= 2.5 has both)."""
    if request.param == 'torch weights-only':
        if not safe_load_module.TORCH_HAS_SAFE_GLOBALS:
            pytest.skip('torch < 2.5 has no safe_globals: pale_mm loads with its own list')
    else:
        monkeypatch.setattr(safe_load_module, 'TORCH_HAS_SAFE_GLOBALS', False)
    return request.param


# arguments the schedulers require (no default), each a value that fits a 4-step run
_SCHEDULER_ARGS = dict(milestones=[1, 3], step_size=2, T_max=4, periods=[2, 2], end=4,
                       eta_max=0.1, total_steps=4, param_name='lr', power=1.0,
                       restart_weights=[1, 1], eta_min=0.0, gamma=0.5, factor=0.5,
                       start_factor=0.5, eta_min_ratio=0.1)


def _registered(registry_name):
    """Every module in the ``registry_name`` registry (``PARAM_SCHEDULERS``, ``OPTIMIZERS``)
    of mmengine and of each installed library, by ``library.Name``."""
    found = {}
    for module in ('mmengine.registry', 'mmdet.registry', 'mmseg.registry',
                   'mmpretrain.registry'):
        try:
            registry = getattr(importlib.import_module(module), registry_name)
        except ImportError:
            continue
        registry.import_from_location()
        found.update({f'{module.split(".")[0]}.{n}': c for n, c in registry.module_dict.items()})
    return found


def _optimizer(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def _state_dict_of(cls):
    from mmengine.optim import OptimWrapper
    model = torch.nn.Linear(2, 2)
    wrapper = OptimWrapper(_optimizer(model.parameters()))
    params = {}  # the arguments of every __init__ of the MRO (the *LR mixins pass **kwargs on)
    for klass in reversed(cls.__mro__[:-1]):
        if '__init__' in vars(klass):
            params.update(inspect.signature(klass.__init__).parameters)
    # the required arguments, and ``end`` and ``total_steps`` wherever they are (warm-ups
    # refuse an endless schedule; mmengine 0.7's OneCycle reads ``end`` before setting it)
    kwargs = {k: v for k, v in _SCHEDULER_ARGS.items() if k in params
              and (k in ('end', 'total_steps') or params[k].default is inspect.Parameter.empty)}
    if 'ReduceOnPlateau' in cls.__name__:
        kwargs['monitor'] = 'loss'
    if any(k.__name__.endswith('SchedulerMixin') for k in cls.__mro__):
        kwargs.pop('param_name', None)  # the LR and momentum mixins name it themselves
    if 'periods' in kwargs:  # CosineRestart: one weight per period, and a floor
        kwargs.update(restart_weights=[1, 1], eta_min=0.0)
    scheduler = cls(optimizer=wrapper, **kwargs)  # by name: PolyLRRatio takes another first
    for _ in range(3):  # the schedule moves without gradients
        if 'ReduceOnPlateau' in cls.__name__:
            scheduler.step({'loss': 1.0})
        else:
            scheduler.step()
    return scheduler.state_dict()


def test_every_registered_scheduler_checkpoint_loads(tmp_path, load_path):
    classes = _registered('PARAM_SCHEDULERS')
    assert 'mmengine.MultiStepLR' in classes and len(classes) > 20, sorted(classes)
    states, unbuilt = [], {}
    for name, cls in sorted(classes.items()):
        if inspect.isabstract(cls) or not isinstance(cls, type):
            continue
        try:
            states.append((name, _state_dict_of(cls)))
        except TypeError as e:  # arguments this table does not know: named below
            unbuilt[name] = str(e)
    assert not unbuilt, unbuilt
    path = tmp_path / 'schedulers.pth'
    torch.save({'param_schedulers': [s for _, s in states]}, path)
    loaded = safe_load(path)['param_schedulers']
    for (name, state), back in zip(states, loaded):
        assert back.keys() == state.keys(), name
    assert any(isinstance(s.get('milestones'), collections.Counter) for s in loaded)


# left out: torch's base class, the optimizers that need what a training step of a detector
# or segmentor never gives them (a closure, sparse gradients), and ZeRO, a wrapper that needs
# a process group (its checkpoint is the state of the optimizer it wraps)
_NOT_STEPPED = ('.Optimizer', 'LBFGS', 'SparseAdam', 'ZeroRedundancyOptimizer')


def test_every_registered_optimizer_checkpoint_loads(tmp_path, load_path):
    classes = {n: c for n, c in _registered('OPTIMIZERS').items()
               if not n.endswith(_NOT_STEPPED)}
    assert {'mmengine.SGD', 'mmengine.AdamW'} <= set(classes)
    states = {}
    for name, cls in sorted(classes.items()):
        model = torch.nn.Linear(3, 2, bias=False)  # 2-D only: torch's Muon takes no other
        optimizer = cls(model.parameters(), lr=0.01)
        model(torch.ones(1, 3)).sum().backward()
        optimizer.step()
        states[name] = optimizer.state_dict()
    path = tmp_path / 'optimizers.pth'
    torch.save({'optimizer': states}, path)
    assert safe_load(path)['optimizer'].keys() == states.keys()


def test_wrapper_ema_scaler_and_message_hub_checkpoints_load(tmp_path, load_path):
    from mmengine.logging import MessageHub
    from mmengine.model import ExponentialMovingAverage
    from mmengine.optim import OptimWrapper, OptimWrapperDict
    model = torch.nn.Linear(3, 2)
    optims = OptimWrapperDict(a=OptimWrapper(_optimizer(model.parameters())))
    ema = ExponentialMovingAverage(model)
    ema.update_parameters(model)
    hub = MessageHub.get_instance(f'hardening_{id(tmp_path)}')
    hub.update_scalar('train/loss', 0.5)
    hub.update_info('keep_ckpt_ids', [1, 2])
    ckpt = dict(optimizer=optims.state_dict(), ema_state_dict=ema.state_dict(),
                message_hub=hub.state_dict())
    scaler_cls = getattr(getattr(torch, 'amp', None), 'GradScaler', None)
    if scaler_cls is not None and 'device' in inspect.signature(scaler_cls).parameters:
        ckpt['loss_scaler'] = scaler_cls('cpu').state_dict()  # AmpOptimWrapper's
    path = tmp_path / 'states.pth'
    torch.save(ckpt, path)
    assert safe_load(path).keys() == ckpt.keys()


def test_a_refusal_names_where_the_class_is(tmp_path, load_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'odd.pth'
    torch.save({'state_dict': {'w': torch.ones(2)},
                'param_schedulers': [{'last_step': 1}, {'milestones': RunsACommand(marker)}]},
               path)
    with pytest.raises(UnsafeCheckpointError,
                       match=r'holds (posix|os)\.system \(at param_schedulers\[1\]\.milestones\)'
                       r".*not on pale_mm's allow-list.*please report this line"):
        safe_load(path)
    assert not marker.exists()


def test_one_cycle_state_loads_with_its_annealing_function(tmp_path, load_path):
    """OneCycle keeps its annealing function (a static method) in its state, pickled as a
    look-up on the class: it loads as that function, and nothing else may be looked up."""
    from mmengine.optim import OneCycleLR, OptimWrapper

    def scheduler(strategy):
        return OneCycleLR(OptimWrapper(_optimizer(torch.nn.Linear(2, 2).parameters())),
                          eta_max=0.1, total_steps=4, anneal_strategy=strategy)

    for strategy in ('cos', 'linear'):
        saved = scheduler(strategy)
        torch.save({'param_schedulers': [saved.state_dict()]}, tmp_path / 'one_cycle.pth')
        resumed = scheduler('cos')
        resumed.load_state_dict(safe_load(tmp_path / 'one_cycle.pth')['param_schedulers'][0])
        assert resumed.anneal_func is saved.anneal_func

    class Sneaky:
        def __reduce__(self):
            from mmengine.optim.scheduler.param_scheduler import OneCycleParamScheduler
            return (getattr, (OneCycleParamScheduler, '__init__'))

    torch.save({'param_schedulers': [{'anneal_func': Sneaky()}]}, tmp_path / 'sneaky.pth')
    with pytest.raises(UnsafeCheckpointError, match=r'at param_schedulers\[0\]\.anneal_func'):
        safe_load(tmp_path / 'sneaky.pth')
