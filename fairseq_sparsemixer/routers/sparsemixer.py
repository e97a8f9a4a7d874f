r"""SparseMixer routers (paper §3–§4) and GRIN-MoE's SparseMixer-v2.

Expected loss of a top-1 MoE with D ~ π and φ_i(g) = L(g · f_i(x)):

    ∇_θ E_D[φ_D(π_D)] = Σ_i φ_i(π_i) ∂π_i/∂θ  +  Σ_i π_i φ_i'(π_i) ∂π_i/∂θ
                        \______ ∇0 ________/     \__________ ∇1 __________/

Switch keeps only ∇1. SparseMixer writes ∇0 = Σ_i (φ_i(π_i) − φ_i(0)) ∂π_i/∂θ (the φ(0)
terms sum to zero) and integrates φ_i(π_i) − φ_i(0) numerically:

  * forward Euler:  π_i φ_i'(π_i)         → ∇0 + ∇1 ≈ E_D[2 φ_D'(π_D) ∂π_D/∂θ]
  * mid-point:      π_i φ_i'(π_i / 2)     → forward with gate π_D/2, same backward rule

Estimator implemented by `EstimatorGate`: the forward returns gate = s · π_D for a sampled
scale s, and the gradient reaching θ is

    c · (∂L/∂gate) · ∂π_D/∂θ = c · (∂L/∂gate) · π_D (e_D − π)

with c = 2 for SparseMixer (v1) and c = 1 for v2. No other path reaches θ from the gate.
"""
import torch

from .base import Router, gumbel_argmax, relative_mask

BALANCE_PROBS = ("masked", "full")  # the balance loss's P: the masked softmax (default) or the full one


class EstimatorGate(torch.autograd.Function):
    """gate = scale · π_D in the forward; ∂/∂θ = c · grad_gate · π_D (e_D − π) in the backward.

    Shapes: logits, probs (T, N); index, scale (T, 1). `probs` is the (detached) masked
    softmax of `logits`; masked experts have π = 0 and so receive exactly zero gradient."""

    @staticmethod
    def forward(ctx, logits, probs, index, scale, grad_factor: float):
        p_d = probs.gather(-1, index)  # (T, 1)
        ctx.save_for_backward(probs, index, p_d)
        ctx.grad_factor = grad_factor
        return p_d * scale

    @staticmethod
    def backward(ctx, grad_gate):
        probs, index, p_d = ctx.saved_tensors
        g = grad_gate * p_d * ctx.grad_factor  # (T, 1)
        grad_logits = probs * (-g)  # −g π_j
        grad_logits.scatter_add_(-1, index, g)  # + g at D
        return grad_logits, None, None, None, None


def _scale(rule: str, non_argmax: torch.Tensor) -> torch.Tensor:
    """Forward gate scale s, (T, 1) in the default dtype (float32), for the integration rule of
    each variant, from one coin per token (drawn whatever the rule: the same random stream for
    every variant). `non_argmax` (T, 1) bool: 1[D ≠ argmax π]. Written as s = c^b, b = 1[the
    coin takes the other rule] (one op: c^0 = 1, c^1 = c, exactly), not as a `where` between
    tensors of ones."""
    coin = torch.rand(non_argmax.shape, device=non_argmax.device)
    if rule == "euler":  # always first order
        return torch.ones_like(coin)
    if rule == "midpoint":  # argmax: first order; else a fair coin picks Euler or mid-point
        return torch.pow(0.5, non_argmax & (coin >= 0.5))
    if rule == "midpoint-all":  # the coin for every D, the argmax too
        return torch.pow(0.5, coin >= 0.5)
    if rule == "monte-carlo":  # s ~ U(0, 1) off the argmax: MC estimate of ∫_0^1 φ'(sπ) ds
        return coin.masked_fill(~non_argmax, 1.0)
    if rule == "heun3":  # GRIN-MoE: s = 1 at the argmax or with prob. 1/4, else 1/3
        return torch.pow(1.0 / 3.0, non_argmax & (coin >= 0.25))
    raise ValueError(rule)


