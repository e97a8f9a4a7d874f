"""Routers against their defining formulas (paper §3-§4; GRIN-MoE for v2)."""
import math

import pytest
import torch

from fairseq_sparsemixer.routers import ROUTERS, build_router, relative_mask

V1 = ["sparsemixer", "sparsemixer-1st", "sparsemixer-2nd", "sparsemixer-inf"]


def ref_drop(logits, r):
    """The paper's mask, written as in the paper (with the division), for hand-checked inputs."""
    best = logits.max(-1, keepdim=True).values
    factor = torch.maximum(logits.abs(), best)
    with torch.no_grad():
        ratio = (best - logits) / factor
    return torch.nan_to_num(ratio, nan=0.0) > 2 * r


LADDER = ["masked-switch", "masked-switch-argmax"]  # Switch's estimator (c = 1, gate π_D) on the mask


def scale_dist(name, is_argmax):
    """[(s, P(s))] of the forward scale for each router (the issue's definition)."""
    if name in ["sparsemixer-1st"] + LADDER or (name in ("sparsemixer", "sparsemixer-inf") and is_argmax):
        return [(1.0, 1.0)]
    if name in ("sparsemixer", "sparsemixer-2nd"):
        return [(1.0, 0.5), (0.5, 0.5)]
    if name == "sparsemixer-v2":
        return [(1.0, 1.0)] if is_argmax else [(1.0, 0.25), (1.0 / 3.0, 0.75)]
    if name == "sparsemixer-inf":  # s ~ U(0,1): Gauss-Legendre nodes (exact for our quadratic φ')
        return [(0.5 - 0.5 / math.sqrt(3), 0.5), (0.5 + 0.5 / math.sqrt(3), 0.5)]
    raise KeyError(name)


def dphi(g, a, b):  # φ(g) = ½ (g·a − b)², φ'(g) = a (g·a − b)
    return a * (g * a - b)


def expected_grad(name, theta, a, b, r=0.1, mask=True, min_kept=1):
    """E over D ~ π (D = argmax for masked-switch-argmax) and the scale of the router's gradient
    wrt θ, by enumeration: Σ_D P(D) Σ_s P(s|D) c φ_D'(s π_D) π_D (e_D − π)."""
    c = 1.0 if name in ["sparsemixer-v2"] + LADDER else 2.0
    drop = ref_drop(theta, r) if mask else torch.zeros_like(theta, dtype=torch.bool)
    for j in theta.argsort(descending=True)[:min_kept]:  # the K best are always kept
        drop[j] = False
    pi = theta.masked_fill(drop, float("-inf")).softmax(-1).double()
    n = theta.numel()
    g = torch.zeros(n, dtype=torch.float64)
    top = int(theta.argmax())
    for d in range(n):
        if pi[d] == 0:
            continue
        e = torch.zeros(n, dtype=torch.float64)
        e[d] = 1
        p_d = float(d == top) if name == "masked-switch-argmax" else pi[d]
        for s, ps in scale_dist(name, d == top):
            g += p_d * ps * c * dphi(s * pi[d], a[d], b) * pi[d] * (e - pi)
    return g


def mc_grad(router, theta, a, b, tokens=200_000):
    """Per-token router gradients of Σ_t φ_{D_t}(gate_t) for `tokens` copies of θ."""
    logits = theta.float().expand(tokens, -1).clone().requires_grad_(True)
    out = router.route(logits)
    d = out.expert_index[:, 0]
    loss = 0.5 * (out.gate[:, 0] * a[d] - b) ** 2
    loss.sum().backward()
    return logits.grad.double(), out


@pytest.mark.parametrize("name", V1 + ["sparsemixer-v2"] + LADDER)
def test_expected_gradient_matches_formula(name):
    torch.manual_seed(0)
    router = build_router(name, embed_dim=4, num_experts=5, jitter_eps=0.1).train()
    theta = torch.tensor([1.0, 0.93, 0.85, 0.2, -0.5])  # experts 0-2 kept, 3-4 masked
    a = torch.tensor([1.5, -1.0, 2.0, 0.7, 0.3])
    b = 0.4
    grads, _ = mc_grad(router, theta, a, b)
    want = expected_grad(name, theta, a, b)
    mean, se = grads.mean(0), grads.std(0) / math.sqrt(grads.size(0))
    assert torch.all((mean - want).abs() <= 5 * se + 1e-7), (mean, want, se)
    assert torch.all(grads[:, 3:] == 0)  # masked experts: exactly zero gradient
    assert want.abs().max() > 0.01  # the check is not vacuous


