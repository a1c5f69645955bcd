"""The checkpoints of a work dir: which one ``--resume`` continues from, and the guard that
keeps a new run from overwriting an earlier run's checkpoints."""
import os.path as osp
import sys
import warnings
from typing import Optional

from ..errors import LaunchError

CHECKPOINT_PATTERNS = ('epoch_*.pth', 'iter_*.pth')


def checkpoints_in(work_dir: str):
    """Checkpoints of a work dir (``epoch_*.pth``, ``iter_*.pth``), newest first: by the
    time they were written, then by their number (an epoch-based run preempted mid-epoch
    holds both kinds, whose numbers count different things); none for a work dir that does
    not exist."""
    import glob
    import re
    found = []
    for pattern in CHECKPOINT_PATTERNS:
        for path in glob.glob(osp.join(work_dir, pattern)):
            m = re.search(r'_(\d+)\.pth$', path)
            if m:
                found.append((osp.getmtime(path), int(m.group(1)), path))
    return [p for *_, p in sorted(found, reverse=True)]


def find_resume_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint ``--resume`` (without a path) continues from: the one
    ``last_checkpoint`` names, else the newest in the work dir, passing over (with a warning
    that says why) any that is missing, cut short (a run killed at the wrong moment, an
    incomplete copy), damaged or cannot be loaded
    (:func:`pale_mm.checkpoint.checkpoint_problem`). None for a work dir without
    checkpoints. Temporary files of killed saves are removed.

    Raises:
        LaunchError: the work dir holds checkpoints, but none of them is whole.
    """
    from mmengine.runner import find_latest_checkpoint

    from ..checkpoint import checkpoint_problem
    from ..fileio import remove_stale_tmp_files
    if not osp.isdir(work_dir):
        return None
    for path in remove_stale_tmp_files(work_dir):
        warnings.warn(f'removed {path}, the unfinished save of a killed run')
    named = find_latest_checkpoint(work_dir) or None  # what last_checkpoint names
    if named and not osp.isabs(named) and not osp.exists(named):
        named = osp.join(work_dir, osp.basename(named))
    candidates = [named] if named else []
    candidates += [p for p in checkpoints_in(work_dir)
                   if not named or osp.realpath(p) != osp.realpath(named)]
    passed_over = []
    for path in candidates:
        problem = checkpoint_problem(path, trial_load=True)
        if problem is None:
            if passed_over:
                warnings.warn(f'--resume: passing over {"; ".join(passed_over)}; resuming '
                              f'from {path}, the newest whole checkpoint')
            return path
        passed_over.append(f'{path}, which {problem}')
    if len(candidates) > (1 if named else 0) or (named and osp.exists(named)):
        raise LaunchError(
            f'--resume: no whole checkpoint in {work_dir}: {"; ".join(passed_over)}. Put a '
            'good one there and name it with --resume PATH, or start a new run with another '
            '--work-dir.')
    if named:
        warnings.warn(f'--resume: {osp.join(work_dir, "last_checkpoint")} names {named}, '
                      'which does not exist, and there is no other checkpoint')
    return None


def guard_work_dir(work_dir: str) -> None:
    """A new (not resumed) training run must not overwrite an earlier run's checkpoints."""
    found = checkpoints_in(work_dir)
    if found:
        names = ', '.join(osp.basename(p) for p in found[:3])
        raise LaunchError(
            f'work dir {work_dir} already holds checkpoints of an earlier run ({names}'
            f'{", ..." if len(found) > 3 else ""}); a new run would overwrite them. Continue '
            'that run with --resume, or give this one another --work-dir.')


def apply_resume_option(cfg, resume: Optional[str]) -> None:
    """``tools/train.py --resume``: ``'auto'`` continues from :func:`find_resume_checkpoint`
    (none found: a new run), a path continues from that checkpoint, ``None`` starts a new run,
    which must not overwrite an earlier run's checkpoints (:func:`guard_work_dir`)."""
    from .preflight import check_file
    if resume == 'auto':
        found = find_resume_checkpoint(cfg.work_dir)
        if found:
            cfg.resume, cfg.load_from = True, found
        else:
            print(f'--resume: no checkpoint in {cfg.work_dir}; starting from scratch',
                  file=sys.stderr)
            cfg.resume = False
    elif resume is not None:
        check_file(resume, '--resume checkpoint')
        cfg.resume, cfg.load_from = True, resume
    else:
        guard_work_dir(cfg.work_dir)
        if cfg.get('load_from'):
            check_file(cfg.load_from, 'load_from checkpoint')
