r"""Switch-Transformer router, as the SparseMixer paper's baseline (Fedus et al. 2021), and two
dense-gradient estimators built on its routing (beyond the paper).

Switch's router gradient is ∇1 at the chosen expert only: ⟨∂L/∂y, f_D(x)⟩ ∂p_D/∂θ. The
dense-gradient routers keep Switch's forward exactly (same noise, argmax, gate p_D, output
p_D · f_D(x)) and add, in the backward only, the terms of the experts the token did not use:

    ∂L/∂θ = Σ_j ⟨∂L/∂y, v_j⟩ ∂p_j/∂θ,   v_D = f_D(x),  v_j (j ≠ D) a stand-in for f_j(x)

i.e. the gradient of the dense mixture Σ_j p_j v_j linearized at the sparse output (the Top-K
treated as the identity in the backward, a straight-through estimator). The MoE layer adds
Σ_{j≠D} (p_j − sg p_j) · sg v_j to its output (sg: stop-gradient), computed as exactly 0 in the
forward whatever v holds (not as 0 · v, which an inf in v would turn into NaN).

  * densemixer: v_j = f_j(x), every expert run on every token in the forward, without
    gradient to its parameters (DenseMixer, Yao et al. 2025, github.com/yaof20/DenseMixer): N
    times the experts' forward cost, the expensive reference.
  * default-moe: v_j = Ê_j, an exponential moving average of expert j's mean output over the
    tokens routed to it (Default MoE, Panda et al. 2025, arXiv 2504.12463): no extra expert
    cost.
"""
import torch

from .base import Router


class SwitchRouter(Router):
    """Training: θ̃ = θ ⊙ u, u ~ U(1 − r, 1 + r) per logit; p = softmax(θ̃); D = argmax p;
    gate = p_D with plain autograd (only ∇1 of the expected gradient). Eval: no noise."""

    name = "switch"

    def select(self, logits):
        if self.training and self.jitter_eps > 0:
            r = self.jitter_eps
            noise = torch.empty_like(logits).uniform_(1.0 - r, 1.0 + r)
            logits = logits * noise
        probs = logits.softmax(dim=-1)
        index = probs.detach().argmax(dim=-1, keepdim=True)
        return index, probs.gather(-1, index), probs


class DenseMixerRouter(SwitchRouter):
    """Switch's routing; the router's gradient also gets ⟨∂L/∂y, f_j(x)⟩ ∂p_j/∂θ of every expert
    j ≠ D, from all experts run on every token (module doc). This is the rule of DenseMixer's
    released code (sparse output detached + dense mixture minus its detached value); its blog's
    formula weighs the terms by (p_j + TopK_j) instead: not implemented."""

    name = "densemixer"
    stand_in = "experts"


class DefaultMoERouter(SwitchRouter):
    """Switch's routing; the router's gradient also gets ⟨∂L/∂y, Ê_j⟩ ∂p_j/∂θ of every expert
    j ≠ D, Ê_j (buffer `defaults`, (N, d)) the EMA of expert j's mean output (module doc):

        Ê_j ← β Ê_j + (1 − β) · mean_{t : D_t = j} f_j(x_t)     (experts with a token; β = 0.9)

    updated in every training forward before its use, from the local batch (under data
    parallelism each rank keeps its own; the checkpoint holds rank 0's). Ê starts at 0.
    Only a finite mean enters (an expert whose routed outputs overflowed, as under fp16 before
    fairseq skips the step, keeps its Ê), and an Ê_j that is not finite (set by hand, or from a
    checkpoint written before this rule) restarts from the next finite mean. Ê stays float32
    (float64 in a float64 model) whatever the model's dtype: `.half()` / `.to(torch.bfloat16)`,
    what fairseq's --fp16 / --bf16 do to the model, move it but do not cast it (in bf16,
    0.9 Ê + 0.1 m rounds back to Ê whenever |m − Ê| < ~4% of Ê: the EMA would stall), and the
    checkpoint holds it in float32.
    The default outputs enter the gradient only, not the forward value: the reading of the
    paper taken here ("a dense gradient update while continuing to sparsely activate"); its
    code was not available to check, and β is our choice."""

    name = "default-moe"
    stand_in = "ema"
    beta = 0.9

    def __init__(self, embed_dim, num_experts, jitter_eps=0.1, top_k=1, bias=False):
        super().__init__(embed_dim, num_experts, jitter_eps, top_k, bias)
        self.register_buffer("defaults", torch.zeros(num_experts, embed_dim, dtype=torch.float32))

    def _apply(self, fn, *args, **kwargs):
        """Device moves apply to `defaults`, casts below float32 do not (class doc)."""
        kept = self.defaults
        super()._apply(fn, *args, **kwargs)
        if torch.finfo(self.defaults.dtype).bits < 32:
            self.defaults = kept.to(device=self.defaults.device, dtype=torch.float32)
        return self

    @torch.no_grad()
    def update_defaults(self, sums: torch.Tensor, counts: torch.Tensor):
        """sums (N, d): Σ f_j(x_t) over the tokens routed to j; counts (N,): their number."""
        mean = sums.float() / counts.clamp_min(1).unsqueeze(-1).to(torch.float32)
        old = self.defaults
        new = torch.where(torch.isfinite(old).all(-1, keepdim=True),
                          self.beta * old + (1.0 - self.beta) * mean, mean)
        take = (counts > 0) & torch.isfinite(mean).all(-1)
        self.defaults.copy_(torch.where(take.unsqueeze(-1), new, old))
