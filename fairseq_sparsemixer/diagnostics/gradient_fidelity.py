r"""Router-gradient fidelity: how close is each estimator to the exact gradient of the expected loss?

For one token t at one MoE layer, with router logits θ, routing distribution π (the router's
own: masked softmax for the SparseMixer family, softmax for Switch; the mask held fixed),
argmax expert D*, and

    φ_i(g) = the loss of the batch when token t is sent to expert i with gate g
             (y_t = ω ⊙ g · f_i(x_t)); every other token, and every other layer, routed as at
             inference (argmax, gate π_D), no dropout,

the expected loss is E(θ) = Σ_i π_i φ_i(π_i) and, with J_i = ∂π_i/∂θ = π_i (e_i − π)
(paper §3, eq. 4-6):

    exact             ∇E = Σ_i [φ_i(π_i) + π_i φ_i'(π_i)] J_i              (∇0 + ∇1)
    switch            φ_{D*}'(π_{D*}) J_{D*}                                (∇1 at the argmax only;
                      on the router's own π, so for a SparseMixer checkpoint this is also
                      the ladder's masked-switch-argmax)
    masked-switch     E_D[φ_D'(π_D) J_D]       = Σ_i π_i φ_i'(π_i) J_i       (∇1 exactly: Switch's
                      estimator with D ~ π, the ablation ladder's first rung)
    sparsemixer-1st   E_D[2 φ_D'(π_D) J_D]     = Σ_i π_i 2 φ_i'(π_i) J_i     (forward Euler)
    sparsemixer       as -1st, but off the argmax φ_i' is taken at π_i or π_i/2 with
                      probability 1/2 each (mid-point): Σ_i π_i 2 E_s[φ_i'(s π_i)] J_i
    densemixer        Σ_i ⟨G, ω ⊙ f_i(x_t)⟩ J_i    (the dense mixture's gradient linearized at
                      the token's output: G = ∂L/∂y_t of the unforced forward; D = D*)
    default-moe       as densemixer with f_i(x_t) replaced, for i ≠ D*, by Ê_i: the router's
                      EMA buffer (a default-moe checkpoint), else the mean of f_i over this
                      batch's tokens routed to i at this layer (what the EMA tracks)

φ_i(π_i), φ_i'(π_i) and φ_i'(π_i/2) are measured by running the model with the token forced
(`forced_route`), one forward + backward per (expert, gate), 2K − 1 in all for K kept experts.
The expectations over D and the coin are taken exactly, not sampled. G comes from one more
forward + backward per layer (`stand_in_inputs`); at i = D*, ⟨G, ω ⊙ f_i⟩ = φ_{D*}'(π_{D*}).

    python -m fairseq_sparsemixer.diagnostics.gradient_fidelity --path CKPT --data BIN
        [--subset valid] [--sentences 8] [--tokens 32] [--out DIR]

prints, per MoE layer, the mean cosine similarity and relative error ‖est − exact‖/‖exact‖ of
each estimator, and writes DIR/gradient_fidelity.json and .png. The core (`token_gradients`)
is plain PyTorch and works on any model containing `MoEFeedForward` layers.
"""
import argparse
import contextlib
import dataclasses
import math
import statistics
from pathlib import Path
from typing import Callable, Dict, List

import torch
import torch.nn as nn

from ..modules import MoEFeedForward
from ._io import save_figure, setup_logging, write_json

ESTIMATORS = ("switch", "masked-switch", "sparsemixer-1st", "sparsemixer", "densemixer", "default-moe")


class _ForcedRouter(nn.Module):
    """The wrapped router's own routing, except token `token`: expert `expert`, gate `gate`."""

    def __init__(self, router, token: int, expert: int, gate: torch.Tensor):
        super().__init__()
        self.inner, self.token, self.expert, self.gate = router, token, expert, gate

    stand_in = property(lambda self: self.inner.stand_in)

    def forward(self, x, padding_mask=None):
        out = self.inner(x, padding_mask)
        index = out.expert_index.clone()
        index[self.token, 0] = self.expert
        gate = out.gate.detach().to(self.gate.dtype).index_put((torch.tensor(self.token), torch.tensor(0)),
                                                              self.gate)
        return dataclasses.replace(out, expert_index=index, gate=gate)


