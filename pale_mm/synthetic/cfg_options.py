"""Config overrides as ``--cfg-options KEY=VALUE`` strings (mmengine's ``DictAction``)."""
import re
from typing import Dict, List


def _format_value(value) -> str:
    if isinstance(value, (tuple, list)):
        inner = ','.join(_format_value(v) for v in value)
        if isinstance(value, tuple):
            return f'({inner},)' if len(value) == 1 else f'({inner})'
        return f'[{inner}]'
    text = str(value)
    if re.search(r'[\s,()\[\]=\'"]', text):
        raise ValueError(f'{text!r} cannot be written as a --cfg-options value (it holds '
                         'spaces, commas, brackets, = or quotes); pass it with '
                         'Config.merge_from_dict instead')
    return text


def format_cfg_options(opts: Dict) -> List[str]:
    """``{'a.b': (1, 2)}`` -> ``['a.b=(1,2)']``, for ``tools/train.py --cfg-options``;
    ``DictAction`` parses each back to the same value."""
    return [f'{k}={_format_value(v)}' for k, v in opts.items()]