def test_v2_top2_expected_gradient():
    torch.manual_seed(1)
    router = build_router("sparsemixer-v2", embed_dim=4, num_experts=4, top_k=2).train()
    theta = torch.tensor([1.0, 0.95, 0.9, -2.0])
    a1, a2, b = torch.tensor([1.0, -2.0, 0.5, 1.0]), torch.tensor([0.5, 1.5, -1.0, 2.0]), 0.3
    logits = theta.expand(200_000, -1).clone().requires_grad_(True)
    out = router.route(logits)
    d1, d2 = out.expert_index[:, 0], out.expert_index[:, 1]
    assert torch.all(d1 != d2)
    loss = 0.5 * (out.gate[:, 0] * a1[d1] - b) ** 2 + 0.5 * (out.gate[:, 1] * a2[d2] - b) ** 2
    loss.sum().backward()
    grads = logits.grad.double()
    # exact: first stage + Σ_{D1} π_{D1} (second stage on θ with D1 removed)
    want = expected_grad("sparsemixer-v2", theta, a1, b)
    pi = theta.masked_fill(ref_drop(theta, 0.1), float("-inf")).softmax(-1).double()
    for d in range(4):
        if pi[d] == 0:
            continue
        rest = theta.clone()
        rest[d] = float("-inf")
        best2 = rest.max()
        drop2 = ((best2 - theta) / torch.maximum(theta.abs(), best2) > 0.2) | (torch.arange(4) == d)
        pi2 = theta.masked_fill(drop2, float("-inf")).softmax(-1).double()
        top2 = int(rest.argmax())
        for d2 in range(4):
            if pi2[d2] == 0:
                continue
            e = torch.zeros(4, dtype=torch.float64)
            e[d2] = 1
            for s, ps in scale_dist("sparsemixer-v2", d2 == top2):
                want += pi[d] * pi2[d2] * ps * dphi(s * pi2[d2], a2[d2], b) * pi2[d2] * (e - pi2)
    mean, se = grads.mean(0), grads.std(0) / math.sqrt(grads.size(0))
    assert torch.all((mean - want).abs() <= 5 * se + 1e-7), (mean, want, se)
    assert torch.all(grads[:, 3] == 0)


@pytest.mark.parametrize("name", LADDER)
def test_masked_switch_is_plain_autograd_of_the_masked_softmax(name):
    """Per token: gate = π_D of the masked softmax, its gradient plain autograd; D sampled from
    π (masked-switch) or its argmax (masked-switch-argmax); no omega by default."""
    from fairseq_sparsemixer.modules import MoEFeedForward

    torch.manual_seed(0)
    router = build_router(name, embed_dim=4, num_experts=5).train()
    theta = torch.randn(4000, 5) * 0.3 + 1.0
    logits = theta.clone().requires_grad_(True)
    out = router.route(logits)
    w = torch.randn(4000, 1)
    (out.gate * w).sum().backward()
    ref = theta.clone().requires_grad_(True)
    pi = ref.masked_fill(relative_mask(theta, 0.1), float("-inf")).softmax(-1)
    gate = pi.gather(-1, out.expert_index)
    (gate * w).sum().backward()
    torch.testing.assert_close(out.gate, gate)
    torch.testing.assert_close(logits.grad, ref.grad)
    is_argmax = out.expert_index[:, 0] == pi.argmax(-1)
    if name == "masked-switch-argmax":
        assert torch.all(is_argmax)
    else:
        assert 0.05 < 1 - is_argmax.float().mean() < 0.6  # it samples
    assert MoEFeedForward(4, 8, 5, router=name).omega is None


def test_switch_gradient_is_plain_autograd_of_argmax_prob():
    router = build_router("switch", embed_dim=4, num_experts=3, jitter_eps=0.0).train()
    theta = torch.tensor([[0.3, 1.2, -0.4]], requires_grad=True)
    out = router.route(theta)
    assert out.expert_index.item() == 1
    (out.gate * 3.0).sum().backward()
    p = theta.detach().softmax(-1)[0]
    want = 3.0 * p[1] * (torch.eye(3)[1] - p)
    torch.testing.assert_close(theta.grad[0], want)


