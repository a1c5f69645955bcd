"""tests/test_import_changes_nothing.py: what ``import pale_mm`` changes in torch, mmcv,
mmengine, mmdet, mmseg and mmpretrain, in a fresh process. Prints one line of json
(CHANGED [...]): every change found, empty when the import only registered modules.

    python tests/scripts/import_snapshot.py [--then-enable-safe-loading]

A snapshot before and after the import of
* every attribute of every loaded module of those packages (the same object after; a new
  attribute only where it is a submodule the import loaded),
* every class's own attributes (the same objects), and the contents of the dicts held by
  the modules and classes of the OpenMMLab packages (CheckpointLoader's schemes, the file
  backends, FlopAnalyzer's op handles, ...): the same keys and values,
* every registry's entries (existing ones unchanged; new names are what registering adds).
``--then-enable-safe-loading`` also enables the hardening's safe loading after the import:
the snapshot must then report it (the check of the check).
"""
import importlib
import json
import sys
import types

PACKAGES = ('torch', 'mmcv', 'mmengine', 'mmdet', 'mmseg', 'mmpretrain')
OPENMMLAB = PACKAGES[1:]
for name in ('mmengine.runner', 'mmengine.hooks', 'mmengine.analysis', 'mmengine.fileio',
             'mmengine.registry', 'mmdet.registry', 'mmseg.registry', 'mmpretrain.registry',
             'mmdet.models', 'mmseg.models', 'torch.distributed'):
    try:
        importlib.import_module(name)
    except ImportError:  # a library this stack does not have (or mmcv-lite's missing ops)
        pass


def _ours(module_name):
    return module_name.split('.')[0] in PACKAGES


def snapshot():
    from mmengine.registry import Registry
    modules, classes, dicts, registries = {}, {}, {}, {}
    for mname, module in list(sys.modules.items()):
        if not isinstance(module, types.ModuleType) or not _ours(mname):
            continue
        attrs = dict(vars(module))
        modules[mname] = {k: id(v) for k, v in attrs.items()}
        openmmlab = mname.split('.')[0] in OPENMMLAB
        for k, v in attrs.items():
            if isinstance(v, type) and getattr(v, '__module__', None) == mname:
                own = dict(vars(v))
                classes[f'{mname}.{k}'] = {a: id(b) for a, b in own.items()
                                           if a not in ('__dict__', '__weakref__')}
                if openmmlab:
                    for a, b in own.items():
                        if isinstance(b, dict):
                            dicts[f'{mname}.{k}.{a}'] = {str(x): id(y) for x, y in b.items()}
            elif openmmlab and isinstance(v, dict) and not k.startswith('__'):
                dicts[f'{mname}.{k}'] = {str(x): id(y) for x, y in v.items()}
            elif isinstance(v, Registry):
                registries[f'{mname}.{k}'] = {x: id(y) for x, y in v.module_dict.items()}
    return modules, classes, dicts, registries


before = snapshot()
import pale_mm  # noqa: E402,F401

if '--then-enable-safe-loading' in sys.argv:
    from pale_mm.hardening import enable_safe_loading
    enable_safe_loading()
after = snapshot()

changed = []
for name, old in before[0].items():
    new = after[0].get(name, {})
    for attr, ident in old.items():
        if new.get(attr) != ident:
            changed.append(f'module {name}: attribute {attr} changed')
    for attr in set(new) - set(old):
        value = getattr(sys.modules[name], attr, None)
        if not isinstance(value, types.ModuleType):
            changed.append(f'module {name}: attribute {attr} added')
for kind, index in (('class', 1), ('dict', 2)):
    for name, old in before[index].items():
        new = after[index].get(name, {})
        changed += [f'{kind} {name}: {k} changed' for k in old if new.get(k) != old[k]]
        changed += [f'{kind} {name}: {k} added' for k in set(new) - set(old)]
for name, old in before[3].items():
    new = after[3].get(name, {})
    changed += [f'registry {name}: {k} changed' for k in old if new.get(k) != old[k]]
print('CHECKED ' + json.dumps(dict(modules=len(before[0]), classes=len(before[1]),
                                   dicts=len(before[2]), registries=len(before[3]))))
print('CHANGED ' + json.dumps(sorted(set(changed))))
