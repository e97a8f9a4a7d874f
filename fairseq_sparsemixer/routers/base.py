"""Top-1 (and top-k) routers: shared masking, sampling and load statistics.

Plain PyTorch, no fairseq import. Notation follows Liu, Gao, Chen (2023), "Sparse
Backpropagation for MoE Training" (arXiv 2310.00811):

    θ = W x                 router logits, (tokens, N)
    π = softmax(θ) restricted to the experts kept by the mask (§4, "sparsity")
    D                       the chosen expert
    gate                    the combine weight of D (before omega)

All router math runs in float32 whatever the dtype of the input (fp16/bf16 logits are
upcast, autocast is disabled inside `route`).
"""
from dataclasses import dataclass
from functools import cached_property
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .stats import router_stats


@dataclass
class RouterOutput:
    """The routing decision, and its statistics computed on first access (so that inference,
    which reads none of them, pays nothing for them)."""

    expert_index: torch.Tensor  # int64 (T, k)   chosen expert(s)
    gate: torch.Tensor  # float32 (T, k)          combine weight, carries the estimator's gradient
    probs: torch.Tensor  # float32 (T, N)         routing distribution (masked softmax when masked)
    logits: torch.Tensor  # float32 (T, N)        router logits θ (before any Switch noise)
    padding_mask: Optional[torch.Tensor] = None  # bool (T,), True at pads: left out of the stats
    balance_probs: Optional[torch.Tensor] = None  # float32 (T, N): P of the balance loss, if not `probs`

    # statistics over the non-pad tokens:
    #   balance_loss     scalar   N * sum_e f_e * mean_t P_e   (differentiable through P = probs,
    #                             or balance_probs where the router gives them)
    #   z_loss           scalar   mean_t logsumexp(θ)^2        (differentiable through θ)
    #   expert_counts    int64 (N,)  tokens whose first choice is e
    #   entropy          scalar   mean_t H(probs), no gradient (nats)
    #   non_argmax_frac  scalar   fraction of tokens with first choice != argmax θ
    #   one_kept_frac    scalar   fraction of tokens whose probs keep a single expert (π_D = 1,
    #                             ∂π/∂θ = 0: no gradient from the gate nor the balance loss)
    balance_loss = property(lambda self: self._stats["balance_loss"])
    z_loss = property(lambda self: self._stats["z_loss"])
    expert_counts = property(lambda self: self._stats["expert_counts"])
    entropy = property(lambda self: self._stats["entropy"])
    non_argmax_frac = property(lambda self: self._stats["non_argmax_frac"])
    one_kept_frac = property(lambda self: self._stats["one_kept_frac"])

    @cached_property
    def _stats(self):
        return self.compute_stats()

    def compute_stats(self) -> dict:
        """Masked means over the non-pad tokens (routers/stats.py): no boolean indexing, no
        data-dependent branch, so reading them never waits for the device."""
        with torch.autocast(device_type=self.logits.device.type, enabled=False):
            return router_stats(self.logits, self.probs, self.expert_index[:, 0], self.padding_mask,
                                self.balance_probs)

    def preset_stats(self, stats: dict) -> "RouterOutput":
        """Sets the statistics `compute_stats` gave elsewhere (routers/compiled.py: in the
        router's compiled graph) in place of the lazy ones."""
        self.__dict__["_stats"] = stats
        return self


def relative_mask(logits: torch.Tensor, jitter_eps: float, best: Optional[torch.Tensor] = None,
                  scale_logits: Optional[torch.Tensor] = None, min_kept: int = 1) -> torch.Tensor:
    """Boolean (T, N), True where expert j is DROPPED (paper §4):

        (θ* − θ_j) / max(|θ_j|, θ*) > 2r,   θ* = max_j θ_j,  r = jitter_eps

    written without a division, (θ* − θ_j) > 2r·max(|θ_j|, θ*), so that 0/0 never occurs
    (θ* = θ_j = 0 keeps j). The best expert is never dropped. `best` overrides θ* (the
    second stage of top-2 routing thresholds against the best REMAINING logit) and
    `scale_logits` the logits whose magnitude enters the relative factor. `min_kept` K > 1
    keeps the K best experts whatever their distance (beyond the paper: a remedy for tokens
    whose mask keeps one expert and so give the router no gradient).
    """
    with torch.no_grad():
        if best is None:
            best = logits.max(dim=-1, keepdim=True).values
        mags = (logits if scale_logits is None else scale_logits).abs()
        factor = torch.maximum(mags, best)
        drop = (best - logits) > (2.0 * jitter_eps) * factor
        if min_kept > 1:
            top = logits.topk(min(min_kept, logits.size(-1)), dim=-1).indices
            drop = drop.scatter(-1, top, False)
        return drop


