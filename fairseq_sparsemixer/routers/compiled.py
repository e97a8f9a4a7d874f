"""The router, its statistics and its two losses as one `torch.compile`d graph (issue 21).

Eager, a layer step spends about half of its aten ops on the router's (T, N) arithmetic (the
mask, the softmax, the Gumbel draw, the coin, the gate, the statistics and the losses, forward
and backward; docs/benchmarks.md, section 5), each a kernel launch on a GPU, where the layer is
launch-bound. `compiled_route(router, x, padding_mask)` returns what `router(x, padding_mask)`
returns, with, when autograd is on (training), its statistics (`RouterOutput.compute_stats`)
computed in the same graph, so that inductor fuses them into a few kernels forward and backward:

  * the same draws: inductor's `fallback_random` keeps torch's own exponential_, uniform_ and
    rand calls, in the eager order, so D, the coin and Switch's noise are the eager router's
    draw for draw under the same seed;
  * the same arithmetic to float rounding (a fused kernel may sum in another order), the
    gradients too: AOTAutograd traces the routers' autograd Functions (EstimatorGate,
    RouterStats) with their written-out backwards;
  * one graph for every token count (fairseq's batches change it every update): the token
    dimension is marked dynamic, the others stay static (with every dimension dynamic, torch
    2.13's dynamo fails to trace sparsemixer-v2's second EstimatorGate at top-2); the graph is
    shared by every layer of the same configuration (parameters are graph inputs). Floats such
    as the estimator's factor stay constants (`specialize_float`: a router's factor 2 after
    another's 1 would otherwise become a symbol, which dynamo fails to carry into a backward).

The eager router is the reference (tests/test_compiled_router.py compares the two, router
configurations of every family, with pads, under bf16 autocast, in a layer and in a fairseq
training step). Past `_GRAPHS` graphs in one process, new configurations fall back to the eager
router with one warning. Opt in with `--moe-compile-router` (`MoEFeedForward(compile_router=True)`);
off by default until measured on a GPU (gpu_check.sh's layer-compiled step times it).
"""
import warnings

import torch

from .base import RouterOutput


def _route(router, x, padding_mask, with_stats: bool):
    out = router(x, padding_mask)
    stats = out._stats if with_stats else None  # traced: `route` computed them in this graph
    return out.expert_index, out.gate, out.probs, out.logits, out.balance_probs, stats


_compiled = None  # made at the first call (importing torch's compiler costs seconds)
# graphs of `_route` one process may hold (torch's default, 8, would fail a model with a few
# router configurations in training, validation and generation, with or without pads)
_GRAPHS = 64
_warned = False


def compiled_route(router, x, padding_mask=None):
    """`router(x, padding_mask)` (a RouterOutput) from the compiled graph; in training its
    statistics come from the same graph (at inference, read lazily as in eager)."""
    global _compiled, _warned
    if torch.compiler.is_compiling():  # inside a compiled model: traced into its graph
        return router(x, padding_mask)
    if _compiled is None:
        _compiled = torch.compile(_route, fullgraph=True, options={"fallback_random": True})
    if x.size(0) > 1:  # a size 0 or 1 is specialized whatever the mark
        torch._dynamo.mark_dynamic(x, 0)
        if padding_mask is not None:
            torch._dynamo.mark_dynamic(padding_mask, 0)
    with_stats = torch.is_grad_enabled()
    # autocast off around the graph as inside the router: a graph compiled under autocast would
    # also run its backward (traced with it) in half precision
    with torch.autocast(device_type=x.device.type, enabled=False):
        try:
            with torch._dynamo.config.patch(specialize_float=True, recompile_limit=_GRAPHS):
                outs = _compiled(router, x, padding_mask, with_stats)
        except torch._dynamo.exc.FailOnRecompileLimitHit:  # raised before anything ran: no draw made
            if not _warned:
                warnings.warn(f"routers/compiled.py: more than {_GRAPHS} router graphs in this process; "
                              "new configurations run the eager router (the same numbers, more kernels)")
                _warned = True
            outs = _route(router, x, padding_mask, with_stats)
    index, gate, probs, logits, balance_probs, stats = outs
    out = RouterOutput(index, gate, probs, logits, padding_mask, balance_probs)
    return out if stats is None else out.preset_stats(stats)
