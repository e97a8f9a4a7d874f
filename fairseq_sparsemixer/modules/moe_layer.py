"""MoE feed-forward layer: y = ω ⊙ Σ_k gate_k · f_{D_k}(x), dropless sorted dispatch.

Plain PyTorch, no fairseq import. Dispatch (MegaBlocks-style, without custom kernels):

    order = argsort(expert of each assignment)        (A,)   A = tokens × k, pads skipped
    token = order // k                                (A,)   top-1: order itself
    xs    = x[token]                                  (A, d) contiguous slice per expert
    ys_e  = f_e(xs[start_e : start_e + count_e])      one matmul pair per expert
    y     = index_add(gate[order] · ys, token)        (T, d)

The gathers are permutations (top-1: each token read once), so their backward scatters the
gradient back without summing (modules/ops.py: no sorting index_put on CUDA).

Pad tokens are sent to a discard slot N, sorted after every expert and cut off, so that no
boolean indexing is needed. The only host-device synchronization of a forward (and its
backward) is the one `.tolist()` of where each expert's run of the sorted experts ends
(`searchsorted`), which sizes the split (plus, with a capacity limit, the indexing that drops
the overflow).

Memory is O(A × d); there is never a (tokens × experts × capacity) one-hot. With autograd on,
every expert is called, on an empty slice if it gets no token, so each expert parameter is
always in the autograd graph (zero gradient) and DDP never sees an unused parameter (the
grouped path below stacks every expert's weights, with the same effect).

expert_impl="grouped" replaces the per-expert loop by two grouped GEMMs
(`torch.nn.functional.grouped_mm`; `torch._grouped_mm` in older torch) over the expert weights
stacked at each call (the parameters and state-dict keys stay per expert). The kernels want
every group to start at a multiple of 16 rows (the weight gradient's jagged reduction reads
from there), so each expert's rows are placed, without a sort or a host sync, into a buffer of
static size R = ceil16(A) + 16·N (`grouped_layout`):

    rank  = Σ_{b<a} 1[D_b = D_a]                   a cumulative count over (A, N + 1) one-hots
    B_e   = 16 (⌊S_e / 16⌋ + e)                    group e's first row, S_e = Σ_{f<e} count_f;
                                                   offs = (B_1, ..., B_{N−1}, R)
    row   = B_{D_a} + rank_a                       the buffer row of assignment a; the pads
                                                   (slot N) land in the last group's tail
    xs    = zeros(R, d) with xs[row] = x_token, 0 at pads                (unused rows stay 0)
    h     = act(grouped_mm(xs, W1ᵀ, offs) + onehot(group) · B1)        (R, d_ff)
    ys    = (grouped_mm(h, W2ᵀ, offs) + onehot(group) · B2)[row]       (A, d), assignment order

so that the gate and the sum over the k choices need no index: y = Σ_k gate_k · ys (T, k, d).

Unused rows and the pads' rows are computed from x = 0 and the pads' outputs are set to 0, so
they get zero gradient and add nothing to any parameter's gradient. The offsets stay on the
device: the layer makes no host sync at all. The biases enter as a one-hot matmul (no gather,
whose backward would scatter). "auto" (default) takes the grouped path where it was measured
faster than the loop (CUDA, bf16/fp16; docs/benchmarks.md): see `grouped_by_default`.
"""
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..routers import build_router, router_class
from ..routers.compiled import compiled_route
from .ops import gather_rows

_grouped_mm = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
EXPERT_IMPLS = ("auto", "loop", "grouped")
_GROUP_ALIGN = 16  # rows: where each expert's group starts in the grouped GEMM's buffer


