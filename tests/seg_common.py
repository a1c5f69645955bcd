"""Shared by the tests that train the small UperNet of configs/upernet/pale_t_ade20k.py on
the synthetic ADE20K data: the --cfg-options that shrink it to seconds per run."""
import uuid

from pale_mm.synthetic.ade import ade_cfg_options, format_cfg_options


def own_visualizer():
    """mmseg's runtime names its visualizer 'visualizer', and mmengine hands a later runner
    in the same process the first one's instance (writing into the first work dir): each
    in-process run here gets its own name."""
    return {'visualizer.name': f'vis_{uuid.uuid4().hex[:8]}'}


def small_seg_options(ade, max_iters, schedule_end):
    """Data overrides, a shrunk backbone and heads, and a short schedule."""
    opts = ade_cfg_options(ade)
    opts.update(own_visualizer())
    opts.update({
        'model.backbone.init_cfg': None,
        'model.backbone.arch._delete_': True,
        'model.backbone.arch.embed_dims': 16,
        'model.backbone.arch.depths': [1, 1, 2, 1],
        'model.backbone.arch.num_heads': [2, 2, 4, 4],
        'model.backbone.drop_path_rate': 0.0,
        'model.decode_head.in_channels': [16, 32, 64, 128],
        'model.decode_head.channels': 32,
        'model.auxiliary_head.in_channels': 64,
        'model.auxiliary_head.channels': 16,
        'train_dataloader.batch_size': 4,
        'optim_wrapper.optimizer.lr': 4e-3,
        'param_scheduler.0.end': 5,
        'param_scheduler.1.begin': 5,
        'param_scheduler.1.end': schedule_end,
        'train_cfg.max_iters': max_iters,
        'train_cfg.val_interval': max_iters,
        'default_hooks.logger.interval': 1,
        'default_hooks.checkpoint.interval': max_iters,
        'randomness.seed': 0,
    })
    return format_cfg_options(opts)
