"""The dense-gradient routers (beyond the paper, routers/switch.py): densemixer and default-moe keep
Switch's forward and add Σ_{j≠D} ⟨∂L/∂y, v_j⟩ ∂p_j/∂θ to the router's gradient, v_j = f_j(x)
(densemixer) or the EMA Ê_j of expert j's mean routed output (default-moe). Each is checked
against that formula computed by hand, per token, from the experts called one by one."""
import pytest
import torch

from fairseq_sparsemixer.modules import MoEFeedForward

BETA = 0.9


def layers(router, **kw):
    """A switch layer and a `router` layer with the same weights, float64, r = 0 (no noise)."""
    torch.manual_seed(0)
    sw = MoEFeedForward(5, 12, 4, router="switch", jitter_eps=0.0, expert_impl="loop", **kw).double().train()
    m = MoEFeedForward(5, 12, 4, router=router, jitter_eps=0.0, expert_impl="loop", **kw).double().train()
    m.load_state_dict(sw.state_dict(), strict=False)  # default-moe has one more buffer (defaults)
    return sw, m


def data(seed=1, tokens=30):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, 5, generator=g, dtype=torch.float64)
    pad = torch.rand(tokens, generator=g) < 0.2
    w = torch.randn(5, generator=g, dtype=torch.float64)
    return x, pad, lambda y: torch.tanh(y @ w).pow(2).sum() + 0.3 * (y.sum(0) ** 2).sum()  # couples tokens


def by_hand(m, x, pad, loss_of, stand_in, dropped=None):
    """∂L/∂W of the router by the formula: Σ_t g_t x_tᵀ, g_t = Σ_j ⟨G_t, v_tj⟩ p_t,j (e_j − p_t),
    G = ∂L/∂y at the layer's (sparse) output, v_tD = f_D(x_t) (0 if the capacity dropped t),
    v_tj = stand_in(t, j) for j ≠ D; 0 for pads."""
    dropped = torch.zeros_like(pad) if dropped is None else dropped
    r = m.last
    with torch.no_grad():
        y = torch.zeros_like(x)
        for t in range(x.size(0)):
            if not pad[t] and not dropped[t]:
                d = int(r.expert_index[t, 0])
                y[t] = r.gate[t, 0] * m.experts[d](x[t:t + 1])[0]
    yg = y.clone().requires_grad_(True)
    (G,) = torch.autograd.grad(loss_of(yg), yg)
    grad_w = torch.zeros_like(m.router.proj.weight, dtype=torch.float64)
    for t in range(x.size(0)):
        if pad[t]:
            continue
        p, d = r.probs[t].double().detach(), int(r.expert_index[t, 0])
        g = torch.zeros(4, dtype=torch.float64)
        for j in range(4):
            if j == d:
                v = torch.zeros(5, dtype=torch.float64) if dropped[t] else m.experts[j](x[t:t + 1])[0].detach()
            else:
                v = stand_in(t, j)
            g += (G[t] @ v) * p[j] * (torch.eye(4, dtype=torch.float64)[j] - p)
        grad_w += torch.outer(g, x[t])
    return grad_w


def step(m, x, pad, loss_of):
    m.zero_grad()
    y = m(x, pad)
    loss_of(y).backward()
    return y.detach(), m.router.proj.weight.grad.double().clone()


