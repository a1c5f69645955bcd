__version__ = '0.1.0'

# mmcv is not a pip requirement of pale_mm (as of mmdet and mmseg): it is either mmcv, with
# compiled ops for the installed torch, or mmcv-lite; `mim install` picks the first.
MMCV_RANGE = ('2.0.0', '2.2.0')  # mmdet 3.3 and mmseg 1.2 refuse mmcv >= 2.2


def check_mmcv() -> None:
    """Raise ImportError naming the fix unless mmcv (or mmcv-lite) is in :data:`MMCV_RANGE`."""
    low, high = MMCV_RANGE
    fix = (f'install it for your torch with `mim install "mmcv>={low},<{high}"` (or mmcv-lite '
           'of that range, without compiled ops: enough for the backbone alone)')
    try:
        import mmcv
    except ImportError:
        raise ImportError(f'pale_mm needs mmcv: {fix}') from None
    from mmengine.utils import digit_version
    if not digit_version(low) <= digit_version(mmcv.__version__) < digit_version(high):
        raise ImportError(f'pale_mm needs {low} <= mmcv < {high}, found mmcv '
                          f'{mmcv.__version__}: {fix}')
