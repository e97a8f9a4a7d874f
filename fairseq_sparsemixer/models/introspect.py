"""Model introspection: a model's MoE layers and the short names ('enc0', 'dec2') under which
the criterion logs them (`load_<name>_e<j>`) and the diagnostics report them."""
from ..modules import MoEFeedForward


def _short(name):
    """'encoder.layers.2.fc1' -> 'enc2'; wrappers' prefixes ('module.' under DDP) are skipped."""
    parts = name.split(".")
    side = next((i for i, p in enumerate(parts) if p in ("encoder", "decoder")), 0)
    idx = next((p for p in parts[side + 1:] if p.isdigit()), "")
    return {"encoder": "enc", "decoder": "dec"}.get(parts[side], parts[side]) + idx


def moe_named_layers(model):
    """[(short name, MoEFeedForward)] of `model`, in module order."""
    return [(_short(n), m) for n, m in model.named_modules() if isinstance(m, MoEFeedForward)]
