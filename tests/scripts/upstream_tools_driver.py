"""tests/test_upstream_tools.py: runs the library's own tools/train.py and tools/test.py as
__main__ (argv as on the command line), then its inferencer on the config with the given
overrides (each step only where the spec has it); prints what it found as one line of json
(FOUND {...}): among it, which loader mmengine loads local checkpoints with afterwards, and
how ``spec['load']`` (a checkpoint) loads through it.

    python tests/scripts/upstream_tools_driver.py SPEC_JSON
"""
import json
import os
import runpy
import sys

sys.path[0] = os.getcwd()  # as for ``python -c``: the working directory, not this folder
spec = json.loads(sys.argv[1])
found = dict(pale_mm_before=('pale_mm' in sys.modules))


def run(script, args):
    sys.argv = [script] + args
    try:
        runpy.run_path(script, run_name='__main__')
    except SystemExit as e:
        if e.code not in (0, None):
            raise


run(spec['tools'] + '/train.py', spec['train'])
if spec.get('test'):
    run(spec['tools'] + '/test.py', spec['test'])
found['pale_mm_after_tools'] = 'pale_mm' in sys.modules

from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint

loader = CheckpointLoader._schemes['']
found['local_loader'] = f'{loader.__module__}.{loader.__qualname__}'
if spec.get('load'):
    try:
        _load_checkpoint(spec['load'])
        found['load'] = 'loaded'
    except Exception as e:  # what mmengine (or the hardening) said of it
        found['load'] = type(e).__name__
if not spec.get('inferencer_options'):
    print('FOUND ' + json.dumps(found))
    sys.exit(0)

from mmengine.config import Config, DictAction

cfg = Config.fromfile(spec['config'])
cfg.merge_from_dict({k: DictAction._parse_iterable(v) for k, v in
                     (o.split('=', 1) for o in spec['inferencer_options'])})
if spec['scope'] == 'mmdet':
    from mmdet.apis import DetInferencer as Inferencer
else:
    from mmseg.apis import MMSegInferencer as Inferencer
inferencer = Inferencer(model=cfg, weights=spec['checkpoint'], device='cpu')
result = inferencer(spec['image'], return_vis=False)
prediction = result['predictions']
prediction = prediction[0] if isinstance(prediction, list) else prediction
if isinstance(prediction, dict):
    found['prediction'] = {k: len(v) for k, v in prediction.items() if k in ('labels', 'bboxes')}
else:
    found['prediction'] = list(prediction.shape)
print('FOUND ' + json.dumps(found))