@contextlib.contextmanager
def forced_route(layer: MoEFeedForward, token: int, expert: int, gate: torch.Tensor):
    """Within the block, `layer` sends its flattened token `token` to `expert` with gate `gate`."""
    router = layer.router
    layer.router = _ForcedRouter(router, token, expert, gate)
    try:
        yield
    finally:
        layer.router = router


def stand_in_inputs(loss_fn, layer: MoEFeedForward, route) -> dict:
    """What the densemixer and default-moe estimates need at `layer`, from one unforced forward
    + backward: x (T, d) the layer's flattened input, g (T, d) = ω ⊙ ∂L/∂y (y the layer's
    output), and defaults (N, d): the router's EMA if it keeps one, else the mean of f_i over the
    non-pad tokens that `route` (the unforced routing) sends to i (0 for an expert with none)."""
    seen = {}

    def hook(module, args, out):
        seen["x"] = args[0].detach().reshape(-1, args[0].size(-1))
        seen["y"] = out.detach().requires_grad_(True)
        return seen["y"]

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            (g,) = torch.autograd.grad(loss_fn(), seen["y"])
    finally:
        handle.remove()
    x, g = seen["x"], g.reshape(-1, g.size(-1))
    if layer.omega is not None:
        g = g * layer.omega
    defaults = getattr(layer.router, "defaults", None)
    if defaults is None:
        first = route.expert_index[:, 0]
        real = torch.ones_like(first, dtype=torch.bool) if route.padding_mask is None else ~route.padding_mask
        with torch.no_grad():
            defaults = torch.stack([f(x[(first == i) & real]).mean(0) if bool(((first == i) & real).any())
                                    else x.new_zeros(x.size(-1)) for i, f in enumerate(layer.experts)])
    return dict(x=x, g=g, defaults=defaults.detach().to(x.dtype))


def token_gradients(loss_fn: Callable[[], torch.Tensor], layer: MoEFeedForward, token: int,
                    probs: torch.Tensor, top: int, stand_in: dict = None) -> Dict[str, torch.Tensor]:
    """The exact gradient wrt the token's router logits and the expected estimates (module doc).

    loss_fn() runs the model's forward (eval mode) and returns the scalar loss; `probs` (N,) is
    the token's π and `top` its argmax expert, from an unforced forward; `stand_in`: the
    layer's `stand_in_inputs` (taken here if not given). Returns float64 (N,) tensors keyed
    'exact' and ESTIMATORS, and 'phi', 'dphi', 'dphi_half' (NaN where unused)."""
    if layer.router.top_k != 1:
        raise ValueError("gradient fidelity is defined for top-1 routers")
    if stand_in is None:
        stand_in = stand_in_inputs(loss_fn, layer, unforced_route(loss_fn, layer))
    pi = probs.detach().double().cpu()
    n = pi.numel()
    phi, dphi, dphi_half = (torch.full((n,), math.nan, dtype=torch.float64) for _ in range(3))
    dtype = next(layer.parameters()).dtype
    for i in torch.nonzero(pi > 0).flatten().tolist():
        for scale in (1.0,) if i == top else (1.0, 0.5):
            g = torch.tensor(scale * float(pi[i]), dtype=dtype, requires_grad=True)
            with forced_route(layer, token, i, g), torch.enable_grad():
                loss = loss_fn()
                (d,) = torch.autograd.grad(loss, g)
            if scale == 1.0:
                phi[i], dphi[i] = float(loss.detach()), float(d)
            else:
                dphi_half[i] = float(d)
    kept = pi > 0
    jac = torch.diag(pi) - pi[:, None] * pi[None, :]  # row i: J_i = π_i (e_i − π)
    mid = torch.where(torch.arange(n) == top, dphi, 0.5 * (dphi + dphi_half))
    w = lambda v: torch.where(kept, v, torch.zeros_like(v))  # masked experts: π_i = 0, no term
    phi0 = phi[top]  # Σ_i J_i = 0: subtracting a constant from φ changes nothing but rounding
    with torch.no_grad():
        v = torch.stack([f(stand_in["x"][token:token + 1])[0] for f in layer.experts])  # f_i(x_t)
        v_default = torch.where(torch.arange(n).unsqueeze(-1) == top, v, stand_in["defaults"])
        g = stand_in["g"][token]
        dense, default = ((vv @ g).double().cpu() for vv in (v, v_default))  # ⟨G, ω ⊙ v_i⟩
    return {
        "exact": w((phi - phi0) + pi * dphi) @ jac,
        "switch": dphi[top] * jac[top],
        "masked-switch": w(pi * dphi) @ jac,
        "sparsemixer-1st": w(pi * 2 * dphi) @ jac,
        "sparsemixer": w(pi * 2 * mid) @ jac,
        "densemixer": w(dense) @ jac,
        "default-moe": w(default) @ jac,
        "phi": phi, "dphi": dphi, "dphi_half": dphi_half,
    }