class SparseMixerRouter(Router):
    """SparseMixer (v1), the paper's method: mask, D ~ π (Gumbel-max), forward gate s·π_D with
    s from the mid-point coin off the argmax, backward 2 · ∂L/∂gate · ∂π_D/∂θ.

    Option `mask=False` samples from the full softmax (the paper's "w/o mask" ablation).
    Remedies for tokens whose mask keeps one expert (π_D = 1: no router gradient from the gate
    nor from the balance loss), beyond the paper, off by default, refused with mask=False (where
    they would do nothing): `min_kept=K` keeps the K best experts in every token's mask (in
    both stages of sparsemixer-v2's top-2); `balance_probs="full"` computes the balance loss
    N·Σ f_e·P̄_e from the unmasked softmax(θ) (as the transformers PhiMoE port of
    SparseMixer-v2 does), so that every token's router gets its gradient."""

    name = "sparsemixer"
    default_omega = True
    rule = "midpoint"
    grad_factor = 2.0
    sample = True  # D ~ π in training (False: D = argmax π, the ladder's sampling rung)

    def __init__(self, embed_dim, num_experts, jitter_eps=0.1, top_k=1, bias=False, mask=True,
                 min_kept=1, balance_probs="masked"):
        super().__init__(embed_dim, num_experts, jitter_eps, top_k, bias)
        if not 1 <= min_kept <= num_experts:
            raise ValueError(f"min_kept={min_kept} must be in 1..{num_experts} (the number of experts)")
        if balance_probs not in BALANCE_PROBS:
            raise ValueError(f"balance_probs={balance_probs!r} must be 'masked' or 'full'")
        if not mask and (min_kept != 1 or balance_probs != "masked"):
            raise ValueError("min_kept and balance_probs='full' act on the mask; with mask=False "
                             "(the full softmax) they would do nothing")
        self.mask = bool(mask)
        self.min_kept = int(min_kept)
        self.balance_probs = balance_probs

    def balance_probs_of(self, logits):
        return logits.softmax(dim=-1) if self.balance_probs == "full" else None

    def _stage(self, logits, drop, best=None):
        """One routing stage on the experts not dropped: (index, gate, probs). `best`: the
        argmax of the kept logits where the caller has it."""
        masked = logits.masked_fill(drop, float("-inf")) if drop is not None else logits
        probs = masked.softmax(dim=-1)  # π, differentiable (used by the balance loss)
        if best is None:
            best = masked.argmax(dim=-1, keepdim=True)
        if not self.training:
            return best, probs.gather(-1, best), probs
        with torch.no_grad():
            index = gumbel_argmax(masked.detach()) if self.sample else best
            scale = _scale(self.rule, index != best)
        gate = EstimatorGate.apply(logits, probs.detach(), index, scale, self.grad_factor)
        return index, gate, probs

    def select(self, logits):
        # the best logit and its expert in one op: the mask never drops the best, so the argmax
        # of the kept logits is the argmax of all (the first on a tie, as argmax)
        top, best = logits.detach().max(dim=-1, keepdim=True)
        drop = relative_mask(logits, self.jitter_eps, best=top, min_kept=self.min_kept) if self.mask else None
        index, gate, probs = self._stage(logits, drop, best)
        if self.top_k == 1:
            return index, gate, probs
        # second expert (v2 top-2): exclude the first, threshold against the best remaining
        # logit, with the relative factor still taken from the original |θ|; min_kept K keeps
        # the K best remaining experts here too (at most N - 1).
        first = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, index, True)
        rest = logits.detach().masked_fill(first, float("-inf"))
        drop2 = first
        if self.mask:
            best2 = rest.max(dim=-1, keepdim=True).values
            drop2 = first | relative_mask(rest, self.jitter_eps, best=best2, scale_logits=logits,
                                          min_kept=self.min_kept)
        index2, gate2, _ = self._stage(logits, drop2)
        return torch.cat([index, index2], -1), torch.cat([gate, gate2], -1), probs


class SparseMixerFirstOrder(SparseMixerRouter):
    """Ablation "SparseMixer-1st only": always forward Euler (gate π_D), backward ×2."""

    name = "sparsemixer-1st"
    rule = "euler"


class SparseMixerSecondOrder(SparseMixerRouter):
    """Ablation "SparseMixer-2nd only": the mid-point coin for every D, the argmax too."""

    name = "sparsemixer-2nd"
    rule = "midpoint-all"


class SparseMixerMonteCarlo(SparseMixerRouter):
    """Ablation: forward scale s ~ U(0, 1) off the argmax (Monte-Carlo integral of ∇0)."""

    name = "sparsemixer-inf"
    rule = "monte-carlo"


class MaskedSwitchRouter(SparseMixerRouter):
    """Ablation ladder, beyond the paper: SparseMixer's mask and sampling (D ~ π, Gumbel-max)
    with Switch's estimator: gate π_D and the gradient of plain autograd through π_D,
    ∂L/∂gate · π_D (e_D − π), i.e. ∇1 only (c = 1, no forward scale), and no omega. It differs
    from `switch` only by the mask and the sampling (switch: multiplicative noise, argmax, the
    unmasked softmax), and from `sparsemixer-1st --moe-no-omega` only by the factor 2."""

    name = "masked-switch"
    default_omega = False
    rule = "euler"
    grad_factor = 1.0


class MaskedSwitchArgmaxRouter(MaskedSwitchRouter):
    """Ablation ladder: `masked-switch` with D = argmax π in training too (no sampling, no noise)."""

    name = "masked-switch-argmax"
    sample = False


class SparseMixerV2Router(SparseMixerRouter):
    """GRIN-MoE's SparseMixer-v2 (beyond the paper): same mask and sampling; forward s·p_D with
    s = 1 at the argmax or with probability 1/4, else 1/3 (Heun's third-order rule); backward
    ∂L/∂gate · p_D (e_D − p), no factor 2. top_k = 1 or 2; no omega."""

    name = "sparsemixer-v2"
    default_omega = False
    max_top_k = 2
    rule = "heun3"
    grad_factor = 1.0
