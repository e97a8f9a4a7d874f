"""MoE feed-forward layer: y = ω ⊙ Σ_k gate_k · f_{D_k}(x), dropless sorted dispatch.

Plain PyTorch, no fairseq import. Dispatch (MegaBlocks-style, without custom kernels):

    order = argsort(expert of each assignment)        (A,)   A = tokens × k, pads skipped
    xs    = x[token[order]]                           (A, d) contiguous slice per expert
    ys_e  = f_e(xs[start_e : start_e + count_e])      one matmul pair per expert
    y     = index_add(gate[order] · ys, token[order]) (T, d)

Pad tokens are sent to a discard slot N, sorted after every expert and cut off, so that no
boolean indexing is needed. The only host-device synchronization of a forward (and its
backward) is the one `.tolist()` of the counts that sizes the split (plus, with a capacity
limit, the indexing that drops the overflow).

Memory is O(A × d); there is never a (tokens × experts × capacity) one-hot. With autograd on,
every expert is called, on an empty slice if it gets no token, so each expert parameter is
always in the autograd graph (zero gradient) and DDP never sees an unused parameter.
"""
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..routers import build_router, router_class

_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "swish": F.silu,
                "tanh": torch.tanh, "linear": lambda x: x}


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


class MoEFeedForward(nn.Module):
    """Top-k mixture of `num_experts` FFNs behind a registered router.

    forward(x (..., d), padding_mask (...) bool, True at pads) -> (..., d). Pad tokens are not
    dispatched (their MoE output is 0). `capacity_factor > 0` keeps at most
    ceil(capacity_factor · A / N) assignments per expert, in token order; the overflow gets
    MoE output 0 (the residual passes it through in a Transformer layer).

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
                 top_k: int = 1, **router_options):
        super().__init__()
        if capacity_factor < 0:
            raise ValueError(f"capacity_factor must be >= 0 (0 = dropless), got {capacity_factor}")
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
        self.last = None
        self.last_dropped = 0

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (T, d)
        pad = None if padding_mask is None else padding_mask.reshape(-1).to(torch.bool)
        route = self.router(x, pad)
        self.last = route
        n, k = self.num_experts, route.expert_index.size(1)
        # assignments (A,) = (token, expert, gate); pads to the discard slot n
        token = torch.arange(x.size(0), device=x.device).repeat_interleave(k)
        expert = route.expert_index.reshape(-1)
        gate = route.gate.reshape(-1)
        if pad is not None:
            expert = expert.masked_fill(pad.repeat_interleave(k), n)
        order = torch.argsort(expert, stable=True)
        token, expert, gate = token[order], expert[order], gate[order]
        counts = torch.zeros(n + 1, dtype=torch.long, device=x.device)
        sizes = counts.scatter_add_(0, expert, torch.ones_like(expert)).tolist()[:n]  # the host sync
        routed = sum(sizes)  # non-pad assignments, sorted first
        token, expert, gate = token[:routed], expert[:routed], gate[:routed]
        self.last_dropped = 0
        if self.capacity_factor > 0:
            token, gate, sizes = self._apply_capacity(token, expert, gate, sizes)
        xs = x[token]  # (A, d), grouped by expert
        # with autograd on, every expert runs (on an empty slice if it got no token) so that each
        # parameter is in the graph (DDP); without it (inference), empty experts are skipped
        run_all = torch.is_grad_enabled()
        ys = torch.cat([f(chunk) if run_all or chunk.size(0) else chunk
                        for f, chunk in zip(self.experts, xs.split(sizes))])
        if self.gate_scaling:
            ys = ys * gate.unsqueeze(-1).to(ys.dtype)
        out = x.new_zeros(x.shape).index_add_(0, token, ys.to(x.dtype))
        if self.omega is not None:
            out = out * self.omega.to(out.dtype)
        return out.reshape(shape)

    def capacity(self, assignments: int) -> int:
        return math.ceil(self.capacity_factor * assignments / self.num_experts)

    def _apply_capacity(self, token, expert, gate, sizes):
        cap = self.capacity(token.numel())
        kept = [min(c, cap) for c in sizes]
        start = torch.tensor([0] + sizes[:-1], device=token.device).cumsum(0)  # first position of each expert
        keep = torch.arange(token.numel(), device=token.device) - start[expert] < cap
        self.last_dropped = token.numel() - sum(kept)
        return token[keep], gate[keep], kept
