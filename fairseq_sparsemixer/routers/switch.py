"""Switch-Transformer router, as the SparseMixer paper's baseline (Fedus et al. 2021)."""
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
