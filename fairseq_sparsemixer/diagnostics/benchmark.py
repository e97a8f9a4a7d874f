"""Speed and memory of the MoE layer, the routers and the whole model, each as a ratio against a
baseline measured in the same process (interleaved round-robin after warm-up; median of repeats).

    python scripts/benchmark.py layer  [--experts 2 4 8 16] [--tokens 1024 4096 16384]
    python scripts/benchmark.py router [--arch tiny base]
    python scripts/benchmark.py model  [--experts 4 16] [--updates 120]
    python scripts/benchmark.py all    --json bench.json          (every suite)
    common: [--device cpu|cuda] [--dtype float32|float16|bfloat16] [--repeats R] [--warmup W]
            [--quick] (tiny sizes: checks the harness) [--json OUT]

layer   forward+backward of one FFN layer on T tokens (d = 512, d_ff = 2048 per expert):
        the dense FFN (baseline), ours (MoEFeedForward: sorted dropless dispatch, one matmul
        pair per expert), grouped (the same with --moe-expert-impl grouped: two grouped GEMMs;
        before timing, its output and every gradient are compared with ours', the relative
        error is reported, and a dtype/device torch cannot run it on is skipped with a note), two
        reference dispatch designs implemented here: `mask-loop` (a boolean mask per expert,
        gather / index_add) and `onehot-einsum` (GShard / fairseq-moe / DeepSpeed: one-hot
        (T, N, C) dispatch and combine tensors with capacity C = ceil(1.25 T / N), stacked
        expert weights, einsum); opt-in designs `compiled` and `grouped-compiled`: ours and
        grouped with --moe-compile-router (routers/compiled.py; the first warm-up step compiles),
        and `whole-compiled`: the grouped layer under torch.compile, its two grouped GEMMs left
        to torch (graph breaks: traced, they fail, issue 21; skipped, with inductor's message,
        where the rest fails to compile).
        All use the same SparseMixer router. Peak memory: the
        most memory allocated above the pre-step level during one step (activations and
        gradients; CUDA: max_memory_allocated, CPU: the profiler's allocation events).
router  a full training step (forward, backward, Adam) of switch_transformer_tiny and of the
        base dims (6+6 x 512/2048, a short sequence budget) with each router; baseline switch.
model   fairseq-train target words/s (fairseq's own `wps`, median over log records after the
        first) of switch_transformer_tiny with N experts vs fairseq's `transformer` of the same
        dims on the bundled sample, and fairseq-generate sentences/s (beam 4, every output forced
        to the same length so that the work is identical) of the trained models.
        --model-recipe paper: switch_transformer_wmt_en_de vs transformer_wmt_en_de, one GPU,
        --max-tokens 8192, update-freq 1 (--precision of train_wmt14.sh: fp16 on GPU); with
        --no-generate, training speed only (no checkpoint is written).
"""
import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..modules import MoEFeedForward

ROOT = Path(__file__).resolve().parents[2]  # the checkout: the model suite runs its scripts/