def test_switch_jitter_is_multiplicative_uniform():
    torch.manual_seed(0)
    router = build_router("switch", embed_dim=4, num_experts=2, jitter_eps=0.1).train()
    # θ = (1, 0.95): expert 1 wins iff 0.95 u1 > u0, u ~ U(0.9, 1.1)
    out = router.route(torch.tensor([1.0, 0.95]).expand(100_000, -1))
    freq = (out.expert_index == 1).float().mean().item()
    # exact P(0.95 u1 > u0) for independent U(0.9, 1.1), by fine numerical integration
    u1 = torch.linspace(0.9, 1.1, 200_001, dtype=torch.float64)
    want = ((0.95 * u1 - 0.9).clamp(0, 0.2) / 0.2).mean().item()
    assert abs(freq - want) < 5 * math.sqrt(want * (1 - want) / 100_000)


def test_sparsemixer_beats_switch_against_exact_gradient():
    """On random problems, the expected SparseMixer gradient is closer (cosine) to the exact
    ∇_θ E_{D~π}[φ_D(π_D)] than Switch's gradient is (no mask, so both target the same π)."""
    g = torch.Generator().manual_seed(0)
    cos_sm, cos_sw = [], []
    for _ in range(200):
        n = int(torch.randint(2, 7, (1,), generator=g))
        theta = torch.randn(n, generator=g, dtype=torch.float64)
        a = torch.randn(n, generator=g, dtype=torch.float64) * 2
        b = float(torch.randn(1, generator=g))
        t = theta.clone().requires_grad_(True)
        pi = t.softmax(-1)
        (pi * 0.5 * (pi * a - b) ** 2).sum().backward()
        exact = t.grad
        sm = expected_grad("sparsemixer", theta, a, b, mask=False)
        p = theta.softmax(-1)
        top = int(theta.argmax())
        sw = dphi(p[top], a[top], b) * p[top] * (torch.eye(n, dtype=torch.float64)[top] - p)
        cos = torch.nn.functional.cosine_similarity
        cos_sm.append(cos(sm, exact, dim=0).item())
        cos_sw.append(cos(sw, exact, dim=0).item())
    mean_sm, mean_sw = sum(cos_sm) / 200, sum(cos_sw) / 200
    assert mean_sm > mean_sw + 0.1, (mean_sm, mean_sw)


@pytest.mark.parametrize("logits,r,dropped", [
    ([2.0, 1.7, 1.5, -1.0], 0.1, [False, False, True, True]),
    ([-1.0, -1.1, -1.5], 0.1, [False, False, True]),  # all negative: factor is |θ_j|
    ([1.0, 1.0, 0.0], 0.1, [False, False, True]),  # ties kept
    ([0.0, 0.0, 0.0], 0.1, [False, False, False]),  # 0/0 never drops
    ([3.0], 0.1, [False]),  # one expert
    ([1e4, -1e4, 9e3], 0.1, [False, True, False]),
    ([1.0, 0.9, 0.5], 0.0, [False, True, True]),  # r = 0: only the best
])
def test_mask_rule_hand_worked(logits, r, dropped):
    t = torch.tensor([logits])
    assert relative_mask(t, r)[0].tolist() == dropped
    assert ref_drop(t, r)[0].tolist() == dropped
    assert relative_mask(t.half(), r)[0].tolist() == dropped