def _grouped_gemm(a, b, offs):
    """`_grouped_mm(a, b, offs=offs)`; under torch.compile left to torch (a graph break around
    it), so that the rest of the layer compiles: torch 2.13's shape function of `_grouped_mm`,
    which the compiler runs, accepts only bf16 (fp32 fails to trace, on CPU too), and inductor
    failed at the second grouped GEMM in bf16 on an H200 (torch 2.11, issue 21)."""
    if torch.compiler.is_compiling():
        return _eager_grouped_gemm(a, b, offs)
    return _grouped_mm(a, b, offs=offs)


@torch.compiler.disable
def _eager_grouped_gemm(a, b, offs):
    return _grouped_mm(a, b, offs=offs)


def grouped_by_default(device_type: str, x_dtype: torch.dtype, weight_dtype: torch.dtype) -> bool:
    """Where "auto" takes the grouped GEMM: where it was measured faster than the loop, i.e. on
    CUDA with bf16 or fp16 activations and weights (H200, torch 2.11: 0.37-0.62x the loop's
    time in bf16, 0.70-0.94x in fp16, N = 4 and 16, T = 4096 and 16384; docs/benchmarks.md).
    Not measured faster: fp32 and the CPU (torch's per-group fallback loop there)."""
    return (_grouped_mm is not None and device_type == "cuda" and x_dtype == weight_dtype
            and x_dtype in (torch.bfloat16, torch.float16))


_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "swish": F.silu,
                "tanh": torch.tanh, "linear": lambda x: x}


def grouped_layout(expert: torch.Tensor, num_experts: int, align: int = _GROUP_ALIGN):
    """The grouped GEMM's row buffer: (row (A,), offs (N,) int32, R). `expert` (A,): the expert
    of each assignment, N for a pad. Expert e's assignments take rows B_e, B_e + 1, ... in
    assignment order, B_e = align · (⌊S_e / align⌋ + e), S_e = Σ_{f<e} count_f: a multiple of
    `align`, 1 to 2·align − 1 rows after group e − 1's last (B_{e+1} − B_e − count_e =
    align − S_{e+1} mod align + S_e mod align). The pads (slot N) take rows B_N.. < R =
    align · ⌈A / align⌉ + align · N, in the last group (offs[-1] = R), whose tail rows hold zeros.
    offs[e] = B_{e+1}: the end of group e. No sort and no host sync: a cumulative count gives
    each assignment's rank among its expert's."""
    n, a = num_experts, expert.numel()
    rows = -(-a // align) * align + n * align  # R, static
    slots = torch.arange(n + 1, device=expert.device)
    cum = (expert.unsqueeze(1) == slots).cumsum(0)  # (A, N + 1): assignments of e among the first a
    counts = cum[-1] if a else slots.new_zeros(n + 1)  # no assignment: an empty cum
    start = (counts.cumsum(0) - counts).div(align, rounding_mode="floor").add_(slots).mul_(align)  # B
    row = (cum + (start - 1)).gather(1, expert.unsqueeze(1)).squeeze(1)  # B_e + rank: distinct, < R
    offs = F.pad(start[1:n], (0, 1), value=rows).to(torch.int32)
    return row, offs, rows


class Expert(nn.Module):
    """fc2(dropout(act(fc1(x)))): the same FFN as a fairseq Transformer layer."""

    def __init__(self, embed_dim, ffn_dim, activation_fn="relu", activation_dropout=0.0):
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, embed_dim)
        self.act = _ACTIVATIONS[activation_fn]
        self.activation_dropout = activation_dropout

    def forward(self, x):  # (n, d) -> (n, d)
        h = F.dropout(self.act(self.fc1(x)), p=self.activation_dropout, training=self.training)
        return self.fc2(h)


