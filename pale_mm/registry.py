"""Register pale_mm's modules in the OpenMMLab registries that are installed.

MMDetection, MMSegmentation and MMPretrain each keep their own registries (children of
mmengine's root registries); a config's ``default_scope`` picks which one ``type=`` names are
looked up in, so pale_mm's modules go into each of them, and into mmengine's root registries
too, which every scope falls back to (so a build under ``default_scope='mmengine'`` or a
library's child scope finds them as well):

* ``PaleTransformer`` into ``MODELS``,
* ``PaleLayerDecayOptimizerConstructor`` into ``OPTIM_WRAPPER_CONSTRUCTORS``.
"""
import importlib

from .engine.optimizers import PaleLayerDecayOptimizerConstructor
from .models import PaleTransformer

_REGISTRIES = ('mmengine.registry', 'mmdet.registry', 'mmseg.registry', 'mmpretrain.registry')
_MODULES = (('MODELS', 'PaleTransformer', PaleTransformer),
            ('OPTIM_WRAPPER_CONSTRUCTORS', 'PaleLayerDecayOptimizerConstructor',
             PaleLayerDecayOptimizerConstructor))
registered_in = []


def register_all() -> list:
    """Register pale_mm's modules in every installed library; returns the libraries."""
    for module_name in _REGISTRIES:
        try:
            library = importlib.import_module(module_name)
        except ImportError:
            continue
        for registry_name, name, module in _MODULES:
            registry = getattr(library, registry_name)
            if registry.module_dict.get(name) is not module:
                registry.register_module(name=name, module=module, force=True)
        scope = module_name.split('.')[0]
        if scope not in registered_in:
            registered_in.append(scope)
    return list(registered_in)
