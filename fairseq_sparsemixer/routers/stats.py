"""The router statistics and the two auxiliary losses, over the non-pad tokens (keep_t = 1):

    balance_loss     N Σ_e f_e P̄_e     f_e = Σ_t keep_t 1[D_t = e] / Σ keep,  P̄_e = Σ_t keep_t P_te / Σ keep
    z_loss           Σ_t keep_t lse(θ_t)² / Σ keep
    expert_counts    Σ_t keep_t 1[D_t = e]                                   (int64, N)
    entropy          Σ_t keep_t H(π_t) / Σ keep                              (nats; logged only)
    non_argmax_frac  Σ_t keep_t 1[D_t ≠ argmax θ_t] / Σ keep                 (logged only)
    one_kept_frac    Σ_t keep_t 1[π_t keeps one expert] / Σ keep             (logged only)

The means come from one product keep @ V, V = [P, lse(θ)², ±Σ_j π_j log π_j, 1[D ≠ argmax θ],
1[one kept]] (N + 4 columns; `router_stats` appends the N one-hot columns 1[D = e], whose sums
keep @ V are the counts, exact: sums of 0/1 in float32 up to 2^24 tokens; with 16-bit
probabilities or more tokens it scatters, as the reference does). Σ keep = 0 (only pads) gives 0
everywhere.

`router_stats_reference` writes this in plain PyTorch and lets autograd differentiate it.
`router_stats` (the one the routers use) is the same forward in fewer ops, and an
`autograd.Function` whose backward is written out:

    ∂/∂P_te       = keep_t · N g_b f_e / Σ keep
    ∂/∂θ_tj       = keep_t · (g_z / Σ keep) · 2 lse(θ_t) · softmax(θ_t)_j

in the order of floating-point operations that autograd applies to the reference, so that the
two agree bit for bit (tests/test_routers.py): training numbers do not move. The logged
entropy agrees to rounding (−Σ π log π is computed by `torch.special.entr`, not by the log of π
clamped at 1e-30). Issue 21: on 512 tokens with pads, all six read, the reference dispatches 27
aten ops forward and 13 backward; this one 21 and 11 (23 before the counts came from the sums).
"""
import torch
from torch.autograd.function import once_differentiable


def _means(keep, columns, denom):
    return (keep @ columns) / denom


def _keep(probs, padding_mask):
    """keep_t (T,): 1 at non-pad tokens, in the dtype of the probabilities: 0^pad in one op
    (0^0 = 1, 0^1 = 0 exactly)."""
    if padding_mask is None:
        return probs.new_ones(probs.size(0))
    return torch.pow(0.0, padding_mask.reshape(-1)).to(probs.dtype)


def _counts_frac(first, keep, n, denom):
    """(counts (N,) int64, f = counts / Σ keep): the non-pad tokens whose first choice is e."""
    counts = torch.zeros(n, dtype=torch.long, device=keep.device).scatter_add_(0, first, keep.long())
    return counts, counts.to(keep.dtype) / denom


def router_stats_reference(logits, probs, first, padding_mask=None, balance_probs=None) -> dict:
    """The definition, in plain PyTorch (autograd differentiates the balance and z losses)."""
    n, p, lg = probs.size(-1), probs, logits
    keep = _keep(p, padding_mask)
    denom = keep.sum().clamp_min(1.0)
    pb = p if balance_probs is None else balance_probs
    with torch.no_grad():
        logged = torch.stack([(p * p.clamp_min(1e-30).log()).sum(-1), first != lg.argmax(dim=-1),
                              (p > 0).sum(-1) == 1], -1)
    columns = torch.cat([pb, torch.logsumexp(lg, dim=-1).square().unsqueeze(-1), logged], -1)
    means = _means(keep, columns, denom)
    counts, frac = _counts_frac(first, keep, n, denom)
    return dict(balance_loss=n * (frac @ means[:n]), z_loss=means[n], expert_counts=counts,
                entropy=-means[n + 1].detach(), non_argmax_frac=means[n + 2].detach(),
                one_kept_frac=means[n + 3].detach())


class RouterStats(torch.autograd.Function):
    """(balance_loss, z_loss, counts, means of the logged columns) from (θ, P, π, D, keep)."""

    @staticmethod
    def forward(ctx, logits, pb, probs, first, keep):
        n = probs.size(-1)
        denom = keep.sum().clamp_min(1.0)
        lse = torch.logsumexp(logits, dim=-1)
        # the counts as sums of 0/1 in the matmul below, where they are exact: in float32 (what the
        # routers give) up to 2^24 tokens; 16-bit sums are not (past 256 tokens in bf16)
        exact = probs.dtype == torch.float64 or (probs.dtype == torch.float32 and probs.size(0) <= 2 ** 24)
        onehot = [first.unsqueeze(-1) == torch.arange(n, device=first.device)] if exact else []
        columns = torch.cat([pb, lse.square().unsqueeze(-1),
                             torch.special.entr(probs).sum(-1, keepdim=True),
                             (first != logits.argmax(dim=-1)).unsqueeze(-1),
                             (torch.count_nonzero(probs, dim=-1) == 1).unsqueeze(-1), *onehot], -1)
        sums = keep @ columns
        means = sums[:n + 4] / denom
        if exact:  # f_e = counts_e / Σ keep as in the reference, without a scatter; frac its own
            # tensor, not a view of the returned means (an in-place edit of one must not reach it)
            counts, frac = sums[n + 4:].long(), sums[n + 4:] / denom
        else:
            counts, frac = _counts_frac(first, keep, n, denom)
        ctx.save_for_backward(logits, lse, frac, keep, denom)
        ctx.mark_non_differentiable(counts)
        ctx.set_materialize_grads(False)  # an unused loss's gradient stays None: no zeros to build
        return n * (frac @ means[:n]), means[n], counts, means[n + 1:]

    @staticmethod
    @once_differentiable  # lse is saved from the forward: a second derivative would miss its term
    def backward(ctx, g_balance, g_z, _counts, _logged):
        logits, lse, frac, keep, denom = ctx.saved_tensors
        n = frac.numel()
        grad_logits = grad_pb = None
        # autograd on the reference: balance = n · (frac @ means[:n]) -> ∂means[:n] = frac · (g n);
        # means = (keep @ V) / denom -> ∂V_t = keep_t · ∂means / denom
        if ctx.needs_input_grad[1] and g_balance is not None:
            grad_pb = keep.unsqueeze(-1) * ((frac * (g_balance * n)) / denom)
        if ctx.needs_input_grad[0] and g_z is not None:
            # z = means[n] -> ∂lse²_t = keep_t g_z / denom -> ∂lse_t = · 2 lse_t -> ∂θ_t = · softmax(θ_t)
            grad_lse = (keep * (g_z / denom)) * (2 * lse)
            grad_logits = grad_lse.unsqueeze(-1) * (logits - lse.unsqueeze(-1)).exp()
        return grad_logits, grad_pb, None, None, None


def router_stats(logits, probs, first, padding_mask=None, balance_probs=None) -> dict:
    """`router_stats_reference` by `RouterStats`: the same values, the same gradients, fewer ops."""
    pb = probs if balance_probs is None else balance_probs
    balance, z, counts, logged = RouterStats.apply(logits, pb, probs.detach(), first, _keep(probs, padding_mask))
    logged = logged.detach()  # no gradient, as in the reference
    return dict(balance_loss=balance, z_loss=z, expert_counts=counts, entropy=logged[0],
                non_argmax_frac=logged[1], one_kept_frac=logged[2])