@pytest.mark.parametrize("name", list(ROUTERS))
@pytest.mark.parametrize("logits", [[1e4, -1e4, 9e3, 0.0], [-3.0, -3.0, -3.0, -50.0],
                                    [0.0, 0.0, 0.0, 0.0], [65000.0, -65000.0, 1.0, 2.0]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_no_nan_and_float32(name, logits, dtype):
    torch.manual_seed(0)
    router = build_router(name, embed_dim=4, num_experts=4).train()
    x = torch.tensor(logits, dtype=dtype).expand(1000, -1).clone().requires_grad_(True)
    out = router.route(x)
    assert out.gate.dtype == torch.float32 and out.probs.dtype == torch.float32
    (out.gate.sum() + out.balance_loss + out.z_loss).backward()
    for t in (out.gate, out.probs, out.balance_loss, out.z_loss, x.grad):
        assert torch.isfinite(t).all()


def test_single_expert():
    for name in ROUTERS:
        router = build_router(name, embed_dim=4, num_experts=1).train()
        out = router.route(torch.randn(10, 1))
        assert torch.all(out.expert_index == 0) and torch.allclose(out.probs, torch.ones(10, 1))


@pytest.mark.parametrize("name", list(ROUTERS))
def test_route_never_modifies_logits(name):
    router = build_router(name, embed_dim=4, num_experts=4).train()
    logits = torch.tensor([[3.0, -2.0, 2.9, 0.1]] * 8)
    before = logits.clone()
    router.route(logits)
    assert torch.equal(logits, before)


@pytest.mark.parametrize("name", list(ROUTERS))
def test_eval_is_argmax_and_prob(name):
    router = build_router(name, embed_dim=4, num_experts=4).eval()
    logits = torch.randn(50, 4)
    a, b = router.route(logits), router.route(logits)
    assert torch.equal(a.expert_index, b.expert_index) and torch.equal(a.gate, b.gate)
    assert torch.equal(a.expert_index[:, 0], logits.argmax(-1))
    torch.testing.assert_close(a.gate[:, :1], a.probs.gather(-1, a.expert_index[:, :1]))


@pytest.mark.parametrize("name", V1 + ["sparsemixer-v2"])
def test_sampling_frequencies_match_pi(name):
    torch.manual_seed(0)
    router = build_router(name, embed_dim=4, num_experts=4, jitter_eps=0.5).train()
    theta = torch.tensor([1.0, 0.8, 0.6, 0.5])
    out = router.route(theta.expand(100_000, -1))
    pi = out.probs[0]
    counts = torch.bincount(out.expert_index[:, 0], minlength=4).double()
    expected = pi.double() * 100_000
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 16.27  # chi-square, 3 dof, p = 0.001


def test_forward_scale_frequencies():
    torch.manual_seed(0)
    theta = torch.tensor([1.0, 0.95]).expand(200_000, -1)
    for name, off_argmax in [("sparsemixer", {1.0: 0.5, 0.5: 0.5}),
                             ("sparsemixer-v2", {1.0: 0.25, 1 / 3: 0.75})]:
        out = build_router(name, embed_dim=4, num_experts=2).train().route(theta)
        off = out.expert_index[:, 0] == 1
        s = out.gate[off, 0] / out.probs[off, 1]
        for value, p in off_argmax.items():
            frac = ((s - value).abs() < 1e-5).float().mean().item()
            assert abs(frac - p) < 0.01, (name, value, frac)
        on = out.gate[~off, 0] / out.probs[~off, 0]
        torch.testing.assert_close(on, torch.ones_like(on))


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="sparsemixer-v2"):
        build_router("nope", embed_dim=4, num_experts=2)


@pytest.mark.parametrize("kwargs", [dict(num_experts=0), dict(jitter_eps=-0.1),
                                    dict(top_k=2), dict(top_k=3, name="sparsemixer-v2"),
                                    dict(mask=False, name="switch")])
def test_bad_options(kwargs):
    kwargs = {"name": "sparsemixer", "embed_dim": 4, "num_experts": 2, **kwargs}
    with pytest.raises(ValueError):
        build_router(**kwargs)


def test_no_mask_option_uses_full_softmax():
    router = build_router("sparsemixer", embed_dim=4, num_experts=3, mask=False).eval()
    logits = torch.tensor([[5.0, 0.0, -5.0]])
    torch.testing.assert_close(router.route(logits).probs, logits.softmax(-1))


def test_balance_loss_and_pads():
    router = build_router("sparsemixer", embed_dim=4, num_experts=3).eval()
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0], [2.0, 1.0, 0.0]])
    pad = torch.tensor([False, False, True, False])
    out = router.route(logits, pad)
    ref = router.route(logits[~pad])
    torch.testing.assert_close(out.balance_loss, ref.balance_loss)
    assert out.expert_counts.tolist() == [2, 1, 0]
    p = ref.probs
    want = 3 * (torch.tensor([2 / 3, 1 / 3, 0.0]) * p.mean(0)).sum()
    torch.testing.assert_close(out.balance_loss, want)
    torch.testing.assert_close(out.z_loss, (torch.logsumexp(logits[~pad], -1) ** 2).mean())


