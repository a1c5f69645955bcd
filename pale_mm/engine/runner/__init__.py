"""The Runner of pale_mm's tools and the epoch-based loop that resumes mid-epoch."""
from .checked_data_runner import CheckedDataRunner, build_runner
from .resumable_epoch_loop import ResumableEpochBasedTrainLoop

__all__ = ['CheckedDataRunner', 'ResumableEpochBasedTrainLoop', 'build_runner']
