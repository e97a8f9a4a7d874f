"""The compiled router (routers/compiled.py) against the eager one, its reference: the same
draws, the same statistics, losses and gradients to float rounding, for every router family;
one graph for every token count and every layer of a model."""
from collections import Counter

import pytest
import torch

from fairseq_sparsemixer.modules.moe_layer import MoEFeedForward
from fairseq_sparsemixer.routers import build_router
from fairseq_sparsemixer.routers.compiled import compiled_route

STATS = ("balance_loss", "z_loss", "expert_counts", "entropy", "non_argmax_frac", "one_kept_frac")


def _close(a, b, what):
    if a.dtype in (torch.int64, torch.bool):
        assert torch.equal(a, b), what
    else:  # float rounding: a fused kernel may sum in another order
        tol = 1e-5 * b.double().abs().max().clamp_min(1.0).item()
        assert (a.double() - b.double()).abs().max().item() <= tol, what


def _router_step(r, x, pad, compiled, seed):
    """Routes (training: the draws from `seed`), reads every statistic, backpropagates a loss
    that weighs each gate differently plus both auxiliary losses."""
    x = x.detach().clone().requires_grad_()
    r.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = compiled_route(r, x, pad) if compiled else r(x, pad)
    weights = torch.arange(1.0, out.gate.numel() + 1).view_as(out.gate)
    ((out.gate * weights).sum() + 0.1 * out.balance_loss + 0.01 * out.z_loss).backward()
    got = dict(expert_index=out.expert_index, gate=out.gate, probs=out.probs, x_grad=x.grad,
               **{k: getattr(out, k) for k in STATS})
    got.update({f"{k}_grad": p.grad for k, p in r.named_parameters()})
    return got


@pytest.mark.parametrize("name,kw", [
    ("sparsemixer", {}), ("switch", {}), ("sparsemixer-v2", {"top_k": 2}), ("masked-switch-argmax", {}),
    ("sparsemixer-inf", {"balance_probs": "full", "min_kept": 2, "bias": True}), ("sparsemixer", {"mask": False}),
    ("densemixer", {}), ("default-moe", {})])
def test_compiled_router_equals_eager(name, kw):
    """Draw for draw (the same experts: inductor keeps torch's random calls in their order) and
    to rounding (gates, probabilities, the six statistics, the input and parameter gradients),
    with pads, over three token counts (one graph: the token dimension is dynamic); at eval too."""
    torch.manual_seed(0)
    r = build_router(name, embed_dim=16, num_experts=4, **kw).train()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for t in (37, 50, 23):
        x = torch.randn(t, 16) * 3
        pad = torch.zeros(t, dtype=torch.bool)
        pad[-5:] = True
        want, got = _router_step(r, x, pad, False, t), _router_step(r, x, pad, True, t)
        assert want.keys() == got.keys()
        for k in want:
            _close(got[k], want[k], f"{name} T={t}: {k}")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs + 1  # compiled, once
    r.eval()
    with torch.no_grad():
        a, b = r(x, pad), compiled_route(r, x, pad)
    assert torch.equal(a.expert_index, b.expert_index)
    for k in ("gate", "probs") + STATS:
        _close(getattr(b, k), getattr(a, k), f"{name} eval: {k}")


def test_compiled_router_fails_without_fallback_random():
    """The test above can fail: inductor's own random numbers (its default) route other experts."""
    from fairseq_sparsemixer.routers import compiled

    torch.manual_seed(0)
    r = build_router("sparsemixer", embed_dim=16, num_experts=4, jitter_eps=10.0).train()  # no mask
    x = torch.randn(64, 16)
    f = torch.compile(compiled._route, fullgraph=True, dynamic=False)
    torch.manual_seed(1)
    want = r(x).expert_index
    torch.manual_seed(1)
    with torch._dynamo.config.patch(recompile_limit=compiled._GRAPHS):  # this file compiles _route often
        assert not torch.equal(f(r, x, None, False)[0], want)