def test_one_kept_frac_counts_tokens_without_router_gradient():
    # rows: two kept (1.7 is within 20% of 2), one kept (every other logit is > 20% below 1),
    # all kept (0/0 never drops), and a pad that must not count
    logits = torch.tensor([[2.0, 1.7, 1.5, -1.0], [1.0, -1.0, 0.0, 0.5], [0.0, 0.0, 0.0, 0.0],
                           [5.0, -5.0, -5.0, -5.0]], requires_grad=True)
    pad = torch.tensor([False, False, False, True])
    out = build_router("sparsemixer", embed_dim=4, num_experts=4).eval().route(logits, pad)
    torch.testing.assert_close(out.one_kept_frac, torch.tensor(1 / 3))
    # the claim behind the statistic: a one-kept token's logits get no gradient from the gate
    # nor from the balance loss
    (out.gate.sum() + out.balance_loss).backward()
    assert logits.grad[1].abs().max() == 0 and logits.grad[0].abs().max() > 0
    sw = build_router("switch", embed_dim=4, num_experts=4).eval().route(logits.detach(), pad)
    assert sw.one_kept_frac.item() == 0.0  # full softmax: never one-hot at these logits


@pytest.mark.parametrize("name", list(ROUTERS))
def test_router_bias_is_the_authors_linear(name):
    """bias=True: θ = W x + b with nn.Linear(d, N)'s own initialization (the authors' router),
    computed in float32 whatever the input dtype; the default router has no bias."""
    assert build_router(name, embed_dim=6, num_experts=3).proj.bias is None
    torch.manual_seed(0)
    router = build_router(name, embed_dim=6, num_experts=3, bias=True).train()
    torch.manual_seed(0)
    ref = torch.nn.Linear(6, 3)
    torch.testing.assert_close(router.proj.weight, ref.weight)
    torch.testing.assert_close(router.proj.bias, ref.bias)
    x = torch.randn(20, 6)
    torch.testing.assert_close(router(x).logits, ref(x))
    out = router(x.to(torch.bfloat16))
    assert out.logits.dtype == out.gate.dtype == torch.float32
    torch.testing.assert_close(out.logits, ref(x.to(torch.bfloat16).float()))
    (out.gate.sum() + out.balance_loss).backward()
    assert router.proj.bias.grad is not None and torch.isfinite(router.proj.bias.grad).all()


def test_router_bias_changes_what_the_mask_keeps():
    """The relative mask (θ* − θ_j) > 2r·max(|θ_j|, θ*) is not shift-invariant: a bias that
    moves every logit by the same amount changes how many experts are kept."""
    router = build_router("sparsemixer", embed_dim=2, num_experts=3, jitter_eps=0.1, bias=True).eval()
    with torch.no_grad():
        router.proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.9, 0.0], [0.0, 0.0]]))
        router.proj.bias.zero_()
        x = torch.tensor([[1.0, 0.0]])  # θ = (1, 0.9, 0): 0.1 <= 0.2·1 keeps expert 1; expert 2 dropped
        assert int((router(x).probs > 0).sum()) == 2
        router.proj.bias.fill_(10.0)  # θ = (11, 10.9, 10): all within 2r·11 = 2.2
        assert int((router(x).probs > 0).sum()) == 3


def test_min_kept_keeps_the_k_best_hand_worked():
    # θ = (1, −1, 0, 0.5): the paper's rule keeps expert 0 alone; K = 2 adds the runner-up 3
    logits = torch.tensor([[1.0, -1.0, 0.0, 0.5]])
    assert relative_mask(logits, 0.1).tolist() == [[False, True, True, True]]
    assert relative_mask(logits, 0.1, min_kept=2).tolist() == [[False, True, True, False]]
    assert relative_mask(logits, 0.1, min_kept=4).tolist() == [[False] * 4]
    router = build_router("sparsemixer", embed_dim=4, num_experts=4, min_kept=2).eval()
    out = router.route(logits)
    want = torch.tensor([[1.0, float("-inf"), float("-inf"), 0.5]]).softmax(-1)
    torch.testing.assert_close(out.probs, want)
    assert out.one_kept_frac.item() == 0.0
    assert build_router("sparsemixer", embed_dim=4, num_experts=4).eval().route(logits).one_kept_frac.item() == 1.0


