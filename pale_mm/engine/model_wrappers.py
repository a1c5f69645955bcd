"""The model a Runner trains, whatever wraps it."""
import torch


def unwrapped_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP (any of mmengine's model wrappers) and test-time-augmentation
    wrappers."""
    from mmengine.model import BaseTTAModel, is_model_wrapper
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model