@pytest.mark.parametrize("impl", ["loop", "grouped"])
def test_layer_with_compiled_router_equals_eager(impl):
    """A layer training step (pads, the statistics, both losses) with compile_router=True equals the
    eager layer's to rounding: output, statistics, every gradient; the same experts routed."""
    res = []
    for comp in (False, True):
        torch.manual_seed(0)
        m = MoEFeedForward(16, 32, 4, expert_impl=impl, compile_router=comp).train()
        x = torch.randn(2, 19, 16, requires_grad=True)
        pad = torch.zeros(2, 19, dtype=torch.bool)
        pad[1, -6:] = True
        y = m(x, pad)
        r = m.last
        (y.square().mean() + 0.01 * r.balance_loss + 0.001 * r.z_loss).backward()
        res.append(dict(y=y, index=r.expert_index, x_grad=x.grad, **{k: getattr(r, k) for k in STATS},
                        **{k: p.grad for k, p in m.named_parameters()}))
    for k in res[0]:
        _close(res[1][k], res[0][k], f"{impl}: {k}")


@pytest.fixture
def one_thread():
    """Inductor's CPU code depends on the thread count (a reduction is split per thread)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_compiled_router_runs_as_few_kernels(one_thread):
    """The router with its statistics and both losses, one training step of 512 tokens with pads
    (one thread):
    the eager reference dispatches 63 aten ops (each a kernel launch on a GPU; 67 before the
    statistics took the counts from their means' matmul), the compiled graphs 10 calls: four
    fused kernels and what inductor leaves to torch (four matmuls: logits, the statistics'
    sums, the two gradients of W x; the two draws)."""
    from fairseq_sparsemixer.diagnostics.host_syncs import AtenOps, compiled_calls
    from fairseq_sparsemixer.routers import compiled

    torch.manual_seed(0)
    r = build_router("sparsemixer", embed_dim=64, num_experts=4).train()
    x = torch.randn(512, 64, requires_grad=True)
    pad = torch.zeros(512, dtype=torch.bool)
    pad[-37:] = True
    f = torch.compile(compiled._route, fullgraph=True,
                      options={"fallback_random": True, "cpp.enable_kernel_profile": True})

    def step(route):
        x.grad = None
        r.zero_grad(set_to_none=True)
        index, gate, probs, logits, balance_probs, s = route()
        (gate.sum() + 0.01 * s["balance_loss"] + 0.001 * s["z_loss"]).backward()

    def eager():
        out = r(x, pad)
        return out.expert_index, out.gate, out.probs, out.logits, out.balance_probs, out._stats

    def comp():
        with torch._dynamo.config.patch(specialize_float=True, recompile_limit=compiled._GRAPHS):
            return f(r, x, pad, True)

    step(eager)
    with AtenOps() as c:
        step(eager)
    # the test's own loss and backward on leaves of the same shapes: left out of both counts
    leaves = [torch.zeros(512, 1, requires_grad=True), torch.zeros((), requires_grad=True),
              torch.zeros((), requires_grad=True)]
    with AtenOps() as loss:
        (leaves[0].sum() + 0.01 * leaves[1] + 0.001 * leaves[2]).backward()
    step(comp)
    calls = compiled_calls(lambda: step(comp))
    assert c.count - loss.count == 63, (c.count, loss.count, c.ops)  # torch 2.13, CPU
    assert calls == {"fused": 4, "mm": 4, "exponential": 1, "rand": 1}, calls


def test_compiled_router_keeps_float32_gradients_under_autocast():
    """fairseq --amp runs the model under autocast: the router computes in float32 in the forward
    (it turns autocast off) and, compiled, in the backward too (a graph compiled under autocast
    would trace its backward in bf16: errors ~3e-3 instead of rounding)."""
    torch.manual_seed(0)
    r = build_router("switch", embed_dim=16, num_experts=4).train()
    x = torch.randn(40, 16)
    res = []
    for comp in (False, True):
        xx = x.clone().requires_grad_()
        r.zero_grad(set_to_none=True)
        torch.manual_seed(3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = compiled_route(r, xx) if comp else r(xx)
            loss = (out.probs * torch.linspace(-1, 1, 4)).sum() + out.z_loss
        loss.backward()
        res.append((out.probs.dtype, xx.grad, r.proj.weight.grad))
    assert res[0][0] == res[1][0] == torch.float32
    for a, b in zip(res[0][1:], res[1][1:]):
        assert ((a - b).norm() / b.norm()).item() < 1e-6


def test_compiled_router_falls_back_to_eager_past_the_graph_limit(monkeypatch):
    """Past `_GRAPHS` graphs (fullgraph=True would raise mid-training), a new configuration runs the
    eager router, with the same draws and numbers, and one warning."""
    from fairseq_sparsemixer.routers import compiled

    monkeypatch.setattr(compiled, "_GRAPHS", 0)
    monkeypatch.setattr(compiled, "_warned", False)
    torch.manual_seed(0)
    r = build_router("sparsemixer", embed_dim=24, num_experts=3, jitter_eps=0.37).train()  # a new graph
    x = torch.randn(30, 24)
    torch.manual_seed(5)
    want = r(x)
    torch.manual_seed(5)
    with pytest.warns(UserWarning, match="more than 0 router graphs"):
        got = compiled_route(r, x)
    assert torch.equal(got.expert_index, want.expert_index) and torch.equal(got.gate, want.gate)
    assert torch.equal(got.balance_loss, want.balance_loss)


def test_whole_compiled_layer_equals_eager_and_runs_as_few_calls(one_thread):
    """The grouped layer under torch.compile (the benchmark's design `whole-compiled`): the grouped
    GEMMs are left to torch (`_grouped_gemm`, a graph break on each side; traced, they fail on
    CPU in fp32: torch's shape function wants bf16), the rest is compiled: the router, its
    statistics and losses (in the graph, not read lazily after it), the layout, the gather back,
    gate and omega. The same draws and the same numbers to rounding as the eager layer (outputs,
    statistics, every gradient, two steps). One training step (512 tokens with pads, N = 4, one
    thread; the test's own loss and its backward left out) runs 38 calls where the eager layer
    dispatches 131 aten ops (tests/test_moe_layer.py) and a dense FFN 17: 16 fused kernels, 8
    matmuls (the router's three, the statistics' sums, the four bias matmuls of the experts'
    forward and backward), the two draws, 2 cumsums and a searchsorted (the layout), and,
    between the graphs, the 6 grouped GEMMs (2 forward, 4 backward), 2 zero gradients
    AOTAutograd makes for outputs without one and the sum of the input's two gradients."""
    import copy

    from fairseq_sparsemixer.diagnostics.host_syncs import compiled_calls

    torch.manual_seed(0)
    eager = MoEFeedForward(64, 256, 4, expert_impl="grouped").train()
    comp = copy.deepcopy(eager)
    fwd = torch.compile(comp.forward, options={"fallback_random": True, "cpp.enable_kernel_profile": True})
    x = torch.randn(512, 64, requires_grad=True)
    pad = torch.zeros(512, dtype=torch.bool)
    pad[-37:] = True

    def step(m, forward, seed=1):
        m.zero_grad(set_to_none=True)
        x.grad = None
        torch.manual_seed(seed)
        y = forward(x, pad)
        r = m.last
        got = dict(y=y, index=r.expert_index, **{k: getattr(r, k) for k in STATS})
        (y.square().mean() + 0.01 * r.balance_loss + 0.001 * r.z_loss).backward()
        return dict(got, x_grad=x.grad, **{k: p.grad for k, p in m.named_parameters()})

    for seed in (1, 2):
        want, got = step(eager, eager, seed), step(comp, fwd, seed)
        assert set(got) == set(want)
        for k in want:
            _close(got[k], want[k], k)
    calls = compiled_calls(lambda: step(comp, fwd), eager=True)
    leaves = [torch.zeros(512, 64, requires_grad=True), torch.zeros((), requires_grad=True),
              torch.zeros((), requires_grad=True)]
    calls.subtract(compiled_calls(
        lambda: (leaves[0].square().mean() + 0.01 * leaves[1] + 0.001 * leaves[2]).backward(), eager=True))
    assert +calls == Counter({  # torch 2.13, CPU
        "fused": 16, "mm": 6, "addmm": 2, "exponential": 1, "rand": 1, "cumsum": 2, "searchsorted": 1,
        "eager:_grouped_mm": 6, "eager:zeros": 2, "eager:add": 1}), calls
    assert -calls == Counter(), calls  # the loss's ops, no more, were left out