def gumbel_argmax(masked_logits: torch.Tensor) -> torch.Tensor:
    """D ~ softmax(masked_logits) by the Gumbel-max trick: argmax_j θ_j − log E_j, E_j ~ Exp(1).

    E is clamped away from 0, so the noise is always finite (no log(0) = −inf → +inf pick)."""
    e = torch.empty_like(masked_logits).exponential_().clamp_min_(torch.finfo(masked_logits.dtype).tiny)
    return (masked_logits - e.log()).argmax(dim=-1, keepdim=True)


class Router(nn.Module):
    """Base class. Subclasses implement `select(logits) -> (expert_index, gate, probs)`.

    `router(x, padding_mask)` = `router.route(router.proj(x), padding_mask)`.
    `padding_mask` (T,) bool, True at pad tokens: excluded from the balance loss, z-loss and
    the load statistics (they are still routed; the MoE layer skips them)."""

    #: whether the MoE layer uses the learned per-channel omega by default
    default_omega = False
    #: the largest top_k the router supports
    max_top_k = 1
    #: None, or the stand-in outputs of the experts a token did not use, whose terms the MoE
    #: layer adds to the router's gradient: "experts" (run them all) or "ema" (routers/switch.py)
    stand_in = None

    def __init__(self, embed_dim: int, num_experts: int, jitter_eps: float = 0.1, top_k: int = 1,
                 bias: bool = False):
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        if jitter_eps < 0:
            raise ValueError(f"jitter_eps must be >= 0, got {jitter_eps}")
        if not 1 <= top_k <= min(self.max_top_k, num_experts):
            raise ValueError(
                f"top_k={top_k} is not allowed for router {self.name!r} with {num_experts} experts "
                f"(allowed: 1..{min(self.max_top_k, num_experts)})")
        self.num_experts = num_experts
        self.jitter_eps = float(jitter_eps)
        self.top_k = top_k
        # θ = W x (+ b with bias=True: the authors' released router, nn.Linear(d, N) with its
        # default initialization). The mask's relative distance is not shift-invariant, so a
        # bias changes which experts it keeps.
        self.proj = nn.Linear(embed_dim, num_experts, bias=bias)

    name = "router"

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> RouterOutput:
        with torch.autocast(device_type=x.device.type, enabled=False):
            bias = None if self.proj.bias is None else self.proj.bias.float()
            logits = F.linear(x.float(), self.proj.weight.float(), bias)  # (T, N) in fp32
        return self.route(logits, padding_mask)

    def route(self, logits: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> RouterOutput:
        if logits.dim() != 2 or logits.size(-1) != self.num_experts:
            raise ValueError(f"logits must be (tokens, {self.num_experts}), got {tuple(logits.shape)}")
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = logits.float()  # never in place: a new tensor for fp16/bf16, the caller's otherwise
            expert_index, gate, probs = self.select(logits)
            balance_probs = self.balance_probs_of(logits)
        out = RouterOutput(expert_index, gate, probs, logits, padding_mask, balance_probs)
        if torch.compiler.is_compiling() and torch.is_grad_enabled():
            # traced by torch.compile in training (routers/compiled.py, or a compiled layer): the
            # statistics in the same graph (read lazily, after it, they would run eagerly)
            out.preset_stats(out.compute_stats())
        return out

    def select(self, logits):
        raise NotImplementedError

    def balance_probs_of(self, logits):
        """P of the balance loss where it is not the routing distribution (default: it is)."""
        return None
