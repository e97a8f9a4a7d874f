"""fairseq-sparsemixer: SparseMixer / Switch MoE for fairseq (`--user-dir fairseq_sparsemixer`).

`fairseq_sparsemixer.routers` and `fairseq_sparsemixer.modules` are plain PyTorch. When fairseq
is installed, importing this package also registers the model and the criterion (fairseq
imports a --user-dir package but does not auto-import its criterions).
"""
import os

__version__ = "0.1.0"

# torch >= 2.6 loads checkpoints with weights_only=True, which refuses fairseq checkpoints
# (they pickle argparse/omegaconf objects). fairseq reads this variable; it is set here, in this
# one place, so that fairseq-train/generate with --user-dir load our checkpoints. Loading a
# pickle runs code: load only checkpoints you trust (your own).
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

try:
    import fairseq  # noqa: F401
except ImportError:  # plain-PyTorch use of routers/modules
    pass
else:
    from . import criterions, models  # noqa: F401
    from .training import atomic_copy, precision, progress_log

    atomic_copy.install()  # checkpoint_last.pt / _best.pt are never left half-written
    progress_log.install()  # --log-file: each record once; console: per-layer least load
    precision.install()  # --bf16 means bf16 on CUDA/CPU, not TPU, without torch_xla
