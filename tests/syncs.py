"""Count, on CPU, the operations that make the host wait for the device when they run on CUDA:
a value read back (`.item()`, `.tolist()`, `bool(t)`), an output whose size depends on the data
(nonzero, masked_select, boolean-mask indexing and its backward, bincount, unique,
repeat_interleave without output_size). CPU runs show the same calls as CUDA runs, so a test
here bounds the stalls of a GPU step (the GPU check counts them with
torch.cuda.set_sync_debug_mode)."""
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_ALWAYS = {"nonzero", "masked_select", "_local_scalar_dense", "bincount", "unique_dim", "_unique",
           "_unique2", "unique_consecutive", "masked_scatter", "masked_scatter_"}
_BOOL_INDEX = {"index", "index_put", "index_put_", "_index_put_impl_", "_unsafe_index"}


def _is_bool(t):
    return isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8)


class HostSyncs(TorchDispatchMode):
    """with HostSyncs() as s: ... ; s.count, s.ops (a Counter of op names)."""

    def __enter__(self):
        self.ops = Counter()
        self._tolist = torch.Tensor.tolist
        ops = self.ops

        def tolist(t):
            ops["tolist"] += 1
            return self._tolist(t)

        torch.Tensor.tolist = tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)

    @property
    def count(self):
        return sum(self.ops.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in _ALWAYS:
            self.ops[name] += 1
        elif name in _BOOL_INDEX and len(args) > 1 and any(_is_bool(i) for i in (args[1] or [])):
            self.ops[name + "[bool]"] += 1
        elif name == "repeat_interleave" and func._overloadname == "Tensor" and kwargs.get("output_size") is None \
                and (len(args) < 3 or args[-1] is None):
            self.ops["repeat_interleave"] += 1
        return func(*args, **kwargs)
