"""Autograd ops of the MoE layer's dispatch (plain PyTorch, one `autograd.Function` per op).

`x[index]` on a tensor that needs a gradient backpropagates through an accumulating
`index_put` (on CUDA it sorts the indices to add duplicates deterministically: 5.4 of the 27 ms
of kernels of an MoE update on an H200, issue 21), although the layer's gathers are
permutations: every row is read at most once. `gather_rows` says so:

    forward   y = x[index]                       (index_select)
    backward  ∂L/∂x = 0 except ∂L/∂x[index] = ∂L/∂y   (index_copy: a plain scatter, no sort)

which is the exact gradient when `index` has no duplicate (with duplicates the gradient would
have to sum their rows: use `x.index_select(0, index)`, whose backward is an index_add).
"""
import torch


class GatherRows(torch.autograd.Function):
    """y = x[index] for an `index` without duplicates; backward scatters ∂L/∂y back unsummed."""

    @staticmethod
    def forward(ctx, x, index):
        ctx.save_for_backward(index)
        ctx.shape = x.shape
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return grad.new_zeros(ctx.shape).index_copy_(0, index, grad), None


def gather_rows(x: torch.Tensor, index: torch.Tensor, unique: bool) -> torch.Tensor:
    """x[index] along dim 0; `unique=True` promises no duplicate in `index` (see module doc)."""
    if unique and torch.is_grad_enabled() and x.requires_grad:
        return GatherRows.apply(x, index)
    return x.index_select(0, index)
