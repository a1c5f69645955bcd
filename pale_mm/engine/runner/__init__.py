"""pale_mm's Runners and the epoch-based loop that resumes mid-epoch: ``HardenedRunner`` (the
opt-in to the run hardening) and ``CheckedDataRunner`` (the tools' runner: hardened, with
checked data)."""
from .checked_data_runner import CheckedDataRunner, build_runner
from .hardened_runner import HardenedRunner
from .resumable_epoch_loop import ResumableEpochBasedTrainLoop

__all__ = ['CheckedDataRunner', 'HardenedRunner', 'ResumableEpochBasedTrainLoop',
           'build_runner']
