"""PaleTransformer is found by mmdet, mmseg and mmpretrain configs."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg', 'mmpretrain'])
def test_registered_on_import(scope):
    import importlib
    pytest.importorskip(scope, reason=f'{scope} is not installed in this environment (pale_mm '
                        'registers in the libraries that are)')

    from mmengine.registry import DefaultScope

    import pale_mm
    registry = importlib.import_module(f'{scope}.registry').MODELS
    assert 'PaleTransformer' in registry.module_dict  # in the library's own registry
    with DefaultScope.overwrite_default_scope(scope):
        assert registry.get('PaleTransformer') is pale_mm.PaleTransformer
        model = registry.build(dict(type='PaleTransformer', arch='tiny', out_indices=(3, )))
    assert isinstance(model, pale_mm.PaleTransformer)


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_custom_imports_in_a_fresh_process(tmp_path, scope):
    """A config with custom_imports is all a user needs; no `import pale_mm` by hand."""
    cfg = tmp_path / 'cfg.py'
    cfg.write_text(textwrap.dedent(f"""
        default_scope = '{scope}'
        custom_imports = dict(imports=['pale_mm'], allow_failed_imports=False)
        model = dict(type='PaleTransformer', arch='small', pale_size=(7, 7, 7, 7),
                     out_indices=(0, 1, 2, 3))
    """))
    script = textwrap.dedent(f"""
        import json, sys, torch
        from mmengine.config import Config
        from mmengine.registry import init_default_scope
        assert 'pale_mm' not in sys.modules
        cfg = Config.fromfile({str(cfg)!r})
        init_default_scope(cfg.default_scope)
        from {scope}.registry import MODELS
        model = MODELS.build(cfg.model).eval()
        outs = model(torch.randn(1, 3, 64, 64))
        print(json.dumps([list(o.shape) for o in outs]))
    """)
    res = subprocess.run([sys.executable, '-c', script], cwd=str(tmp_path),
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    shapes = json.loads(res.stdout.strip().splitlines()[-1])
    assert shapes == [[1, 96, 16, 16], [1, 192, 8, 8], [1, 384, 4, 4], [1, 768, 2, 2]]