# ----------------------------------------------------------------------------- timing

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def compare(fns, device, warmup, repeats):
    """Median seconds of each fn, timed interleaved (round-robin) after warm-up."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            sync(device)
            t = time.perf_counter()
            f()
            sync(device)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def peak_memory(fn, device, setup=None) -> int:
    """Bytes allocated at the peak of one call of fn, above the level before it (after `setup()`,
    which runs outside the measurement: e.g. dropping the old gradients)."""
    if setup is not None:
        setup()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak


def kernel_stats(fn, steps=3):
    """CUDA only: (kernels, summed kernel ms) per call of fn, from torch.profiler over `steps`
    calls after one unprofiled call (memcpys and memsets are not kernels; profile_train's rules)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    from .profile_train import device_activity

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(steps):
            with record_function(f"update_{i}"):
                fn()
                torch.cuda.synchronize()  # the step's kernels end inside its range
    act = device_activity(prof)
    kernels = sum(k for *_, k in act)
    if not kernels:  # the profiler recorded no GPU activity (e.g. CUPTI not permitted): unknown, not 0
        return float("nan"), float("nan")
    return kernels / steps, sum(e - s for _, s, e, k in act if k) / 1e6 / steps


def facts(a, device):
    return {"torch": torch.__version__, "device": str(device), "dtype": a.dtype,
            "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}


# ------------------------------------------------------------- reference dispatch designs

class MaskLoopMoE(nn.Module):
    """Reference (a): for each expert, a boolean mask over the tokens, gather, FFN, index_add.
    Shares the router, experts and omega of `moe` (so the output equals moe's)."""

    def __init__(self, moe: MoEFeedForward):
        super().__init__()
        self.moe = moe

    def forward(self, x):  # (T, d) -> (T, d)
        m = self.moe
        route = m.router(x)
        idx, gate = route.expert_index[:, 0], route.gate[:, 0]
        out = torch.zeros_like(x)
        for e, expert in enumerate(m.experts):
            sel = torch.nonzero(idx == e).squeeze(1)  # (n_e,)
            out = out.index_add(0, sel, expert(x[sel]) * gate[sel, None].to(x.dtype))
        return out * m.omega.to(x.dtype) if m.omega is not None else out


class OneHotEinsumMoE(nn.Module):
    """Reference (b), the GShard design (as in fairseq's moe branch, DeepSpeed-MoE, Tutel's
    baseline): capacity C = ceil(cf·T/N); dispatch (T, N, C) one-hot of each token's slot in its
    expert's buffer (tokens past C dropped), combine = dispatch · gate; expert weights stacked
    (N, d, d_ff) and applied with batched einsums. Weights copied from `moe` at construction;
    with cf large enough to drop nothing, the output equals moe's."""

    def __init__(self, moe: MoEFeedForward, capacity_factor=1.25):
        super().__init__()
        self.router, self.omega, self.cf = moe.router, moe.omega, capacity_factor
        stack = lambda get: nn.Parameter(torch.stack([get(e).detach().clone() for e in moe.experts]))
        self.w1 = stack(lambda e: e.fc1.weight.t())  # (N, d, d_ff)
        self.b1 = stack(lambda e: e.fc1.bias)  # (N, d_ff)
        self.w2 = stack(lambda e: e.fc2.weight.t())  # (N, d_ff, d)
        self.b2 = stack(lambda e: e.fc2.bias)  # (N, d)

    def forward(self, x):  # (T, d) -> (T, d)
        route = self.router(x)
        n = self.w1.size(0)
        cap = math.ceil(self.cf * x.size(0) / n)
        e = route.expert_index[:, 0]  # (T,)
        slot = (torch.cumsum(F.one_hot(e, n), 0) - 1).gather(1, e[:, None]).squeeze(1)  # (T,) place in e's buffer
        kept = torch.nonzero(slot < cap).squeeze(1)  # tokens past the capacity are dropped
        dispatch = x.new_zeros(x.size(0), n * cap)
        dispatch[kept, e[kept] * cap + slot[kept]] = 1.0
        dispatch = dispatch.view(-1, n, cap)  # (T, N, C) one-hot
        combine = dispatch * route.gate[:, :1, None].to(x.dtype)  # (T, N, C)
        xe = torch.einsum("tnc,td->ncd", dispatch, x)  # (N, C, d)
        h = F.relu(torch.einsum("ncd,ndf->ncf", xe, self.w1) + self.b1[:, None])  # (N, C, d_ff)
        ye = torch.einsum("ncf,nfd->ncd", h, self.w2) + self.b2[:, None]  # (N, C, d)
        out = torch.einsum("tnc,ncd->td", combine, ye)
        return out * self.omega.to(x.dtype) if self.omega is not None else out


# aten ops of a forward+backward step of MoEFeedForward, by what they do (the rest is "other")
_CATEGORIES = {
    "expert matmuls": {"aten::addmm", "aten::mm", "aten::bmm", "aten::relu", "aten::clamp_min",
                       "aten::threshold_backward", "aten::sum"},
    "router": {"aten::softmax", "aten::_softmax", "aten::_softmax_backward_data", "aten::exponential_",
               "aten::log", "aten::rand", "aten::uniform_", "aten::masked_fill", "aten::masked_fill_",
               "aten::where", "aten::abs", "aten::maximum", "aten::gt", "aten::lt", "aten::max",
               "aten::argmax", "aten::amax", "aten::logsumexp", "aten::gather", "aten::scatter_add_",
               "aten::clamp_min_", "aten::pow", "aten::ge", "aten::ne", "aten::bitwise_and",
               "EstimatorGate", "EstimatorGateBackward"},
    "dispatch (sort / gather / scatter)": {"aten::sort", "aten::argsort", "aten::index", "aten::index_select",
                                           "aten::index_add_", "aten::index_add", "aten::index_put_",
                                           "aten::bincount", "aten::split_with_sizes", "aten::cat",
                                           "aten::repeat_interleave", "aten::arange", "aten::new_zeros",
                                           "aten::zeros", "aten::_index_put_impl_"},
    "gate and omega scaling": {"aten::mul"},
    "views, copies, autograd bookkeeping": {"aten::t", "aten::transpose", "aten::as_strided", "aten::view",
                                            "aten::expand", "aten::reshape", "aten::slice", "aten::unsqueeze",
                                            "aten::detach", "detach", "aten::copy_", "aten::_to_copy", "aten::to",
                                            "aten::empty", "aten::empty_strided", "aten::fill_", "aten::zero_",
                                            "aten::linear", "aten::ones_like", "aten::zeros_like"},
}


def _category(op):
    if op.startswith("autograd::") or op.endswith("Backward0") or "AccumulateGrad" in op:
        return "views, copies, autograd bookkeeping"
    return next((k for k, names in _CATEGORIES.items() if op in names), "other")


def profile_breakdown(fn, steps=3):
    """Share of the self CPU time of `steps` calls of fn per op category (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    total, cat = 0.0, {k: 0.0 for k in list(_CATEGORIES) + ["other"]}
    for e in prof.key_averages():
        t = e.self_cpu_time_total
        total += t
        cat[_category(e.key)] += t
    return {k: round(v / total, 3) for k, v in cat.items()}


def dense_ffn(d, d_ff):
    return nn.Sequential(nn.Linear(d, d_ff), nn.ReLU(), nn.Linear(d_ff, d))


class MoEVariant(nn.Module):
    """`moe` (the same parameters) with other `MoEFeedForward` settings for the call, e.g.
    expert_impl="grouped" or compile_router=True."""

    def __init__(self, moe: MoEFeedForward, **settings):
        super().__init__()
        self.moe, self.settings = moe, settings

    def forward(self, x):
        old = {k: getattr(self.moe, k) for k in self.settings}
        for k, v in self.settings.items():
            setattr(self.moe, k, v)
        try:
            return self.run(x)
        finally:
            for k, v in old.items():
                setattr(self.moe, k, v)

    def run(self, x):
        return self.moe(x)


class WholeCompiledMoE(MoEVariant):
    """`moe` with the whole layer under torch.compile (inductor with torch's own random calls),
    on the grouped path; the grouped GEMMs stay torch's (modules/moe_layer.py `_grouped_gemm`:
    issue 21 found inductor failing on them in bf16 on an H200, torch 2.11). `suite_layer` tries
    a small step first and, where it still fails, skips this design with inductor's message."""

    def __init__(self, moe: MoEFeedForward, **settings):
        super().__init__(moe, **settings)
        self.compiled = torch.compile(moe.forward, options={"fallback_random": True})

    def run(self, x):
        return self.compiled(x)


#: layer designs that are `ours` with other settings (routers/compiled.py: the compiled router)
VARIANTS = {"grouped": dict(expert_impl="grouped"), "compiled": dict(compile_router=True),
            "grouped-compiled": dict(expert_impl="grouped", compile_router=True),
            "whole-compiled": dict(expert_impl="grouped", compile_router=False)}
DESIGNS = ["dense", "ours", *VARIANTS, "mask-loop", "onehot-einsum"]


def variant(moe: MoEFeedForward, design: str) -> MoEVariant:
    """The layer design `design` (a key of VARIANTS) on `moe`'s parameters."""
    return (WholeCompiledMoE if design == "whole-compiled" else MoEVariant)(moe, **VARIANTS[design])


def layer_designs(d, d_ff, n, designs):
    """{name: module} for the requested designs; all MoE designs share one router and experts."""
    moe = MoEFeedForward(d, d_ff, n, router="sparsemixer", expert_impl="loop")
    build = {"dense": lambda: dense_ffn(d, d_ff), "ours": lambda: moe,
             "mask-loop": lambda: MaskLoopMoE(moe), "onehot-einsum": lambda: OneHotEinsumMoE(moe),
             **{k: (lambda k=k: variant(moe, k)) for k in VARIANTS}}
    return {k: build[k]() for k in designs}


def grouped_error(moe: MoEFeedForward, x) -> float:
    """Largest relative error (‖a − b‖ / ‖b‖) of the grouped path against the loop, over the
    output, the input gradient and every parameter gradient, on the same routes."""
    res = []
    for m in (moe, variant(moe, "grouped")):
        xi = x.detach().clone().requires_grad_()
        moe.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        y = m(xi)
        y.float().pow(2).sum().backward()
        res.append([y.float(), xi.grad.float()] + [p.grad.float() for p in moe.parameters() if p.grad is not None])
    moe.zero_grad(set_to_none=True)
    return max(((a - b).norm() / b.norm().clamp_min(1e-30)).item() for a, b in zip(res[1], res[0]))


def step_fn(module, x):
    """One forward+backward of `module`, the input gradient included (the dispatch's backward
    scatters it back to the tokens): `step.x` is the leaf input whose .grad it computes."""
    x = x.detach().requires_grad_()

    def step():
        module.zero_grad(set_to_none=True)
        x.grad = None
        module(x).float().sum().backward()
    step.x = x
    return step


def _root_error(e: BaseException) -> str:
    """'Type: first line' of the innermost exception that caused `e` (dynamo wraps the error of
    the op it failed on in a generic one)."""
    while (e.__cause__ or e.__context__) is not None:
        e = e.__cause__ or e.__context__
    lines = str(e).strip().splitlines() or [""]
    return f"{type(e).__name__}: {lines[0][:300]}"


def suite_layer(a, device, dtype):
    designs = list(a.designs)
    skipped = {}  # design -> why it could not run here (kept in every row)
    if any(VARIANTS.get(k, {}).get("expert_impl") == "grouped" for k in designs):  # can torch run it here?
        try:
            grouped_error(MoEFeedForward(64, 128, 2, expert_impl="loop").to(device, dtype),
                          torch.randn(64, 64, device=device, dtype=dtype))
        except (RuntimeError, ValueError, NotImplementedError) as e:
            skip = [k for k in designs if VARIANTS.get(k, {}).get("expert_impl") == "grouped"]
            why = f"torch {torch.__version__} cannot run the grouped path on {device} {dtype}: {str(e).splitlines()[0][:200]}"
            print(f"[layer] {', '.join(skip)}: skipped, {why}")
            skipped.update(dict.fromkeys(skip, why))
            designs = [k for k in designs if k not in skip]
    if "whole-compiled" in designs:  # does inductor compile the grouped layer here?
        try:
            m = MoEFeedForward(64, 128, 2).to(device, dtype).train()
            step_fn(variant(m, "whole-compiled"), torch.randn(64, 64, device=device, dtype=dtype))()
        except Exception as e:  # noqa: BLE001 - whatever inductor raises is the finding
            why = f"torch {torch.__version__} cannot compile the grouped layer on {device} {dtype}: {_root_error(e)}"
            print(f"[layer] whole-compiled: skipped, {why}")
            skipped["whole-compiled"] = why
            designs.remove("whole-compiled")
    rows = []
    hdr = f"{'N':>3} {'T':>6} " + " ".join(f"{k + ' ms':>17}" for k in designs) + " " + " ".join(
        f"{k + '/dense':>19}" for k in designs[1:]) + "   peak MiB: " + " / ".join(designs)
    print("\n[layer] forward+backward, ratio to the dense FFN\n" + hdr)
    for t in a.tokens:
        x = torch.randn(t, a.dim, device=device, dtype=dtype)
        for n in a.experts:
            torch.manual_seed(0)
            mods = {k: m.to(device, dtype).train() for k, m in layer_designs(a.dim, a.ffn_dim, n, designs).items()}
            fns = {k: step_fn(m, x) for k, m in mods.items()}
            ds = list(designs)  # this row's designs: whole-compiled may still fail at this size
            if "whole-compiled" in fns:
                try:
                    fns["whole-compiled"]()
                except Exception as e:  # noqa: BLE001 - keep the other designs' row
                    why = skipped[f"whole-compiled N={n} T={t}"] = _root_error(e)
                    print(f"[layer] whole-compiled at N={n} T={t}: skipped, {why}")
                    del mods["whole-compiled"], fns["whole-compiled"]
                    ds.remove("whole-compiled")
            sec = compare(fns, device, a.warmup, a.repeats)
            mem = {k: peak_memory(lambda m=m, s=fns[k]: m(s.x).float().sum().backward(), device,
                                  setup=lambda m=m, s=fns[k]: (m.zero_grad(set_to_none=True), setattr(s.x, "grad", None)))
                   for k, m in mods.items()}
            row = {"experts": n, "tokens": t, "dtype": a.dtype,
                   **{f"{k}_ms": round(v * 1e3, 3) for k, v in sec.items()},
                   **{f"{k}_over_dense": round(sec[k] / sec["dense"], 3) for k in ds[1:]},
                   **{f"{k}_peak_mib": round(mem[k] / 2 ** 20, 1) for k in ds},
                   "tokens_per_s_ours": round(t / sec["ours"]), **({"skipped": dict(skipped)} if skipped else {})}
            if device.type == "cuda":  # kernels per step and their summed time: launch-bound or not
                for k in ds:
                    try:
                        kern, kms = kernel_stats(fns[k])
                    except Exception as e:  # a profiler that cannot run here: say so, keep the timings
                        print(f"[layer] {k}: kernels not counted: {str(e).splitlines()[0][:200]}")
                        kern = kms = float("nan")
                    row[f"{k}_kernels"], row[f"{k}_kernel_ms"] = round(kern, 1), round(kms, 3)
            if "grouped" in ds:
                row["grouped_over_ours"] = round(sec["grouped"] / sec["ours"], 3)
                row["grouped_rel_err"] = float(f"{grouped_error(mods['ours'], x):.2e}")
            if a.profile and device.type == "cpu":
                row["ours_profile"] = profile_breakdown(fns["ours"])
            rows.append(row)
            print(f"{n:>3} {t:>6} " + " ".join(f"{row[k + '_ms']:>17.2f}" for k in ds) + " " +
                  " ".join(f"{row[k + '_over_dense']:>19.3f}" for k in ds[1:]) + "   " +
                  " / ".join(f"{row[k + '_peak_mib']:.0f}" for k in ds) +
                  (f"   grouped/ours {row['grouped_over_ours']:.3f}, rel. error {row['grouped_rel_err']:.1e}"
                   if "grouped" in ds else ""))
            if device.type == "cuda":
                print("      kernels per step / summed kernel ms: " +
                      ", ".join(f"{k} {row[k + '_kernels']:.0f} / {row[k + '_kernel_ms']:.2f}" for k in ds) +
                      " (nan: the profiler saw no GPU activity)" * any(math.isnan(row[k + "_kernels"]) for k in ds))
            if "ours_profile" in row:
                print("      ours, share of CPU time: " +
                      ", ".join(f"{k} {v:.0%}" for k, v in row["ours_profile"].items()))
            del mods, fns
    return rows


# ----------------------------------------------------------------------- router suite

ARCHS = {  # name -> (fairseq arch, extra flags, sentences, tokens per sentence)
    "tiny": ("switch_transformer_tiny", [], 64, 32),
    "base": ("switch_transformer_wmt_en_de", [], 16, 32),
}


class _Task:
    """The two dictionaries fairseq's build_model and the criterion ask a task for."""

    def __init__(self, vocab):
        from fairseq.data import Dictionary

        d = Dictionary()
        for i in range(vocab - len(d)):
            d.add_symbol(f"w{i}")
        self.source_dictionary = self.target_dictionary = d


def build_fairseq_model(arch, router, experts, vocab=8000, extra=()):
    from fairseq import options

    import fairseq_sparsemixer  # noqa: F401
    from fairseq_sparsemixer.criterions.moe_label_smoothed_cross_entropy import \
        MoELabelSmoothedCrossEntropyCriterion
    from fairseq_sparsemixer.models.switch_transformer import SwitchTransformerModel

    args = options.parse_args_and_arch(options.get_training_parser(), [
        "unused-data-dir", "--user-dir", str(ROOT / "fairseq_sparsemixer"), "--task", "translation",
        "--arch", arch, "--share-all-embeddings", "--moe-router", router, "--moe-experts", str(experts),
        "--dropout", "0.1", *extra])
    task = _Task(vocab)
    model = SwitchTransformerModel.build_model(args, task)
    crit = MoELabelSmoothedCrossEntropyCriterion(task, False, 0.1)
    return model, crit, task


def fake_batch(task, sentences, length, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = task.target_dictionary
    low, high = d.nspecial, len(d)
    src = torch.randint(low, high, (sentences, length), generator=g)
    tgt = torch.randint(low, high, (sentences, length), generator=g)
    tgt[:, -1] = d.eos()
    prev = torch.cat([torch.full((sentences, 1), d.eos()), tgt[:, :-1]], 1)
    return {"net_input": {"src_tokens": src.to(device), "src_lengths": torch.full((sentences,), length).to(device),
                          "prev_output_tokens": prev.to(device)},
            "target": tgt.to(device), "ntokens": sentences * length, "nsentences": sentences}


def suite_router(a, device, dtype):
    rows = []
    print(f"\n[router] training step (forward, backward, Adam), ratio to switch, {a.router_experts} experts")
    print(f"{'arch':>5} {'tokens':>7} " + " ".join(f"{r + ' ms':>18}" for r in a.routers) + " " +
          " ".join(f"{r + '/switch':>22}" for r in a.routers if r != "switch"))
    for arch in a.arch:
        name, extra, sents, length = ARCHS[arch]
        if a.quick:
            extra = ["--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "32",
                     "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
                     "--encoder-attention-heads", "2", "--decoder-attention-heads", "2"]
            sents, length = 4, 8
        fns = {}
        for r in a.routers:
            torch.manual_seed(0)
            model, crit, task = build_fairseq_model(name, r, a.router_experts, vocab=500 if a.quick else 8000,
                                                    extra=extra)
            model = model.to(device).train()
            opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98))
            batch = fake_batch(task, sents, length, device)

            def step(model=model, crit=crit, opt=opt, batch=batch):
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    loss, _, _ = crit(model, batch)
                loss.backward()
                opt.step()
            fns[r] = step
        sec = compare(fns, device, a.warmup, a.repeats)
        row = {"arch": arch, "tokens": sents * length, "experts": a.router_experts,
               **{f"{r}_ms": round(v * 1e3, 2) for r, v in sec.items()},
               **{f"{r}_over_switch": round(sec[r] / sec["switch"], 3) for r in a.routers if r != "switch"},
               **{f"{r}_tokens_per_s": round(sents * length / v) for r, v in sec.items()}}
        rows.append(row)
        print(f"{arch:>5} {sents * length:>7} " + " ".join(f"{row[r + '_ms']:>18.1f}" for r in a.routers) + " " +
              " ".join(f"{row[r + '_over_switch']:>22.3f}" for r in a.routers if r != "switch"))
    return rows


# ------------------------------------------------------------------------ model suite

def _run(cmd, env=None):
    p = subprocess.run([str(c) for c in cmd], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, **(env or {})))
    if p.returncode != 0:
        raise SystemExit(f"benchmark: error: {cmd[0]} {cmd[1]} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return p


def train_wps(log_path):
    """Median words/s of the train_inner records after the first (its timer includes start-up),
    overall and per epoch: {"all": wps, "epochs": {epoch: wps}}."""
    from fairseq_sparsemixer.diagnostics.logs import read_train_log

    recs = [r for r in read_train_log(log_path).inner if "wps" in r][1:]
    if not recs:
        raise SystemExit(f"benchmark: error: too few train_inner records in {log_path}; raise --updates")
    epochs = {}
    for r in recs:
        epochs.setdefault(int(r.get("epoch", 1)), []).append(float(r["wps"]))
    return {"all": statistics.median(float(r["wps"]) for r in recs),
            "epochs": {e: statistics.median(v) for e, v in sorted(epochs.items())}}


_TRANSLATED = re.compile(r"Translated ([\d,]+) sentences \(([\d,]+) tokens\) in ([\d.]+)s "
                         r"\(([\d.]+) sentences/s, ([\d.]+) tokens/s\)")


def generate_speed(save, prep, length, quick=False):
    cmd = [Path(sys.executable).parent / "fairseq-generate", prep / "bin", "--user-dir", ROOT / "fairseq_sparsemixer",
           "--path", save / "checkpoint_last.pt", "--gen-subset", "test", "--source-lang", "en",
           "--target-lang", "de", "--beam", "4", "--min-len", str(length), "--max-len-a", "0",
           "--max-len-b", str(length), "--max-tokens", "4000", "--required-batch-size-multiple", "1",
           "--quiet", "--cpu" if not torch.cuda.is_available() else "--fp16"]
    if quick:  # 8 of the 1000 test sentences
        cmd += ["--num-shards", "125", "--shard-id", "0"]
    p = _run(cmd)
    m = _TRANSLATED.search(p.stdout + p.stderr)
    if not m:
        raise SystemExit("benchmark: error: fairseq-generate printed no 'Translated ...' line")
    return float(m.group(4)), float(m.group(5))


def suite_model(a, device, dtype):
    """fairseq-train words/s through train_wmt14.sh for dense and MoE (sparsemixer, N experts), per
    --model-precision and --model-attention (the criterion's --attention-backend), interleaved
    runs, the median over runs; each ratio is to dense at the same precision and attention.
    words/s of the first epoch (plans and caches still being built) and of the later ones apart."""
    prep = Path(a.prep_dir)
    if not (prep / "bin" / "dict.en.txt").is_file():
        _run(["bash", ROOT / "scripts/prepare_wmt14.sh", "--sample", "--out", prep])
    kinds = ["dense"] + [f"moe{n}" for n in a.model_experts]
    dims = ["--log-interval", str(a.log_interval), "--disable-validation", "--no-epoch-checkpoints",
            "--no-progress-bar"]
    if a.no_generate:
        dims += ["--no-save"]
    if a.model_recipe == "paper":
        dims += ["--max-tokens", "8192", "--update-freq", "1"]
    if a.quick:
        dims += ["--encoder-embed-dim", "32", "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
                 "--decoder-ffn-embed-dim", "64", "--max-tokens", "512"]
    precisions = a.model_precision or [None]  # None: train_wmt14.sh's default (fp16 on GPU, fp32 on CPU)
    configs = [(k, pr, att) for pr in precisions for att in a.model_attention for k in kinds]
    wps = {c: [] for c in configs}
    gen = {c: [] for c in configs}
    print(f"\n[model] fairseq-train wps and fairseq-generate speed, ratio to dense ({a.model_repeats} "
          f"interleaved runs of {a.updates} updates each, recipe {a.model_recipe})")
    with tempfile.TemporaryDirectory(prefix="bench-model-") as tmp:
        for rep in range(a.model_repeats):
            for c in configs:
                k, pr, att = c
                save = Path(tmp) / f"{k}-{pr}-{att}-{rep}"
                kind = ["--dense"] if k == "dense" else ["--router", "sparsemixer", "--experts", k[3:]]
                prec = ["--precision", pr] if pr else []
                _run(["bash", ROOT / "scripts/train_wmt14.sh", "--recipe", a.model_recipe, *kind, *prec,
                      "--data", prep / "bin", "--save-dir", save, "--max-update", str(a.updates), "--",
                      *dims, "--attention-backend", att],
                     env={"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
                wps[c].append(train_wps(save / "train.log"))
                if not a.no_generate:
                    gen[c].append(generate_speed(save, prep, a.gen_length, quick=a.quick))
                w = wps[c][-1]
                print(f"  run {rep + 1} {k:>6} {pr or 'default'} attention {att}: train {w['all']:.0f} words/s "
                      f"(per epoch: {', '.join(f'{e}: {v:.0f}' for e, v in w['epochs'].items())})"
                      + ("" if a.no_generate else
                         f", generate {gen[c][-1][0]:.2f} sentences/s ({gen[c][-1][1]:.0f} tokens/s)"), flush=True)
    med = statistics.median
    rows = []
    for c in configs:
        k, pr, att = c
        dense = med(w["all"] for w in wps[("dense", pr, att)])
        first = [w["epochs"][min(w["epochs"])] for w in wps[c]]
        later = [v for w in wps[c] for e, v in w["epochs"].items() if e > min(w["epochs"])]
        row = {"model": k, "precision": pr or "default", "attention": att,
               "train_wps": round(med(w["all"] for w in wps[c]), 1),
               "train_over_dense": round(med(w["all"] for w in wps[c]) / dense, 3),
               "train_wps_first_epoch": round(med(first), 1),
               "train_wps_later_epochs": round(med(later), 1) if later else None,
               "train_wps_runs": [w["all"] for w in wps[c]]}
        if not a.no_generate:
            g0 = [g[0] for g in gen[("dense", pr, att)]]
            row.update(gen_sentences_per_s=round(med(g[0] for g in gen[c]), 2),
                       gen_tokens_per_s=round(med(g[1] for g in gen[c]), 1),
                       gen_over_dense=round(med(g[0] for g in gen[c]) / med(g0), 3))
        rows.append(row)
    print(f"{'model':>6} {'precision':>9} {'attention':>9} {'train wps':>10} {'train/dense':>12} {'epoch 1':>9} "
          f"{'later':>9}" + ("" if a.no_generate else f" {'gen sent/s':>11} {'gen/dense':>10}"))
    for r in rows:
        later = f"{r['train_wps_later_epochs']:.0f}" if r["train_wps_later_epochs"] else "-"
        print(f"{r['model']:>6} {r['precision']:>9} {r['attention']:>9} {r['train_wps']:>10.0f} "
              f"{r['train_over_dense']:>12.3f} {r['train_wps_first_epoch']:>9.0f} {later:>9}" + ("" if a.no_generate else
              f" {r['gen_sentences_per_s']:>11.2f} {r['gen_over_dense']:>10.3f}"))
    return rows


# ----------------------------------------------------------------------------- main

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", choices=["layer", "router", "model", "all"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="layer: the tensors' dtype; router: autocast dtype (model: fp16 on GPU, fp32 on CPU)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="tiny sizes, 2 repeats: checks the harness only")
    p.add_argument("--json", help="write the results here")
    g = p.add_argument_group("layer")
    g.add_argument("--experts", type=int, nargs="+", default=[2, 4, 8, 16])
    g.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096, 16384])
    g.add_argument("--dim", type=int, default=512)
    g.add_argument("--ffn-dim", type=int, default=2048)
    g.add_argument("--designs", nargs="+", default=["dense", "ours", "grouped", "mask-loop", "onehot-einsum"],
                   choices=DESIGNS)
    g.add_argument("--profile", action="store_true",
                   help="CPU: also split ours' step time by op category (torch.profiler)")
    g = p.add_argument_group("router")
    g.add_argument("--arch", nargs="+", default=["tiny", "base"], choices=list(ARCHS))
    g.add_argument("--routers", nargs="+", default=["switch", "sparsemixer", "sparsemixer-v2"])
    g.add_argument("--router-experts", type=int, default=4)
    g = p.add_argument_group("model")
    g.add_argument("--model-experts", type=int, nargs="+", default=[4, 16])
    g.add_argument("--updates", type=int, default=120)
    g.add_argument("--log-interval", type=int, default=10)
    g.add_argument("--model-repeats", type=int, default=3)
    g.add_argument("--gen-length", type=int, default=32, help="tokens generated per sentence (forced)")
    g.add_argument("--prep-dir", default=str(ROOT / "work" / "sample_en_de"))
    g.add_argument("--model-recipe", default="cpu-tiny", choices=["cpu-tiny", "paper"],
                   help="cpu-tiny: switch_transformer_tiny; paper: the wmt_en_de dims, 8192 tokens per update")
    g.add_argument("--no-generate", action="store_true", help="training speed only")
    g.add_argument("--model-precision", nargs="+", choices=["fp16", "bf16", "fp32"],
                   help="train_wmt14.sh --precision values to run (default: its own default)")
    g.add_argument("--model-attention", nargs="+", default=["auto"], choices=["auto", "torch"],
                   help="--attention-backend values to run (auto: cuDNN SDPA off on CUDA; torch: torch's choice)")
    a = p.parse_args(argv)
    if a.quick:
        a.experts, a.tokens, a.dim, a.ffn_dim, a.warmup, a.repeats = [2, 4], [64], 16, 32, 1, 2
        a.router_experts, a.updates, a.log_interval, a.model_repeats, a.gen_length = 2, 4, 1, 1, 4
        a.model_experts = [2]
    if "switch" not in a.routers:
        p.error("--routers must include switch (the baseline)")
    if a.designs[:2] != ["dense", "ours"]:
        p.error("--designs must start with dense ours (the baselines)")
    device, dtype = torch.device(a.device), getattr(torch, a.dtype)
    info = facts(a, device)
    print("  ".join(f"{k}={v}" for k, v in info.items()))
    result = {"facts": info, "args": {k: v for k, v in vars(a).items() if k != "json"}}
    suites = ["layer", "router", "model"] if a.suite == "all" else [a.suite]
    for s in suites:
        result[s] = {"layer": suite_layer, "router": suite_router, "model": suite_model}[s](a, device, dtype)
    if a.json:
        with open(a.json + ".tmp", "w") as f:
            json.dump(result, f, indent=2)
        os.replace(a.json + ".tmp", a.json)
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
