"""Register pale_mm's modules in the OpenMMLab registries that are installed.

MMDetection, MMSegmentation and MMPretrain each keep their own ``MODELS`` registry (children
of mmengine's root registry); a config's ``default_scope`` picks which one ``type=`` names
are looked up in, so the backbone goes into each of them, and into mmengine's root registry
too, which every scope falls back to (so a build under ``default_scope='mmengine'`` or a
library's child scope finds it as well).
"""
import importlib

from .models import PaleTransformer

_REGISTRIES = ('mmengine.registry', 'mmdet.registry', 'mmseg.registry', 'mmpretrain.registry')
registered_in = []


def register_all() -> list:
    """Register :class:`PaleTransformer` in every installed library; returns their names."""
    for module_name in _REGISTRIES:
        try:
            registry = importlib.import_module(module_name).MODELS
        except ImportError:
            continue
        if registry.module_dict.get('PaleTransformer') is not PaleTransformer:
            registry.register_module(name='PaleTransformer', module=PaleTransformer,
                                     force=True)
        scope = module_name.split('.')[0]
        if scope not in registered_in:
            registered_in.append(scope)
    return list(registered_in)
