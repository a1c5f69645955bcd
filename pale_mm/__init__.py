"""pale_mm: the Pale Transformer backbone for MMDetection, MMSegmentation and MMPretrain.

``import pale_mm`` (or ``custom_imports=dict(imports=['pale_mm'])`` in a config) registers
``PaleTransformer`` in each installed library's ``MODELS`` registry and routes mmengine's
checkpoint loading through a ``weights_only`` loader with an allow-list.
"""
from . import analysis, checkpoint, hooks  # noqa: F401  (hooks: registers pale_mm's hooks)
from .models import ARCH_SETTINGS, PaleTransformer, pale_attention, pale_attention_reference
from .registry import register_all
from .version import __version__

checkpoint.install()
analysis.install()
register_all()

__all__ = ['PaleTransformer', 'ARCH_SETTINGS', 'pale_attention', 'pale_attention_reference',
           '__version__']