@pytest.mark.parametrize("name", ["sparsemixer", "sparsemixer-1st"])
def test_min_kept_expected_gradient_matches_formula(name):
    """θ whose mask keeps one expert: with K = 2 the router gets the estimator's gradient on
    the two best experts (it got none), as the formula with the K-best mask says."""
    torch.manual_seed(0)
    theta = torch.tensor([1.0, 0.5, 0.3, -0.5, 0.0])
    a = torch.tensor([1.5, -1.0, 2.0, 0.7, 0.3])
    assert expected_grad(name, theta, a, 0.4).abs().max() == 0  # the paper's mask: no gradient
    router = build_router(name, embed_dim=4, num_experts=5, jitter_eps=0.1, min_kept=2).train()
    grads, _ = mc_grad(router, theta, a, 0.4)
    want = expected_grad(name, theta, a, 0.4, min_kept=2)
    mean, se = grads.mean(0), grads.std(0) / math.sqrt(grads.size(0))
    assert torch.all((mean - want).abs() <= 5 * se + 1e-7), (mean, want, se)
    assert torch.all(grads[:, 2:] == 0) and want.abs().max() > 0.01


def test_balance_probs_full_is_the_unmasked_softmax():
    """balance = N Σ_e f_e mean_t softmax(θ)_e: a token whose mask keeps one expert now gets
    the balance loss's gradient; routing and the other statistics are unchanged."""
    logits = torch.tensor([[1.0, -1.0, 0.0, 0.5], [2.0, 1.7, 1.5, -1.0]], requires_grad=True)
    masked = build_router("sparsemixer", embed_dim=4, num_experts=4).eval().route(logits)
    full = build_router("sparsemixer", embed_dim=4, num_experts=4, balance_probs="full").eval().route(logits)
    assert torch.equal(full.probs, masked.probs) and torch.equal(full.expert_index, masked.expert_index)
    f = torch.tensor([1.0, 0.0, 0.0, 0.0])  # both tokens go to expert 0
    torch.testing.assert_close(full.balance_loss, 4 * (f * logits.softmax(-1).mean(0)).sum())
    (g_masked,) = torch.autograd.grad(masked.balance_loss, logits)
    (g_full,) = torch.autograd.grad(full.balance_loss, logits)
    assert g_masked[0].abs().max() == 0 and g_full[0].abs().max() > 0


def test_min_kept_applies_to_the_second_stage_of_v2_top2():
    """θ = (1, 0.9, −1, 0), r = 0.1: the first stage keeps {0, 1}; the second, after expert 0,
    thresholds against 0.9 and keeps {1} alone (gate 1, no router gradient); with K = 2 it keeps
    the two best remaining experts {1, 3}: gate σ(0.9) and a gradient on θ_3."""
    logits = torch.tensor([[1.0, 0.9, -1.0, 0.0]])
    for k, gate2 in [(1, 1.0), (2, torch.sigmoid(torch.tensor(0.9)).item())]:
        router = build_router("sparsemixer-v2", embed_dim=4, num_experts=4, top_k=2, min_kept=k)
        out = router.eval().route(logits)
        assert out.expert_index.tolist() == [[0, 1]]
        assert out.gate[0, 1].item() == pytest.approx(gate2)
        theta = logits.clone().requires_grad_(True)
        torch.manual_seed(0)
        router.train().route(theta).gate[:, 1].sum().backward()
        assert (theta.grad[0, 3] != 0) == (k == 2) and theta.grad[0, 2] == 0


@pytest.mark.parametrize("kwargs", [dict(min_kept=0), dict(min_kept=5), dict(balance_probs="dense"),
                                    dict(mask=False, min_kept=2), dict(mask=False, balance_probs="full")])
def test_bad_remedy_options(kwargs):
    with pytest.raises(ValueError):
        build_router("sparsemixer", embed_dim=4, num_experts=4, **kwargs)


@pytest.mark.parametrize("name,kw", [("sparsemixer", {}), ("switch", {}), ("sparsemixer", {"balance_probs": "full"}),
                                     ("sparsemixer-v2", {"top_k": 2}), ("sparsemixer", {"mask": False})])