class StandInTerm(torch.autograd.Function):
    """Σ_{j≠D} (p_j − sg p_j) · sg v_j of the dense-gradient routers (routers/switch.py): the
    forward returns zeros (T, d), exactly, whatever v holds (written as 0 · v, one inf in v would
    make every token NaN); the backward gives ∂L/∂p_tj = ⟨∂L/∂y_t, v_j⟩ where `unused` (T, N) is
    True, 0 elsewhere. v: (N, d) shared by the tokens, or (N, T, d) per token."""

    @staticmethod
    def forward(ctx, probs, v, unused):
        ctx.save_for_backward(v, unused)
        return torch.zeros(unused.size(0), v.size(-1), dtype=torch.float32, device=v.device)

    @staticmethod
    def backward(ctx, grad):
        v, unused = ctx.saved_tensors
        g = grad.float()
        gp = g @ v.t() if v.dim() == 2 else torch.einsum("td,ntd->tn", g, v)
        return torch.where(unused, gp, torch.zeros_like(gp)), None, None


class MoEFeedForward(nn.Module):
    """Top-k mixture of `num_experts` FFNs behind a registered router.

    forward(x (..., d), padding_mask (...) bool, True at pads) -> (..., d). Pad tokens are not
    dispatched (their MoE output is 0). `capacity_factor > 0` keeps at most
    ceil(capacity_factor · A / N) assignments per expert, in token order; the overflow gets
    MoE output 0 (the residual passes it through in a Transformer layer).

    compile_router=True runs the router, and in training its statistics and losses, as one
    torch.compile'd graph (routers/compiled.py: the same draws, the same numbers to rounding).

    gate_scaling=False gives y = f_D(x) (the paper's "Switch w/o scaling" ablation; the
    router then gets no gradient from the output). omega=None uses the router's default
    (on for the SparseMixer v1 family, off for switch and sparsemixer-v2).

    After each forward, `self.last` holds the RouterOutput (balance_loss, z_loss,
    expert_counts, entropy, non_argmax_frac, one_kept_frac) and `self.last_dropped` the number of
    assignments dropped by capacity: a criterion collects them from every MoE layer
    (see the criterion `moe_label_smoothed_cross_entropy`).
    """

    def __init__(self, embed_dim: int, ffn_dim: int, num_experts: int, router: str = "sparsemixer",
                 jitter_eps: float = 0.1, activation_fn: str = "relu", activation_dropout: float = 0.0,
                 capacity_factor: float = 0.0, gate_scaling: bool = True, omega: Optional[bool] = None,
                 top_k: int = 1, expert_impl: str = "auto", compile_router: bool = False, **router_options):
        super().__init__()
        if capacity_factor < 0:
            raise ValueError(f"capacity_factor must be >= 0 (0 = dropless), got {capacity_factor}")
        if expert_impl not in EXPERT_IMPLS:
            raise ValueError(f"expert_impl {expert_impl!r} is unknown; valid: {', '.join(EXPERT_IMPLS)}")
        if expert_impl == "grouped" and _grouped_mm is None:
            raise ValueError(f"expert_impl 'grouped' needs torch.nn.functional.grouped_mm (torch "
                             f"{torch.__version__} has none); use 'loop'")
        if expert_impl == "grouped" and capacity_factor > 0:
            raise ValueError("expert_impl 'grouped' is dropless only; with capacity_factor > 0 use 'loop'")
        if activation_fn not in _ACTIVATIONS:
            raise ValueError(f"unknown activation_fn {activation_fn!r}; valid: {', '.join(_ACTIVATIONS)}")
        self.router = build_router(router, embed_dim=embed_dim, num_experts=num_experts,
                                   jitter_eps=jitter_eps, top_k=top_k, **router_options)
        self.experts = nn.ModuleList(
            Expert(embed_dim, ffn_dim, activation_fn, activation_dropout) for _ in range(num_experts))
        if omega is None:
            omega = router_class(router).default_omega
        self.omega = nn.Parameter(torch.ones(embed_dim)) if omega else None
        self.num_experts = num_experts
        self.capacity_factor = float(capacity_factor)
        self.gate_scaling = gate_scaling
        self.expert_impl = expert_impl
        self.compile_router = bool(compile_router)
        self.last = None
        self.last_dropped = 0
        self.last_impl = None  # "loop" or "grouped": the path of the last forward

    def uses_grouped(self, x: torch.Tensor) -> bool:
        if self.expert_impl == "auto":
            return self.capacity_factor == 0 and grouped_by_default(x.device.type, x.dtype,
                                                                    self.experts[0].fc1.weight.dtype)
        return self.expert_impl == "grouped"

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (T, d)
        pad = None if padding_mask is None else padding_mask.reshape(-1).to(torch.bool)
        route = compiled_route(self.router, x, pad) if self.compile_router else self.router(x, pad)
        self.last = route
        n, k = self.num_experts, route.expert_index.size(1)
        # the expert of every assignment (A,) = (token, choice), pads sent to the discard slot n
        expert = route.expert_index.reshape(-1)
        pad_a = None if pad is None else (pad if k == 1 else pad.repeat_interleave(k))
        if pad_a is not None:
            expert = expert.masked_fill(pad_a, n)
        self.last_dropped = 0
        self.last_impl = "grouped" if self.uses_grouped(x) else "loop"
        gate = route.gate.reshape(-1)
        if self.last_impl == "grouped":
            # f_e(x_token) in assignment order (0 at pads): the gate and the sum over the k
            # choices need no index; `expert` is that order's
            ys = self._grouped(x, expert, pad_a, k)
        else:
            ys, token, expert, gate = self._loop(x, expert, gate, k)
        stand_in = None
        if self.router.stand_in is not None and self.training and torch.is_grad_enabled():
            stand_in = self._stand_in_term(x, route, pad, ys, expert)
        if self.gate_scaling:
            ys = ys * gate.unsqueeze(-1).to(ys.dtype)
        if self.last_impl == "grouped":
            out = (ys if k == 1 else ys.view(-1, k, ys.size(-1)).sum(1)).to(x.dtype)
        else:
            out = x.new_zeros(x.shape).index_add_(0, token, ys.to(x.dtype))
        if stand_in is not None:
            out = out + stand_in.to(out.dtype)  # 0 in the forward
        if self.omega is not None:
            out = out * self.omega.to(out.dtype)
        return out.reshape(shape)

    def _loop(self, x, expert, gate, k):
        """(f_e(x_token) of every routed assignment, its tokens, experts, gates), sorted by expert:
        one matmul pair per expert on the contiguous slice of its tokens, sized by the one host
        sync. `expert`, `gate` (A,) in assignment order, pads at the discard slot N."""
        # top-1: the token of sorted position i is order[i]; the gathers are permutations
        top1 = k == 1
        expert, order = torch.sort(expert, stable=True)
        token = order if top1 else order.div(k, rounding_mode="floor")
        gate = gather_rows(gate, order, unique=True)
        # where each expert's run of the sorted experts ends (the pads' slot N is not needed)
        ends = torch.searchsorted(expert, torch.arange(self.num_experts, device=x.device), right=True)
        ends = ends.tolist()  # the host sync
        sizes = [b - a for a, b in zip([0] + ends[:-1], ends)]
        routed = sum(sizes)  # non-pad assignments, sorted first
        token, expert, gate = token[:routed], expert[:routed], gate[:routed]
        if self.capacity_factor > 0:
            token, expert, gate, sizes = self._apply_capacity(token, expert, gate, sizes)
        xs = gather_rows(x, token, unique=top1)  # (A, d), grouped by expert; top-1: each token once
        # with autograd on, every expert runs (on an empty slice if it got no token) so that each
        # parameter is in the graph (DDP); without it (inference), empty experts are skipped
        run_all = torch.is_grad_enabled()
        ys = torch.cat([f(chunk) if run_all or chunk.size(0) else chunk
                        for f, chunk in zip(self.experts, xs.split(sizes))])
        return ys, token, expert, gate

    def _grouped(self, x, expert, pad, k):
        """(A, d) f_e(x_token) of every assignment, in assignment order (token-major, k choices
        each), 0 at pads (`expert` n): two grouped GEMMs over a row buffer in which each expert's
        group starts at a multiple of 16 (module doc). No sort and no host sync."""
        n = self.num_experts
        row, offs, rows = grouped_layout(expert, n)
        group = torch.searchsorted(offs, torch.arange(rows, device=x.device, dtype=torch.int32), right=True)
        # (R, N) one-hot for the biases (F.one_hot would read min/max back to check the range)
        onehot = x.new_zeros(rows, n).scatter_(1, group.unsqueeze(1), 1.0)
        stack = lambda get: torch.stack([get(m) for m in self.experts])
        # the pads' rows hold 0, not the pad tokens' inputs: whatever those hold (an fp16 overflow,
        # a NaN) never reaches the last expert's outputs or its gradients
        xa = x if k == 1 else x.unsqueeze(1).expand(-1, k, -1).reshape(-1, x.size(1))
        if pad is not None:
            xa = xa.masked_fill(pad.unsqueeze(-1), 0)
        xs = x.new_zeros(rows, x.size(1)).index_copy(0, row, xa)  # backward: an index_select
        h = torch.addmm(_grouped_gemm(xs, stack(lambda m: m.fc1.weight).transpose(1, 2), offs=offs),
                        onehot, stack(lambda m: m.fc1.bias))
        e0 = self.experts[0]
        h = F.dropout(e0.act(h), p=e0.activation_dropout, training=self.training)
        ys = torch.addmm(_grouped_gemm(h, stack(lambda m: m.fc2.weight).transpose(1, 2), offs=offs),
                         onehot, stack(lambda m: m.fc2.bias))
        ys = gather_rows(ys, row, unique=True)
        return ys if pad is None else ys.masked_fill(pad.unsqueeze(-1), 0)  # exactly 0 at pads

    def _stand_in_term(self, x, route, pad, ys, expert):
        """Σ_{j≠D} (p_j − sg p_j) · sg v_j per token, (T, d) float32: exactly 0 in the forward; in
        the backward it adds ⟨∂L/∂y, v_j⟩ ∂p_j/∂θ of every expert j the token did not use (pads
        excluded). v_j = f_j(x) (router stand_in "experts": all experts on all tokens, no
        gradient) or the router's EMA Ê_j ("ema"), updated first from this batch's routed
        outputs `ys` (f_e(x_token), assignment experts `expert`; the pad slot N is ignored)."""
        n, p = self.num_experts, route.probs
        used = torch.zeros_like(p, dtype=torch.bool).scatter_(1, route.expert_index, True)
        if pad is not None:
            used = used | pad.unsqueeze(-1)
        with torch.no_grad():
            if self.router.stand_in == "ema":
                sums = ys.new_zeros(n + 1, ys.size(-1), dtype=torch.float32).index_add_(0, expert, ys.float())
                cnt = torch.zeros(n + 1, dtype=torch.long, device=x.device).index_add_(
                    0, expert, torch.ones_like(expert))
                self.router.update_defaults(sums[:n], cnt[:n])
                v = self.router.defaults.float().clone()  # (N, d); a later update must not reach the backward
            else:
                v = torch.stack([f(x).float() for f in self.experts])  # (N, T, d)
        return StandInTerm.apply(p, v, ~used)

    def capacity(self, assignments: int) -> int:
        return math.ceil(self.capacity_factor * assignments / self.num_experts)

    def _apply_capacity(self, token, expert, gate, sizes):
        cap = self.capacity(token.numel())
        kept = [min(c, cap) for c in sizes]
        start = torch.tensor([0] + sizes[:-1], device=token.device).cumsum(0)  # first position of each expert
        keep = torch.arange(token.numel(), device=token.device) - start[expert] < cap
        self.last_dropped = token.numel() - sum(kept)
        return token[keep], expert[keep], gate[keep], kept