@pytest.mark.parametrize("router", ["densemixer", "default-moe"])
def test_forward_and_expert_gradients_are_switchs(router):
    sw, m = layers(router)
    x, pad, loss_of = data()
    y_sw, g_sw = step(sw, x, pad, loss_of)
    y, g = step(m, x, pad, loss_of)
    assert torch.equal(y, y_sw)  # the stand-in term is exactly 0 in the forward
    for (name, a), b in zip(m.experts.named_parameters(), sw.experts.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    assert (g - g_sw).norm() > 0.05 * g_sw.norm()  # the router's gradient is not Switch's


def test_densemixer_router_gradient_is_the_dense_mixture_formula():
    sw, m = layers("densemixer")
    x, pad, loss_of = data()
    _, got = step(m, x, pad, loss_of)
    want = by_hand(m, x, pad, loss_of, lambda t, j: m.experts[j](x[t:t + 1])[0].detach())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)  # router math runs in float32
    # Switch's gradient is the same formula without the j ≠ D terms
    _, got_sw = step(sw, x, pad, loss_of)
    want_sw = by_hand(sw, x, pad, loss_of, lambda t, j: torch.zeros(5, dtype=torch.float64))
    torch.testing.assert_close(got_sw, want_sw, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("capacity", [0.0, 0.8])
def test_default_moe_ema_and_router_gradient(capacity):
    """Two steps: Ê_j ← β Ê_j + (1 − β) mean of f_j over the non-pad tokens routed to (and, with
    a capacity, kept by) j, before its use; an expert with no token keeps its Ê. A token dropped
    by the capacity has output 0: its gradient has the j ≠ D terms only."""
    _, m = layers("default-moe", capacity_factor=capacity, bias=True)
    with torch.no_grad():  # expert 3 never wins: its Ê must not move
        m.router.proj.weight[3] = 0.0
        m.router.proj.bias.copy_(torch.tensor([0.0, 0.1, -0.1, -30.0]))
    start = torch.randn(4, 5, dtype=torch.float64)
    m.router.defaults.copy_(start)
    want_e = start.clone()
    for seed in (1, 2):
        x, pad, loss_of = data(seed)
        _, got = step(m, x, pad, loss_of)
        r = m.last
        kept = ~pad
        if capacity:  # the first `cap` routed tokens of each expert, in token order
            cap, seen = m.capacity(int((~pad).sum())), [0] * 4
            for t in range(x.size(0)):
                if not pad[t]:
                    d = int(r.expert_index[t, 0])
                    kept[t] = seen[d] < cap
                    seen[d] += 1
            assert not kept[~pad].all()  # the capacity dropped something
        for j in range(4):
            toks = [t for t in range(x.size(0)) if kept[t] and int(r.expert_index[t, 0]) == j]
            if toks:
                mean = torch.stack([m.experts[j](x[t:t + 1])[0] for t in toks]).mean(0).detach()
                want_e[j] = BETA * want_e[j] + (1 - BETA) * mean
        assert not (r.expert_index[~pad] == 3).any()
        torch.testing.assert_close(m.router.defaults, want_e)
        want = by_hand(m, x, pad, loss_of, lambda t, j: want_e[j], dropped=~kept & ~pad)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert torch.equal(m.router.defaults[3], start[3])


def test_default_moe_eval_and_no_grad_leave_the_ema_and_it_is_saved():
    _, m = layers("default-moe")
    x, pad, _ = data()
    m.router.defaults.fill_(0.5)
    m.eval()
    m(x, pad)
    m.train()
    with torch.no_grad():
        m(x, pad)
    assert torch.all(m.router.defaults == 0.5)
    assert "router.defaults" in m.state_dict()
    m(x, pad)
    assert not torch.all(m.router.defaults == 0.5)


def test_default_moe_one_non_finite_expert_output_does_not_poison_the_ema():
    """One forward in which an expert outputs inf (fp16 overflow: fairseq skips that step) must
    leave Ê finite, and the stand-in term is exactly 0 in the forward whatever Ê holds: the
    next forwards equal Switch's and their router gradient is finite."""
    sw, m = layers("default-moe")
    x, pad, loss_of = data()
    step(m, x, pad, loss_of)
    before = m.router.defaults.clone()
    busy = int(m.last.expert_index[~pad, 0].mode().values)  # an expert that gets tokens
    bias = m.experts[busy].fc2.bias.detach().clone()
    with torch.no_grad():
        m.experts[busy].fc2.bias[0] = float("inf")
    y, _ = step(m, x, pad, loss_of)
    assert not torch.isfinite(y).all()  # the overflow itself is real
    assert torch.isfinite(m.router.defaults).all()
    assert torch.equal(m.router.defaults[busy], before[busy])  # the non-finite mean did not enter
    with torch.no_grad():
        m.experts[busy].fc2.bias.copy_(bias)
    y, g = step(m, x, pad, loss_of)
    y_sw, _ = step(sw, x, pad, loss_of)
    assert torch.equal(y, y_sw) and torch.isfinite(g).all()
    # a buffer that holds inf (set by hand, or an old checkpoint): the forward is still Switch's,
    # and every expert with a token restarts from its batch mean
    with torch.no_grad():
        m.router.defaults.fill_(float("inf"))
    y, g = step(m, x, pad, loss_of)
    assert torch.equal(y, y_sw)
    routed = m.last.expert_index[~pad, 0].unique()
    assert torch.isfinite(m.router.defaults[routed]).all() and torch.isfinite(g).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_default_moe_ema_stays_float32_under_half_precision(dtype):
    """fairseq's --fp16/--bf16 cast the model, buffers included: in half precision
    0.9 Ê + 0.1 m rounds back to Ê (from 1.0 towards 1.03, bf16 never moves). Ê must stay
    float32 (and so in the state dict) and reach m as in float32; device moves still apply."""
    torch.manual_seed(0)
    m = MoEFeedForward(8, 16, 2, router="default-moe", jitter_eps=0.0, expert_impl="loop").to(dtype).train()
    assert m.router.defaults.dtype == torch.float32 and m.experts[0].fc1.weight.dtype == dtype
    assert m.state_dict()["router.defaults"].dtype == torch.float32
    with torch.no_grad():
        for e in m.experts:  # every expert outputs the constant 1.03 (as rounded in dtype)
            e.fc2.weight.zero_()
            e.fc2.bias.fill_(1.03)
        m.router.defaults.fill_(1.0)
    target = torch.tensor(1.03, dtype=dtype).item()
    x = torch.randn(64, 8, dtype=dtype)
    for _ in range(200):
        m(x).float().sum().backward()
    want = 1.0 + (target - 1.0) * (1 - BETA ** 200)
    assert m.router.defaults.dtype == torch.float32
    torch.testing.assert_close(m.router.defaults, torch.full_like(m.router.defaults, want), rtol=0, atol=1e-5)
    m.to("cpu")  # a device move keeps it
    assert m.router.defaults.dtype == torch.float32
