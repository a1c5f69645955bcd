"""CheckpointFitHook: a checkpoint whose weights do not fit the model is refused before
it is loaded (:func:`pale_mm.checkpoint.check_checkpoint_fits`)."""
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from ...checkpoint.state_dict import check_checkpoint_fits
from ..model_wrappers import unwrapped_model


@HOOKS.register_module()
class CheckpointFitHook(Hook):
    """Refuse a checkpoint that does not fit the model (:func:`check_checkpoint_fits`)
    before its weights are loaded: mmengine alone warns and goes on with the weights that
    fit. Exact when resuming and testing; fine-tuning (``load_from`` in training) may bring
    heads of other shapes."""

    priority = 'VERY_HIGH'

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        from mmengine.runner import BaseLoop

        # Runner.train() builds its loop before it loads a checkpoint, Runner.test() does not
        training = isinstance(getattr(runner, '_train_loop', None), BaseLoop)
        fine_tuning = training and not runner.cfg.get('resume')
        check_checkpoint_fits(unwrapped_model(runner.model), checkpoint,
                              runner.cfg.get('load_from') or 'being loaded',
                              exact=not fine_tuning)
