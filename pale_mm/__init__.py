"""pale_mm: the Pale Transformer backbone for MMDetection, MMSegmentation and MMPretrain.

``import pale_mm`` (or ``custom_imports=dict(imports=['pale_mm'])`` in a config) registers
``PaleTransformer``, its layer-decay optimizer constructor and pale_mm's hooks, loop and
runners in each installed library's registries, and changes nothing else. The run hardening
(safe checkpoint loading, atomic saving, ...) is opt-in: ``runner_type = 'HardenedRunner'``
in a config (:mod:`pale_mm.hardening`); pale_mm's configs and tools have it.
"""
from .version import check_mmcv

check_mmcv()  # before anything imports mmcv's modules: one line naming the fix

from . import engine  # noqa: F401,E402  (registers pale_mm's hooks, loop and runners)
from .models import ARCH_SETTINGS, PaleTransformer, pale_attention, pale_attention_reference  # noqa: E402
from .registry import register_all  # noqa: E402
from .version import __version__  # noqa: E402

register_all()

__all__ = ['PaleTransformer', 'ARCH_SETTINGS', 'pale_attention', 'pale_attention_reference',
           '__version__']
