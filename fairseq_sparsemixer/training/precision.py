"""`--bf16` on CUDA (and CPU) from the fairseq command line.

fairseq's `options.parse_args_and_arch` sets `tpu=True` whenever `--bf16` is given (bf16 was
TPU-only when it was written), and training then looks for an XLA device and crashes. The
architecture function runs after that mapping, so every registered one is wrapped to undo it
where torch_xla is not installed (a real TPU run has it and keeps the mapping). Importing
the plugin (`--user-dir fairseq_sparsemixer`) installs it; architectures of fairseq and of
this plugin are covered, the dense `transformer` baseline too.
"""
import functools
import importlib.util

from fairseq.models import ARCH_CONFIG_REGISTRY


def bf16_without_tpu(args):
    if getattr(args, "bf16", False) and getattr(args, "tpu", False) and importlib.util.find_spec("torch_xla") is None:
        args.tpu = False


def _wrap(arch_fn):
    @functools.wraps(arch_fn)
    def arch(args):
        bf16_without_tpu(args)
        return arch_fn(args)

    arch.bf16_fixed = True
    return arch


def install():
    for name, fn in list(ARCH_CONFIG_REGISTRY.items()):
        if not getattr(fn, "bf16_fixed", False):
            ARCH_CONFIG_REGISTRY[name] = _wrap(fn)