def compare(grads: Dict[str, torch.Tensor]) -> Dict[str, dict]:
    """Cosine similarity and relative error of each estimator against grads['exact']."""
    exact = grads["exact"]
    norm = float(exact.norm())
    out = {}
    for name in ESTIMATORS:
        est = grads[name]
        cos = float(torch.nn.functional.cosine_similarity(est, exact, dim=0)) if norm > 0 else math.nan
        out[name] = dict(cosine=cos, rel_error=float((est - exact).norm()) / norm if norm > 0 else math.nan)
    return out


def unforced_route(loss_fn, layer: MoEFeedForward):
    """`layer`'s routing in an unforced, no-grad forward of loss_fn. (Every forced forward
    overwrites the `last` of every MoE layer, so take it afresh for each layer.)"""
    with torch.no_grad():
        loss_fn()
    return layer.last


def layer_fidelity(loss_fn, layer: MoEFeedForward, tokens: List[int], route=None) -> List[dict]:
    """token_gradients + compare for `tokens` (flat indices) of `layer`; `route`: its
    unforced_route (taken here if not given)."""
    route = route if route is not None else unforced_route(loss_fn, layer)
    stand_in = stand_in_inputs(loss_fn, layer, route)
    recs = []
    for t in tokens:
        probs, top = route.probs[t], int(route.expert_index[t, 0])
        g = token_gradients(loss_fn, layer, t, probs, top, stand_in)
        recs.append(dict(token=t, kept=int((probs > 0).sum()), pi_top=float(probs[top]),
                         exact_norm=float(g["exact"].norm()), **compare(g)))
    return recs


def summarize_layer(recs: List[dict]) -> dict:
    s = dict(tokens=len(recs))
    for name in ESTIMATORS:
        cos = [r[name]["cosine"] for r in recs if not math.isnan(r[name]["cosine"])]
        err = [r[name]["rel_error"] for r in recs if not math.isnan(r[name]["rel_error"])]
        s[name] = dict(mean_cosine=statistics.fmean(cos) if cos else math.nan,
                       median_cosine=statistics.median(cos) if cos else math.nan,
                       mean_rel_error=statistics.fmean(err) if err else math.nan,
                       median_rel_error=statistics.median(err) if err else math.nan)
    closer = [r["sparsemixer"]["rel_error"] < r["switch"]["rel_error"] for r in recs]
    s["sparsemixer_closer_than_switch"] = sum(closer) / len(closer) if closer else math.nan
    return s


# ---------------------------------------------------------------- fairseq checkpoint (CLI)

