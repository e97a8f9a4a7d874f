"""Host-device synchronizations of a training micro-step: counted on CUDA by
torch.cuda.set_sync_debug_mode, and on CPU by the operations that would synchronize on CUDA.

    python -m fairseq_sparsemixer.diagnostics.host_syncs --data BIN [--arch base|tiny] [--experts 4]
        [--device cuda|cpu] [--precision amp-bf16|bf16] [--expert-impl auto|loop|grouped] [--json OUT]

One micro-step (forward, the criterion, backward) of the Switch-Transformer and of fairseq's
dense Transformer of the same dims on the same batch; prints both counts and their difference,
which should be one per MoE layer that ran the per-expert loop (the split sizes; the grouped
GEMM path makes none) plus one (the criterion's statistics). --precision (CUDA): amp-bf16 =
fp32 weights under bf16 autocast (default); bf16 = bf16 weights, as fairseq's --bf16 trains.

On CPU (`HostSyncs`): a value read back (`.item()`, `.tolist()`, `bool(t)`), an output whose
size depends on the data (nonzero, masked_select, boolean-mask indexing and its backward,
bincount, unique, repeat_interleave without output_size), and a Python number stored into a
tensor (`t[i] = 3`: the number becomes a CPU tensor that is copied into `t`, a pageable
host-to-device copy on CUDA). A CPU run makes the same calls as a CUDA run, so the tests bound a
GPU step's stalls without a GPU.
"""
import argparse
import json
import warnings
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..modules import moe_layers

_ALWAYS = {"nonzero", "masked_select", "_local_scalar_dense", "bincount", "unique_dim", "_unique",
           "_unique2", "unique_consecutive", "masked_scatter", "masked_scatter_"}
_BOOL_INDEX = {"index", "index_put", "index_put_", "_index_put_impl_", "_unsafe_index"}


def _is_bool(t):
    return isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8)


class HostSyncs(TorchDispatchMode):
    """with HostSyncs() as s: ... ; s.count, s.ops (a Counter of op names)."""

    def __enter__(self):
        self.ops = Counter()
        self._lifted = []  # tensors made from Python numbers (kept alive so that their ids stay unique)
        self._tolist = torch.Tensor.tolist
        ops = self.ops

        def tolist(t):
            ops["tolist"] += 1
            return self._tolist(t)

        torch.Tensor.tolist = tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)

    @property
    def count(self):
        return sum(self.ops.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in _ALWAYS:
            self.ops[name] += 1
        elif name in _BOOL_INDEX and len(args) > 1 and any(_is_bool(i) for i in (args[1] or [])):
            self.ops[name + "[bool]"] += 1
        elif name == "repeat_interleave" and func._overloadname == "Tensor" and kwargs.get("output_size") is None \
                and (len(args) < 3 or args[-1] is None):
            self.ops["repeat_interleave"] += 1
        elif name == "copy_" and len(args) > 1 and any(args[1] is t for t in self._lifted):
            self.ops["copy_[python number]"] += 1
        out = func(*args, **kwargs)
        if name in ("lift_fresh", "scalar_tensor"):
            self._lifted.append(out)
        return out


class AtenOps(TorchDispatchMode):
    """with AtenOps() as c: ... ; c.count, c.ops (a Counter of op names): the aten operators
    dispatched, views (which launch no kernel) left out. On CPU this tracks the kernels that the
    same code launches on CUDA (issue 21: a layer step's 192 ops vs the grouped path's 178
    kernels on an H200; the dense FFN's 17 vs 17), so a launch-bound layer shows without a GPU."""

    def __enter__(self):
        self.ops = Counter()
        return super().__enter__()

    @property
    def count(self):
        return sum(self.ops.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def compiled_calls(fn, eager: bool = False) -> Counter:
    """What the `torch.compile`d graphs run while fn() runs, a Counter by name: "fused" for each
    kernel inductor generated (on CPU, recorded only for graphs compiled with the inductor option
    `cpp.enable_kernel_profile`) and the name of each aten op a graph calls itself (matmuls, the
    random draws kept by `fallback_random`, scatters): each a kernel launch on a GPU. `AtenOps`
    cannot count these: under a dispatch mode dynamo runs the code eagerly. eager=True also counts,
    as "eager:<op>", the aten ops called outside the graphs (outermost calls only, views left out:
    between graphs, e.g. the grouped GEMMs of a compiled layer, and their backward)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    calls = Counter()
    for e in prof.events():
        if e.cpu_parent is not None and e.cpu_parent.name.startswith("## Call CompiledFxGraph"):
            calls["fused" if "cpp_fused" in e.name else e.name.removeprefix("aten::")] += 1
        elif eager and e.name.startswith("aten::"):
            p = e.cpu_parent  # outermost: no aten op or graph call above it
            while p is not None and not p.name.startswith(("aten::", "## Call CompiledFxGraph")):
                p = p.cpu_parent
            if p is None:
                for name in _kernels(e):
                    calls["eager:" + name] += 1
    return calls


# ops that launch no kernel although not every overload is marked a view
_NO_KERNEL = {"_unsafe_view", "split", "split_with_sizes", "unbind", "chunk"}


def _kernels(event):
    """The kernel-launching aten ops of an outermost aten call: itself, unless it is a view or a
    composite that may copy (contiguous, reshape, to, flatten: all marked views), whose copies
    are its children (clone, _to_copy), searched in turn."""
    name = event.name.removeprefix("aten::")
    packet = getattr(torch.ops.aten, name, None)
    if name not in _NO_KERNEL and not (packet is not None and all(getattr(packet, o).is_view
                                                                  for o in packet.overloads())):
        return [name]
    return [k for c in event.cpu_children if c.name.startswith("aten::") for k in _kernels(c)]


def count_cuda(fn) -> dict:
    """Synchronizing CUDA calls of fn(), as torch.cuda.set_sync_debug_mode("warn") reports them:
    {"syncs": count, "where": {"file:line": count}} (the Python line that made each call)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    where = Counter(f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))
    return dict(syncs=sum(where.values()), where=dict(where.most_common()))


ARCHS = {  # name -> (MoE arch, the dense arguments of the same dims)
    "base": ("switch_transformer_wmt_en_de", ["--arch", "transformer_wmt_en_de"]),
    "tiny": ("switch_transformer_tiny", [
        "--arch", "transformer", "--encoder-embed-dim", "128", "--decoder-embed-dim", "128",
        "--encoder-ffn-embed-dim", "512", "--decoder-ffn-embed-dim", "512", "--encoder-layers", "3",
        "--decoder-layers", "3", "--encoder-attention-heads", "4", "--decoder-attention-heads", "4",
        "--encoder-normalize-before", "--decoder-normalize-before"]),
}


def build(data, arch_args, device, user_dir):
    """(task, model, criterion, one valid batch) for fairseq training arguments."""
    from fairseq import options, tasks, utils

    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(data), "--user-dir", str(user_dir), "--share-all-embeddings", "--criterion",
        "moe_label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--max-tokens", "4096", *arch_args])
    task = tasks.setup_task(args)
    torch.manual_seed(0)
    model = task.build_model(args).to(device).train()
    crit = task.build_criterion(args).to(device)
    task.load_dataset("valid")
    ds = task.dataset("valid")
    batch = utils.move_to_cuda(ds.collater([ds[i] for i in range(32)])) if device.type == "cuda" else \
        ds.collater([ds[i] for i in range(32)])
    return model, crit, batch


