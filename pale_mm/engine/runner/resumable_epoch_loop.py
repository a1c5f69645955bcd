"""ResumableEpochBasedTrainLoop: mmengine's epoch-based loop, able to continue in the
middle of an epoch, where a preempted run writes its checkpoint."""
from mmengine.logging import print_log
from mmengine.registry import LOOPS
from mmengine.runner import EpochBasedTrainLoop


@LOOPS.register_module()
class ResumableEpochBasedTrainLoop(EpochBasedTrainLoop):
    """mmengine's ``EpochBasedTrainLoop``, able to continue from a checkpoint written in the
    middle of an epoch (by :class:`PreemptionHook`, or by a ``CheckpointHook`` with
    ``by_epoch=False``): the batches of that epoch already trained are read again and
    skipped, as mmengine's ``IterBasedTrainLoop`` does when it resumes, so that the data
    pipeline's random draws replay. mmengine's own loop would train the whole epoch again.
    All epochs have ``len(dataloader)`` batches (as mmengine's schedulers also assume)."""

    # Batches of the current epoch trained so far; a checkpoint written in the middle of an
    # epoch carries it (meta['batches_into_epoch'], by PreemptionHook), one written at the
    # end of an epoch does not (0).
    batches_into_epoch = 0

    def run_epoch(self) -> None:
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        trained, self.batches_into_epoch = self.batches_into_epoch, 0
        if trained > 0:
            print_log(f'skipping the {trained} batches of epoch {self._epoch + 1} trained '
                      'before the checkpoint', logger='current')
        for idx, data_batch in enumerate(self.dataloader):
            if idx >= trained:
                self.batches_into_epoch = idx + 1  # as a save in after_train_iter sees it
                self.run_iter(idx, data_batch)
        self.batches_into_epoch = 0
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1
