from .pale_attention import pale_attention, pale_attention_reference, pale_mask
from .pale_transformer import ARCH_SETTINGS, PaleConfigError, PaleTransformer

__all__ = ['PaleTransformer', 'PaleConfigError', 'ARCH_SETTINGS', 'pale_attention',
           'pale_attention_reference', 'pale_mask']