def _fairseq_setup(a):
    from fairseq import checkpoint_utils

    import fairseq_sparsemixer  # noqa: F401  (registers the model; allows loading our checkpoints)
    from fairseq_sparsemixer.models.introspect import moe_named_layers

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([a.path], arg_overrides={"data": a.data})
    model = models[0].eval()
    if not a.float32:
        model.double()
    for p in model.parameters():
        p.requires_grad_(False)
    layers = moe_named_layers(model)
    if not layers:
        raise ValueError(f"{a.path} has no MoE layer")
    task.load_dataset(a.subset)
    ds = task.dataset(a.subset)
    g = torch.Generator().manual_seed(a.seed)
    ids = torch.randperm(len(ds), generator=g)[: a.sentences].tolist()
    sample = ds.collater([ds[i] for i in ids])
    eps = float(getattr(cfg.criterion, "label_smoothing", 0.0) or 0.0) if cfg.criterion else 0.0
    return model, task, layers, sample, eps


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fairseq_sparsemixer.diagnostics.gradient_fidelity",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--path", required=True, help="a switch_transformer checkpoint")
    p.add_argument("--data", required=True, help="the binarized data dir it was trained on")
    p.add_argument("--subset", default="valid")
    p.add_argument("--sentences", type=int, default=8, help="sentence pairs in the batch")
    p.add_argument("--tokens", type=int, default=32, help="tokens sampled per MoE layer")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--float32", action="store_true", help="run the model in float32 (default float64)")
    p.add_argument("--out", help="output dir (default: CKPT's dir/gradient_fidelity)")
    a = p.parse_args(argv)
    setup_logging()
    if a.sentences < 1 or a.tokens < 1:
        raise SystemExit("gradient_fidelity: error: --sentences and --tokens must be >= 1")
    if not Path(a.path).is_file():
        raise SystemExit(f"gradient_fidelity: error: --path {a.path} not found")
    from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

    try:
        model, task, layers, sample, eps = _fairseq_setup(a)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"gradient_fidelity: error: {e}")
    pad = task.target_dictionary.pad()
    target = sample["target"]

    def loss_fn():  # the summed label-smoothed CE of the batch (the criterion's task loss)
        out = model(**sample["net_input"])
        lprobs = model.get_normalized_probs(out, log_probs=True)
        return label_smoothed_nll_loss(lprobs.view(-1, lprobs.size(-1)), target.view(-1), eps,
                                       ignore_index=pad)[0]

    gen = torch.Generator().manual_seed(a.seed)
    result = dict(path=str(Path(a.path).resolve()), data=a.data, subset=a.subset, sentences=a.sentences,
                  dtype="float32" if a.float32 else "float64", label_smoothing=eps,
                  router=layers[0][1].router.name, layers={})
    for name, layer in layers:
        route = unforced_route(loss_fn, layer)
        pm = route.padding_mask
        real = torch.ones(route.probs.size(0), dtype=torch.bool) if pm is None else ~pm.cpu()
        multi = real & ((route.probs > 0).sum(-1) > 1)  # one kept expert: every gradient is 0
        cand = torch.nonzero(multi).flatten()
        pick = cand[torch.randperm(cand.numel(), generator=gen)[: a.tokens]].tolist()
        recs = layer_fidelity(loss_fn, layer, pick, route)
        s = summarize_layer(recs)
        s["single_expert_fraction"] = route.one_kept_frac.item()
        result["layers"][name] = dict(summary=s, tokens=recs)
        print(f"{name}: {len(recs)} tokens ({s['single_expert_fraction']:.0%} of the layer's tokens keep "
              f"one expert: all gradients 0, skipped)")
        for est in ESTIMATORS:
            print(f"  {est:<16} cosine {s[est]['mean_cosine']:+.3f} (median {s[est]['median_cosine']:+.3f})  "
                  f"rel. error {s[est]['mean_rel_error']:.3f} (median {s[est]['median_rel_error']:.3f})")
        print(f"  sparsemixer closer than switch on {s['sparsemixer_closer_than_switch']:.0%} of the tokens")
    out = Path(a.out or Path(a.path).parent / "gradient_fidelity")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "gradient_fidelity.json", result)
    plot(result, out / "gradient_fidelity.png")
    print(f"wrote {out}/gradient_fidelity.json and .png")


def plot(result, path):
    """Left: mean cosine per layer and estimator. Right: the spread of the relative error."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["layers"])
    k = len(ESTIMATORS)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for ei, est in enumerate(ESTIMATORS):
        pos = [li * (k + 1) + ei for li in range(len(names))]
        summ = [result["layers"][n]["summary"][est] for n in names]
        left.bar(pos, [s["mean_cosine"] for s in summ], color=colors[ei], label=est)
        errs = [[r[est]["rel_error"] for r in result["layers"][n]["tokens"]
                 if not math.isnan(r[est]["rel_error"])] or [math.nan] for n in names]
        box = right.boxplot(errs, positions=pos, widths=0.8, patch_artist=True, showfliers=False)
        for patch in box["boxes"]:
            patch.set_facecolor(colors[ei])
    ticks = [li * (k + 1) + (k - 1) / 2 for li in range(len(names))]
    for ax in (left, right):
        ax.set_xticks(ticks, names)
        ax.grid(alpha=0.3, axis="y")
    left.axhline(0, color="black", lw=0.8)
    left.set_ylabel("mean cosine with the exact gradient")
    left.legend(loc="lower left")
    right.set_ylabel("relative error ‖est − exact‖ / ‖exact‖")
    fig.suptitle(f"router-gradient fidelity ({result['router']} checkpoint)")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    main()