def micro_step(model, crit, batch, autocast=True):
    def step():
        model.zero_grad(set_to_none=True)
        with torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16,
                            enabled=autocast and next(model.parameters()).is_cuda):
            loss, _, _ = crit(model, batch)
        loss.backward()
    return step


def count(step, device) -> dict:
    step()  # warm-up: first-call work (allocations, lazy init) is not counted
    if device.type == "cuda":
        return count_cuda(step)
    with HostSyncs() as s:
        step()
    return dict(syncs=s.count, ops=dict(s.ops))


def main(argv=None):
    from pathlib import Path

    p = argparse.ArgumentParser(prog="python -m fairseq_sparsemixer.diagnostics.host_syncs",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a binarized data dir (prepare_wmt14.sh's bin/)")
    p.add_argument("--arch", choices=list(ARCHS), default="base")
    p.add_argument("--experts", type=int, default=4)
    p.add_argument("--router", default="sparsemixer")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=["amp-bf16", "bf16"], default="amp-bf16")
    p.add_argument("--expert-impl", choices=["auto", "loop", "grouped"], default="auto")
    p.add_argument("--json")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    user_dir = Path(__file__).resolve().parents[1]
    moe_arch, dense_args = ARCHS[a.arch]
    res = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "cuda": torch.version.cuda, "arch": a.arch, "experts": a.experts,
           "precision": a.precision}
    for name, args in (("moe", ["--arch", moe_arch, "--moe-experts", str(a.experts), "--moe-router", a.router,
                                "--moe-expert-impl", a.expert_impl]),
                       ("dense", dense_args)):
        model, crit, batch = build(a.data, args, device, user_dir)
        if a.precision == "bf16":
            model = model.bfloat16()
        res[name] = count(micro_step(model, crit, batch, autocast=a.precision == "amp-bf16"), device)
        if name == "moe":
            impls = [m.last_impl for m in moe_layers(model)]
            res["moe_layers"], res["loop_layers"] = len(impls), impls.count("loop")
        del model, crit, batch
    res["difference"] = res["moe"]["syncs"] - res["dense"]["syncs"]
    res["target"] = res["loop_layers"] + 1
    print(f"host syncs of one micro-step ({a.arch}, {a.experts} experts, {res['device']}, {a.precision}): MoE "
          f"{res['moe']['syncs']}, dense {res['dense']['syncs']}, difference {res['difference']} (target: "
          f"{res['loop_layers']} of {res['moe_layers']} MoE layers on the loop path + 1 = {res['target']})")
    for name in ("moe", "dense"):  # CUDA: where the syncs come from
        for loc, n in res[name].get("where", {}).items():
            print(f"  {name}: {n} x {loc}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
