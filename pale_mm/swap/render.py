"""The swapped config written as a file of its own: the original as its ``_base_`` and the
overrides, each with the line saying why."""
import keyword
import os
import os.path as osp
import textwrap
from typing import Dict, List

from .outputs import Swap

# ---------------------------------------------------------------------------------------
# writing the config: not Config.pretty_text / dump, which write the whole merged config and
# no comments; this file is the overrides over a _base_, each with its reason as a comment
WIDTH = 96


def _is_name(k) -> bool:
    return isinstance(k, str) and k.isidentifier() and not keyword.iskeyword(k)


def _render(value, level: int = 0, used: int = 0) -> str:
    """``value`` as Python source, dicts with name keys as ``dict(...)``; broken over lines
    (items indented by 4 under ``level``) when longer than the line's room (``used``
    characters of it are taken)."""
    flat = _render_flat(value)
    if level + used + len(flat) <= WIDTH or not isinstance(value, (dict, list, tuple)):
        return flat
    pad = ' ' * (level + 4)
    if isinstance(value, dict):
        items = _dict_items(value, level + 4)
        opening, closing = ('dict(', ')') if all(_is_name(k) for k in value) else ('{', '}')
    else:
        items = [_render(v, level + 4) for v in value]
        opening, closing = ('[', ']') if isinstance(value, list) else ('(', ')')
    trailing = ',' if isinstance(value, tuple) and len(value) == 1 else ''
    return f'{opening}\n{pad}' + f',\n{pad}'.join(items) + f'{trailing}\n{" " * level}{closing}'


def _dict_items(value: dict, level: int) -> List[str]:
    """Items of a dict; in a dict keyed by strings, three or more ``backbone.`` keys with the
    same value (custom_keys for Pale's norms) as one ``**dict.fromkeys([...], value)``."""
    if all(_is_name(k) for k in value):
        return [f'{k}={_render(v, level, len(k) + 1)}' for k, v in value.items()]
    groups: Dict[str, List[str]] = {}
    for k, v in value.items():
        if isinstance(k, str) and k.startswith('backbone.'):
            groups.setdefault(_render_flat(v), []).append(k)
    grouped = {k for keys in groups.values() if len(keys) >= 3 for k in keys}
    items = [f'{k!r}: {_render(v, level, len(repr(k)) + 2)}' for k, v in value.items()
             if k not in grouped]
    for rendered, keys in groups.items():
        if len(keys) < 3:
            continue
        lines, line = [], ''
        for k in keys:
            if line and len(line) + len(repr(k)) + 2 + level + 4 > WIDTH:
                lines.append(line.rstrip())
                line = ''
            line += f'{k!r}, '
        lines.append(line.rstrip())
        inner = '\n'.join(' ' * (level + 4) + x for x in lines)
        items.append(f'**dict.fromkeys([\n{inner}\n{" " * level}], {rendered})')
    return items


def _render_flat(value) -> str:
    if isinstance(value, dict):
        if all(_is_name(k) for k in value):
            return 'dict(' + ', '.join(f'{k}={_render_flat(v)}' for k, v in value.items()) + ')'
        return '{' + ', '.join(f'{k!r}: {_render_flat(v)}' for k, v in value.items()) + '}'
    if isinstance(value, list):
        return '[' + ', '.join(_render_flat(v) for v in value) + ']'
    if isinstance(value, tuple):
        inner = ', '.join(_render_flat(v) for v in value)
        return f'({inner},)' if len(value) == 1 else f'({inner})'
    return repr(value)


def base_reference(config: str, out_file: str) -> str:
    """How ``out_file`` names ``config`` in ``_base_``: ``mmdet::...`` / ``mmseg::...`` for a
    library's installed config, else the path relative to ``out_file``'s folder."""
    if '::' in config:
        return config
    real = osp.realpath(config)
    for scope in ('mmdet', 'mmseg', 'mmpretrain'):
        try:
            package = osp.dirname(__import__(scope).__file__)
        except ImportError:
            continue
        root = osp.realpath(osp.join(package, '.mim', 'configs'))
        if real.startswith(root + os.sep):
            return f'{scope}::{osp.relpath(real, root)}'
    return osp.relpath(real, osp.dirname(osp.abspath(out_file)))


def render_config(config: str, swap: Swap, out_file: str, command: str = '') -> str:
    """The text of a config that inherits ``config`` and applies ``swap``."""
    lines = ['# Made by tools/swap_backbone.py' + (f':\n#   {command}' if command else '.'),
             '# Changes from the base config, and why:']
    for change in swap.changes:
        lines += textwrap.wrap(change, WIDTH, initial_indent='#   - ',
                               subsequent_indent='#     ', break_on_hyphens=False,
                               break_long_words=False)
    lines += [f'_base_ = [{base_reference(config, out_file)!r}]',
              f'custom_imports = {_render(swap.custom_imports, 0, len("custom_imports = "))}']
    for key, value in swap.overrides.items():
        lines.append(f'{key} = {_render(value, 0, len(key) + 3)}')
    return '\n'.join(lines) + '\n'