@pytest.mark.parametrize("pads", ["none", "some", "all"])
@pytest.mark.parametrize("losses", [(0.01, 0.001), (1.0, None), (None, 1.0)])
def test_router_stats_equal_the_reference_bit_for_bit(name, kw, pads, losses):
    """`router_stats` (an autograd.Function with a written-out backward, fewer ops) against the
    plain-PyTorch definition `router_stats_reference`: every statistic and the gradient that the
    balance and z losses send to the logits are equal bit for bit (so training numbers do not
    move), with pads, a batch of pads only (every statistic 0), and either loss alone. The logged
    entropy (−Σ π log π by torch.special.entr, not by the log of π clamped at 1e-30) agrees to
    rounding."""
    from fairseq_sparsemixer.routers.stats import router_stats, router_stats_reference

    torch.manual_seed(0)
    router = build_router(name, embed_dim=8, num_experts=5, **kw).train()
    x = torch.randn(60, 8)
    pad = {"none": None, "some": torch.rand(60) < 0.3, "all": torch.ones(60, dtype=torch.bool)}[pads]
    got = []
    for fn in (router_stats_reference, router_stats):
        xi = x.clone().requires_grad_()
        torch.manual_seed(1)
        r = router(xi, pad)
        s = fn(r.logits, r.probs, r.expert_index[:, 0], pad, r.balance_probs)
        wb, wz = losses
        loss = (0 if wb is None else wb * s["balance_loss"]) + (0 if wz is None else wz * s["z_loss"])
        loss.backward()
        got.append([s[k].detach() for k in ("balance_loss", "z_loss", "expert_counts", "entropy",
                                            "non_argmax_frac", "one_kept_frac")] + [xi.grad, router.proj.weight.grad])
        router.zero_grad(set_to_none=True)
    for i, (a, b) in enumerate(zip(*got)):
        if i == 3:
            torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
        else:
            assert torch.equal(a, b), (i, a, b)
    if pads == "all":
        assert all(t.abs().sum() == 0 for t in got[1][:6])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_router_stats_counts_are_exact_in_every_dtype(dtype):
    """The counts come from the statistics' matmul where its sums of 0/1 are exact (float32, up to
    2^24 tokens), from a scatter otherwise: 16-bit sums round past 256 (bf16) or 2048 (fp16)
    tokens (4998 counted as 4992 in bf16). And an in-place edit of a returned statistic does not
    reach the balance loss's backward (its f is not a view of the returned means)."""
    from fairseq_sparsemixer.routers.stats import router_stats, router_stats_reference

    n, t = 2, 5001
    first = torch.zeros(t, dtype=torch.long)
    first[:3] = 1
    logits = torch.randn(t, n).to(dtype).requires_grad_()
    probs = logits.softmax(-1)
    for fn in (router_stats_reference, router_stats):
        s = fn(logits, probs, first)
        assert s["expert_counts"].tolist() == [t - 3, 3], (fn.__name__, s["expert_counts"])
    s["entropy"].mul_(2.0)
    s["balance_loss"].backward()  # would fail: "modified by an inplace operation"
    assert logits.grad is not None


def test_forward_scales_are_exact():
    """The coin's scales are exactly 1, 1/2 and float32(1/3) (s = c^b, one op), float32, and 1
    at the argmax where the rule says so: the gate s·π_D carries no rounding of s."""
    from fairseq_sparsemixer.routers.sparsemixer import _scale

    torch.manual_seed(0)
    non_argmax = (torch.arange(4000) % 2 == 0).unsqueeze(1)
    third = (torch.ones(()) / 3.0).item()
    for rule, values, one_at_argmax in [("euler", {1.0}, True), ("midpoint", {1.0, 0.5}, True),
                                        ("midpoint-all", {1.0, 0.5}, False),
                                        ("heun3", {1.0, third}, True)]:
        s = _scale(rule, non_argmax)
        assert s.dtype == torch.float32 and s.shape == non_argmax.shape, rule
        assert set(s.unique().tolist()) == values, rule
        if one_at_argmax:
            assert (s[~non_argmax] == 1).all(), rule
    s = _scale("monte-carlo", non_argmax)
    assert (s[~non_argmax] == 1).all() and (s[non_argmax] < 1).all()
