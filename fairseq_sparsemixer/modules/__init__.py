from .moe_layer import Expert, MoEFeedForward


def moe_layers(model):
    """All MoEFeedForward modules of `model`, in module order."""
    return [m for m in model.modules() if isinstance(m, MoEFeedForward)]


__all__ = ["Expert", "MoEFeedForward", "moe_layers"]
