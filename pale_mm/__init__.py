"""pale_mm: the Pale Transformer backbone for MMDetection, MMSegmentation and MMPretrain.

``import pale_mm`` (or ``custom_imports=dict(imports=['pale_mm'])`` in a config) registers
``PaleTransformer`` and pale_mm's hooks in each installed library's registries and applies
the fixes that the installed mmengine needs (:mod:`pale_mm.compat`).
"""
from .version import check_mmcv

check_mmcv()  # before anything imports mmcv's modules: one line naming the fix

from . import compat, engine  # noqa: F401,E402  (engine: registers pale_mm's hooks, loop, runner)
from .launch import distributed  # noqa: F401,E402  (before any process group exists, see
# pale_mm/launch/distributed.py)
from .models import (ARCH_SETTINGS, PaleTransformer, pale_attention,  # noqa: E402
                     pale_attention_reference)
from .registry import register_all  # noqa: E402
from .version import __version__  # noqa: E402

compat.apply_fixes()
register_all()

__all__ = ['PaleTransformer', 'ARCH_SETTINGS', 'pale_attention', 'pale_attention_reference',
           '__version__']
